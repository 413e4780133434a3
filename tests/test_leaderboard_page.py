"""The generated leaderboard/index.html in a real headless Chromium, driven by Playwright.

    pytest tests/test_leaderboard_page.py
    LEADERBOARD_SCREENSHOT=page.png pytest tests/test_leaderboard_page.py     # keep the screenshot

Needs the `playwright` Python package and the system Chromium (Debian: `apt-get install -y chromium`, at
/usr/bin/chromium, or set $CHROMIUM); Playwright's own browser download is not used. Skips, saying which
is missing, when either is absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from leaderboard.render import load_reference, render
from leaderboard.samples import CORE_LABELS, new_board, sample_record, write_run
from leaderboard.store import add_entry

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package)")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no system Chromium: apt-get install -y chromium (or set $CHROMIUM)", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TIMES = {"base": 5940.0, "fast": 5760.0}  # the mean training time (s) of each entry's five runs


def run_time(name: str, seed: int) -> float:
    return TIMES[name] + 9.0 * (seed - 3)  # seeds 1-5: spread around the mean


@pytest.fixture(scope="module")
def page_path(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("page")
    root = new_board(tmp / "board")
    for day, name in enumerate(TIMES, start=1):
        runs = [
            write_run(tmp / name / str(seed), sample_record(seed, training_time_s=run_time(name, seed),
                      core=0.26 + 0.001 * seed, source=f"# {name}\n", started_at=f"2026-04-0{day}T10:00:00+00:00"))
            for seed in range(1, 6)
        ]  # fmt: skip
        add_entry(runs, root=root, name=name, description=f"{name} <b>change</b>")
    render(root)
    return root / "index.html"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, page_path):
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(10_000)  # a broken script fails fast instead of after Playwright's 30 s
    page.problems = problems  # the tests check it too, so a failure names the test that saw it
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(page_path.as_uri())
    page.wait_for_selector("#history svg")
    yield page
    page.close()
    assert problems == []


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


def test_record_chart_marks_the_records_set_here(page):
    # nanochat's six dated rows plus the two entries that set records here (GPT-2 XL's 2019 row is off-chart).
    assert page.locator("#history circle.reference").count() == 6
    assert page.locator("#history circle.record").count() == 2


def test_choosing_an_entry_draws_its_task_bars_and_one_loss_curve_per_seed(page):
    options = page.eval_on_selector_all("#entry-select option", "os => os.map(o => o.value)")
    assert options == ["record/2026-04-01_base", "record/2026-04-02_fast"]
    page.select_option("#entry-select", "record/2026-04-02_fast")
    assert page.locator("#tasks rect.task-bar").count() == len(CORE_LABELS)
    assert page.locator("#curves path.loss-curve").count() == 5
