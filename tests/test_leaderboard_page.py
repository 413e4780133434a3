"""The generated leaderboard/index.html in a real headless Chromium, driven by Playwright.

    pytest tests/test_leaderboard_page.py
    LEADERBOARD_SCREENSHOT=page.png pytest tests/test_leaderboard_page.py     # keep the screenshot

The charts are read back from uPlot's own data (what is drawn), not from the page's JSON. Needs Playwright
and the system Chromium (tests/helpers_browser.py); skips when either is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers_browser import chart_data, open_page, points
from helpers_leaderboard import CORE_LABELS, mark_verified, new_board, sample_record, write_run

from leaderboard.build import render
from leaderboard.render import load_reference
from leaderboard.store import add_entry

TIMES = {"base": 5940.0, "fast": 5760.0}  # the mean training time (s) of each entry's five runs
CORE_SHIFT = {"base": 0.0, "fast": 0.003}  # fast also scores higher: per-task CORE differs between the two


def run_time(name: str, seed: int) -> float:
    return TIMES[name] + 9.0 * (seed - 3)  # seeds 1-5: spread around the mean


@pytest.fixture(scope="module")
def page_path(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("page")
    root = new_board(tmp / "board")
    for day, name in enumerate(TIMES, start=1):
        runs = [
            write_run(tmp / name / str(seed), sample_record(seed, training_time_s=run_time(name, seed),
                      core=0.26 + 0.001 * seed + CORE_SHIFT[name], source=f"# {name}\n",
                      started_at=f"2026-04-0{day}T10:00:00+00:00"))
            for seed in range(1, 6)
        ]  # fmt: skip
        mark_verified(add_entry(runs, root=root, name=name, description=f"{name} <b>change</b>").path)
    render(root)
    return root / "index.html"


@pytest.fixture
def page(browser, page_path):
    page = open_page(browser, page_path)
    yield page
    page.close()
    assert page.problems == []


def column(page, name: str) -> list[str]:
    return page.eval_on_selector_all(
        f"#record-table tbody tr td:nth-child({name})", "tds => tds.map(t => t.textContent)"
    )


def test_page_loads_without_console_errors_and_shows_every_row(page, tmp_path):
    assert page.problems == []
    n_reference = len(load_reference()["rows"])
    assert page.locator("#record-table tbody tr").count() == n_reference + len(TIMES)
    descriptions = column(page, "5")
    assert descriptions[0].startswith("original OpenAI GPT-2 XL")
    assert descriptions[-2:] == ["base <b>change</b>", "fast <b>change</b>"]  # escaped text, not markup
    shot = Path(os.environ.get("LEADERBOARD_SCREENSHOT") or tmp_path / "leaderboard.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_clicking_a_header_sorts_the_table_numerically_both_ways(page):
    page.click("#record-table thead th:nth-child(2)")  # time (h)
    times = [float(t.split()[0]) for t in column(page, "2")]
    assert times == sorted(times) and times[0] == pytest.approx(TIMES["fast"] / 3600, abs=1e-3)
    page.click("#record-table thead th:nth-child(2)")
    assert [float(t.split()[0]) for t in column(page, "2")] == sorted(times, reverse=True)


def test_record_chart_marks_the_records_set_here_on_a_date_axis(page):
    chart = chart_data(page, "history")
    assert chart["labels"] == ["date", "record time", "reported by nanochat", "set here"]
    # nanochat's six dated rows plus the two entries that set records here (GPT-2 XL's 2019 row is off-chart).
    xs, _, reported, here = chart["data"]
    assert len(points(xs, reported)) == 6 and len(points(xs, here)) == 2
    assert [x for x, _ in points(xs, here)] == [1775001600, 1775088000]  # 2026-04-01 and 04-02, 00:00 UTC
    assert chart["xLabel"] == "date"


def test_the_charts_use_the_page_width(page):
    body_width = page.evaluate("document.getElementById('curves').clientWidth")
    assert chart_data(page, "curves")["width"] == body_width > 1100  # the 1280-pixel window, less the margins
    page.set_viewport_size({"width": 1600, "height": 900})
    page.wait_for_function("CHARTS.get(document.getElementById('curves'))[0].width > 1400")


def test_two_entries_are_compared_with_their_loss_curves_overlaid(page):
    options = page.eval_on_selector_all("#entry-a option", "os => os.map(o => o.value)")
    assert options == ["record/2026-04-01_base", "record/2026-04-02_fast"]
    # The record in force (fast) is A by default, the other entry B.
    assert page.input_value("#entry-a") == "record/2026-04-02_fast"
    page.select_option("#entry-a", "record/2026-04-01_base")
    page.select_option("#entry-b", "record/2026-04-02_fast")
    chart = chart_data(page, "curves")
    assert chart["labels"] == ["step", *[f"A seed {s}" for s in range(1, 6)], *[f"B seed {s}" for s in range(1, 6)]]
    steps = chart["data"][0]
    for series in chart["data"][1:]:  # every seed of both entries drawn over the same 200 steps
        assert [x for x, _ in points(steps, series)] == list(range(0, 200, 5))

    page.select_option("#curve-x", "time")
    chart = chart_data(page, "curves")
    assert chart["xLabel"] == "training time (min)"
    ends = [max(x for x, _ in points(chart["data"][0], series)) for series in chart["data"][1:]]
    # Against training time the faster entry's lines end earlier, each run at its own time: the last loss is
    # logged at step 195, the end of 196 of the run's 200 equally long steps.
    expected = [run_time(name, seed) * 196 / 200 / 60 for name in ("base", "fast") for seed in range(1, 6)]
    assert ends == pytest.approx(expected)


def test_per_task_core_of_b_is_shown_against_a(page):
    page.select_option("#entry-a", "record/2026-04-01_base")
    page.select_option("#entry-b", "record/2026-04-02_fast")
    rows = page.eval_on_selector_all(
        "#tasks tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))"
    )
    assert [r[0] for r in rows] == sorted(CORE_LABELS)
    for _, a, b, diff, _ in rows:
        assert float(diff) == pytest.approx(float(b) - float(a), abs=2e-4)
    assert page.locator("#tasks .diff .better").count() == len(CORE_LABELS)  # B (fast) is higher on every task
    footer = page.eval_on_selector_all("#tasks tfoot td", "tds => tds.map(t => t.textContent)")
    assert footer[0].startswith("CORE (mean over runs")
    assert float(footer[1]) == pytest.approx(np.mean([0.26 + 0.001 * s for s in range(1, 6)]), abs=1e-4)
    assert float(footer[3]) == pytest.approx(CORE_SHIFT["fast"], abs=1e-4)
