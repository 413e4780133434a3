"""Tests of `python -m leaderboard render` (leaderboard/render.py): deterministic tables computed from records.

pytest tests/test_leaderboard_render.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_leaderboard import mark_verified, new_board, sample_record, write_run

from harness import referee
from harness.fileio import sha256_file
from leaderboard.build import render
from leaderboard.render import load_reference, rule_text
from leaderboard.store import PACKAGE_DIR, LeaderboardError, add_entry

BASE_TIMES = [5940.0, 5952.0, 5931.0, 5947.0, 5936.0]
CORES = [0.2625, 0.2660, 0.2600, 0.2640, 0.2615]


def file_set(tmp: Path, root: Path, name: str, times, *, day: str = "01", track: str = "record", **kw) -> Path:
    run_dirs = [
        write_run(tmp / name / str(seed), sample_record(seed, training_time_s=t, core=c, started_at=f"2026-04-{day}"
                                                        "T10:00:00+00:00", source=f"# {name}\n", **kw))
        for seed, (t, c) in enumerate(zip(times, CORES, strict=False), start=1)
    ]  # fmt: skip
    return add_entry(run_dirs, root=root, track=track, name=name, description=f"{name} change").path


def table_rows(readme: Path) -> list[list[str]]:
    text = readme.read_text()
    block = text.split("<!-- leaderboard:table:start -->")[1].split("<!-- leaderboard:table:end -->")[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in block.strip().splitlines()[2:]]


@pytest.fixture
def board(tmp_path: Path) -> Path:
    root = new_board(tmp_path / "board")
    mark_verified(file_set(tmp_path, root, "base", BASE_TIMES))
    mark_verified(file_set(tmp_path, root, "fast", [t * 0.97 for t in BASE_TIMES], day="03"))
    file_set(tmp_path, root, "slower", [t * 1.02 for t in BASE_TIMES], day="05")
    file_set(tmp_path, root, "smoke", [600.0, 610.0], day="02", track="dev", profile="cpu", eligible=False,
             missing_labels=("squad",))  # fmt: skip
    return root


def generated(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in (".md", ".html")}


def test_render_twice_gives_byte_identical_files(board):
    render(board)
    first = generated(board)
    render(board)
    assert generated(board) == first
    assert "index.html" in first and "records/2026-04-03_fast/stats.md" in first


def test_the_table_shows_the_reference_rows_then_every_stored_entry(board):
    render(board)
    rows = table_rows(board / "README.md")
    reference = load_reference()
    assert [r[0] for r in rows] == [str(i) for i in range(len(reference["rows"]) + 3)]
    for row, ref in zip(rows, reference["rows"], strict=False):
        assert row[1] == f"{ref['time_h']:g}" and row[-1] == "reported by nanochat, not re-run here"
    assert rows[0][1:3] == ["168", "0.2565 (reported)"] and rows[0][5] == "2019"
    assert [r[4].split(" (")[0] for r in rows[7:]] == ["base change", "fast change", "slower change"]
    assert "smoke" not in (board / "README.md").read_text()  # the development board never mixes in


def test_the_table_cells_are_the_statistics_of_the_stored_runs(board):
    render(board)
    base = table_rows(board / "README.md")[7]
    hours = np.array(BASE_TIMES) / 3600
    assert base[1] == f"{hours.mean():.3f} ± {hours.std(ddof=1):.3f}"
    assert base[2] == f"{np.mean(CORES):.4f} ± {np.std(CORES, ddof=1):.4f} (n=5)"


def statuses(root: Path) -> dict[str, str]:
    return {r[4].split(" (")[0]: r[-1] for r in table_rows(root / "README.md")[7:]}


def test_a_faster_verified_entry_takes_the_record_and_a_slower_one_does_not(board):
    render(board)
    status = statuses(board)
    assert status["base change"].startswith("former record (first record of the track; verified)")
    assert status["fast change"].startswith("record (faster than the record (1.031x")
    assert status["fast change"].endswith("; verified)")
    assert status["slower change"].startswith("not faster than the record")


def test_an_entry_becomes_the_record_only_once_verified(tmp_path):
    root = new_board(tmp_path / "board")
    base = file_set(tmp_path, root, "base", BASE_TIMES)
    fast = file_set(tmp_path, root, "fast", [t * 0.97 for t in BASE_TIMES], day="03")
    render(root)
    assert statuses(root)["base change"] == "pending verification (first record of the track)"
    # No record is in force: the faster entry is judged on CORE alone, as the track's first record would be.
    assert statuses(root)["fast change"] == "pending verification (first record of the track)"
    assert "Not verified yet: python -m leaderboard verify 2026-04-01_base re-runs" in (base / "stats.md").read_text()
    mark_verified(fast, ok=False)
    mark_verified(base)
    render(root)
    assert statuses(root)["base change"] == "record (first record of the track; verified)"
    assert statuses(root)["fast change"].startswith("verification failed (faster than the record (1.031x")
    text = (fast / "stats.md").read_text()
    assert "did not reproduce its record" in text and "| training time | 1.0 | 1.0 | sample | NO |" in text


def test_a_verification_stops_counting_when_a_record_it_checked_is_replaced(tmp_path):
    root = new_board(tmp_path / "board")
    base = file_set(tmp_path, root, "base", BASE_TIMES)
    mark_verified(base)
    meta = json.loads((base / "entry.json").read_text())
    record = base / "seed-1" / "record.json"
    record.write_text(record.read_text().replace('"training_time_s": 5940.0', '"training_time_s": 5000.0'))
    meta["runs"][0]["files"]["record.json"] = sha256_file(record)  # as if filed that way
    (base / "entry.json").write_text(json.dumps(meta))
    render(root)
    assert statuses(root)["base change"] == "verification failed (first record of the track)"
    assert "It no longer counts: the records it re-ran are not the ones filed now." in (base / "stats.md").read_text()


def test_each_entry_gets_a_stats_page_with_its_tests(board):
    render(board)
    text = (board / "records" / "2026-04-03_fast" / "stats.md").read_text()
    assert "H1: mean CORE > 0.256525" in text
    assert "Record: base (2026-04-01_base)" in text and "Fieller CI" in text
    dev = (board / "dev" / "records" / "2026-04-02_smoke" / "stats.md").read_text()
    assert "CORE (partial)" in dev and "Time against the record" not in dev


def test_the_development_board_says_why_each_entry_is_not_on_the_record_track(board):
    render(board)
    text = (board / "dev" / "README.md").read_text()
    assert "| 1 | cpu |" in text
    assert "(n=2) partial" in text
    assert "development (eligibility)" in text


def test_render_refuses_a_readme_without_its_markers(board):
    readme = board / "README.md"
    readme.write_text(readme.read_text().replace("<!-- leaderboard:table:end -->", ""))
    with pytest.raises(LeaderboardError, match="leaderboard:table:end.*restore them from git"):
        render(board)


def test_the_committed_readme_is_what_render_makes_of_the_committed_records(tmp_path):
    # Rendering a copy of the committed board must not change its README: table and rule are up to date.
    copy = tmp_path / "copy"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.lock"))
    render(copy)
    assert (copy / "README.md").read_bytes() == (PACKAGE_DIR / "README.md").read_bytes()
    assert (copy / "index.html").read_bytes() == (PACKAGE_DIR / "index.html").read_bytes()
    assert rule_text(load_reference()) in (PACKAGE_DIR / "README.md").read_text()
    assert f"at least **{referee.MIN_RUNS}** runs" in (PACKAGE_DIR / "README.md").read_text()
