"""Text from contributors and records cannot break what `leaderboard render` writes, and non-finite numbers in a
record render as missing: the injection and NaN rows of issue 16's table.

    pytest tests/test_leaderboard_injection.py

The board is real: runs filed with ``add_entry``, rendered with ``render``, the page opened in a real headless
Chromium (tests/helpers_browser.py). What `add` refuses today (a name with a trailing newline) reaches the board
the way it did before: an entry filed by an older version, whose stored files are edited and re-digested in
its entry.json (``filed_by_an_older_version``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers_browser import open_page
from helpers_leaderboard import CORE_LABELS, new_board, sample_record, write_run

from harness.fileio import sha256_file
from leaderboard.build import render
from leaderboard.store import LeaderboardError, add_entry

# issue 16's strings, and a few more of the same kinds
NAME_WITH_PLACEHOLDER = "x__DEV_TABLE__y"
EVIL_NAME = "evil\n"
TASK_LABELS = ["<!--<script>", "</script><script>window.PWNED = 1</script>"]
DESCRIPTIONS = [
    "<!-- leaderboard:table:end -->",
    "line one\n- status: record (forged)\n<!-- leaderboard:dev:end -->",
    "a | b \\| c \\",
    "__DEV_TABLE__ __DATA__ __SCRIPT__ </script><!--",
]
CONTRIBUTORS = ["ada|<b>x</b>", "<!-- leaderboard:dev:start -->"]


def one_line(text: str) -> str:
    return " ".join(text.split())


def runs_with_labels(tmp: Path, name: str, labels: list[str], seeds=(1, 2)) -> list[Path]:
    """Runs whose first CORE tasks carry ``labels`` instead of their real ones."""
    dirs = []
    for seed in seeds:
        record = sample_record(seed, source=f"# {name}\n", profile="cpu", eligible=False)
        tasks = record["metrics"]["core_tasks"]
        for old, new in zip(CORE_LABELS, labels, strict=False):
            tasks[new] = tasks.pop(old)
        dirs.append(write_run(tmp / name / f"s{seed}", record))
    return dirs


def filed_by_an_older_version(entry_path: Path, edit_meta=None, edit_record=None, raw_json: bool = False) -> None:
    """Edit a filed entry as an older version of the store could have written it: entry.json through
    ``edit_meta``, each stored record through ``edit_record`` (written with Python's json, NaN and all, when
    ``raw_json``), and the digests in entry.json updated so the entry loads."""
    meta = json.loads((entry_path / "entry.json").read_text())
    if edit_record is not None:
        for run in meta["runs"]:
            path = entry_path / run["dir"] / "record.json"
            record = edit_record(json.loads(path.read_text()))
            path.write_text(json.dumps(record, indent=2) if raw_json else json.dumps(record, allow_nan=False))
            run["files"]["record.json"] = sha256_file(path)
    if edit_meta is not None:
        meta = edit_meta(meta)
    (entry_path / "entry.json").write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("injection")
    root = new_board(tmp / "board")
    for i, description in enumerate(DESCRIPTIONS):
        runs = runs_with_labels(tmp, f"e{i}", TASK_LABELS)
        add_entry(runs, root=root, track="dev", name=f"e{i}", description=description, contributors=CONTRIBUTORS)
    add_entry(runs_with_labels(tmp, "placeholder", []), root=root, track="dev", name=NAME_WITH_PLACEHOLDER)
    evil = add_entry(runs_with_labels(tmp, "evil", []), root=root, track="dev", name="evil")
    filed_by_an_older_version(evil.path, edit_meta=lambda m: {**m, "name": EVIL_NAME + "<!--<script>"})
    evil.path.rename(evil.path.with_name(evil.path.name + "\n"))  # the folder an older add made of that name

    def non_finite(record: dict) -> dict:  # what the harness wrote before strict JSON
        record["metrics"].update(val_bpb=math.nan, core_partial=math.inf, core=None)
        record["metrics"]["core_tasks"]["copa"]["centered"] = -math.inf
        record["training_time_s"] = math.nan if record["run"]["seed"] == 2 else record["training_time_s"]
        return record

    nan = add_entry(runs_with_labels(tmp, "nan", []), root=root, track="dev", name="nan")
    filed_by_an_older_version(nan.path, edit_record=non_finite, raw_json=True)

    def strict_nulls(record: dict) -> dict:  # what strict JSON writes: null and a note
        record["metrics"]["val_bpb"] = None
        record["non_finite"] = {"metrics.val_bpb": "NaN"}
        return record

    nulls = add_entry(runs_with_labels(tmp, "nulls", []), root=root, track="dev", name="nulls")
    filed_by_an_older_version(nulls.path, edit_record=strict_nulls)
    render(root)
    return root


def table_block(path: Path, marker: str) -> list[str]:
    text = path.read_text()
    assert text.count(f"<!-- leaderboard:{marker}:start -->") == 1
    assert text.count(f"<!-- leaderboard:{marker}:end -->") == 1
    block = text.split(f"<!-- leaderboard:{marker}:start -->")[1].split(f"<!-- leaderboard:{marker}:end -->")[0]
    return block.strip().splitlines()


def separators(row: str) -> int:
    """The '|' that split a markdown table row into cells: escaped backslashes and escaped pipes are not."""
    return row.replace("\\\\", "").replace("\\|", "").count("|")


# ---------------------------------------------------------------------------------------------------------------
# The generated markdown


def test_add_refuses_a_name_with_a_trailing_newline(tmp_path):
    root = new_board(tmp_path / "board")
    with pytest.raises(LeaderboardError, match=r"name 'evil\\n': use letters, digits"):
        add_entry(runs_with_labels(tmp_path, "evil", []), root=root, track="dev", name=EVIL_NAME)


def test_every_entry_is_one_dev_table_row_with_every_cell_in_place(board):
    lines = table_block(board / "dev" / "README.md", "dev")
    header, rows = lines[0], lines[2:]
    assert len(rows) == len(DESCRIPTIONS) + 4  # the four description entries, placeholder, evil, nan, nulls
    assert all(row.startswith("| ") and row.endswith(" |") for row in rows)
    assert {separators(row) for row in rows} == {separators(header)}
    assert "&lt;!-- leaderboard:dev:end --&gt;" not in "\n".join(rows)  # '<' escaped, '>' left as it is
    assert "&lt;!-- leaderboard:dev:end -->" in "\n".join(rows)


def test_render_never_refuses_afterwards_and_gives_the_same_files(board):
    before = {p: p.read_bytes() for p in sorted(board.rglob("*")) if p.suffix in (".md", ".html")}
    render(board)
    render(board)
    assert {p: p.read_bytes() for p in before} == before
    table_block(board / "README.md", "table")  # the record track's markers are intact too


def test_a_description_cannot_add_a_line_to_an_entrys_stats_page(board):
    stats = (board / "dev" / "records").glob("*_e1/stats.md")
    [text] = [p.read_text() for p in stats]
    assert [line for line in text.splitlines() if line.startswith("- status:")] == [
        "- status: development (eligibility)"
    ]
    assert "- description: line one - status: record (forged) &lt;!-- leaderboard:dev:end -->" in text


def test_an_old_entry_named_with_a_newline_renders_as_one_line_with_a_working_link(board):
    [stats] = (board / "dev" / "records").glob("*_evil\n/stats.md")
    assert stats.read_text().splitlines()[0] == "# evil &lt;!--&lt;script> (dev track)"
    [row] = [r for r in table_block(board / "dev" / "README.md", "dev") if "_evil" in r]
    assert "Sample change ([stats](records/2026-04-01_evil%0A/stats.md))" in row


def test_markdown_formatting_in_user_text_is_shown_as_written(board):
    text = (board / "dev" / "README.md").read_text()
    assert r"| \_\_DEV_TABLE\_\_ \_\_DATA\_\_ \_\_SCRIPT\_\_ &lt;/script>&lt;!-- ([stats](" in text
    assert "([stats](records/2026-04-01_x__DEV_TABLE__y/stats.md))" in text  # a link destination is not formatted


def test_non_finite_and_null_metrics_render_as_missing(board):
    rows = table_block(board / "dev" / "README.md", "dev")[2:]
    [nan_row] = [r for r in rows if "_nan/stats.md" in r]
    cells = [c.strip() for c in nan_row.strip("|").split(" | ")]
    assert cells[2] == f"{5940 / 3600:.3f}"  # seed 2's training time is NaN: the mean of seed 1's alone
    assert cells[3] == "-" and cells[4] == "-"  # CORE null and val_bpb NaN in both runs
    [nulls_row] = [r for r in rows if "_nulls/stats.md" in r]
    assert [c.strip() for c in nulls_row.strip("|").split(" | ")][4] == "-"
    [stats] = (board / "dev" / "records").glob("*_nan/stats.md")
    assert "| 2 | finished | cpu | - | - | - | - |" in stats.read_text()  # seed 2: time, CORE, partial, val_bpb


# ---------------------------------------------------------------------------------------------------------------
# The page, in Chromium


@pytest.fixture
def page(browser, board):
    page = open_page(browser, board / "index.html", width=1400)
    yield page
    page.close()
    assert page.problems == []


def test_the_page_runs_its_scripts_and_shows_the_text_as_text(page):
    assert page.evaluate("typeof window.PWNED") == "undefined"
    assert page.evaluate("document.scripts.length") == 4  # data, uPlot, charts.js, page.js: no injected one
    assert page.locator("#dev-table").count() == 1
    descriptions = page.eval_on_selector_all("#dev-table tbody td:nth-child(6)", "tds => tds.map(t => t.textContent)")
    assert descriptions[: len(DESCRIPTIONS)] == [one_line(d) for d in DESCRIPTIONS]
    contributors = page.eval_on_selector_all("#dev-table tbody td:nth-child(9)", "tds => tds.map(t => t.textContent)")
    assert contributors[0] == ", ".join(CONTRIBUTORS)
    labels = page.eval_on_selector_all("#entry-a option", "os => os.map(o => o.textContent)")
    assert "dev #5 x__DEV_TABLE__y" in labels and "dev #6 evil <!--<script>" in labels


def test_task_labels_that_look_like_markup_are_compared_as_text(page):
    options = page.eval_on_selector_all("#entry-a option", "os => os.map(o => o.value)")
    page.select_option("#entry-a", options[0])
    page.select_option("#entry-b", next(o for o in options if o.endswith("_nan")))
    tasks = page.eval_on_selector_all("#tasks tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
    assert set(TASK_LABELS) <= set(tasks)
    assert page.evaluate("CHARTS.get(document.getElementById('curves'))[0].series.length") == 5  # step + 2 + 2
    footer = page.eval_on_selector_all("#tasks tfoot td", "tds => tds.map(t => t.textContent)")
    assert footer[2] == "-"  # the NaN entry has no CORE: shown as missing
