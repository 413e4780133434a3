"""Regenerate every generated file of the leaderboard from the stored records: ``python -m leaderboard render``.

    from leaderboard.build import render
    render()                      # README.md, dev/README.md, each entry's stats.md and index.html

The tables and the markdown come from ``leaderboard/render.py``, the web page from ``leaderboard/page.py``;
this module only writes them, so that each of those two reads one way (page uses render, not the reverse).
"""

from __future__ import annotations

from pathlib import Path

from harness.fileio import atomic_write_text
from leaderboard import page
from leaderboard.render import (
    dev_frame,
    judge_dev_board,
    judge_record_track,
    load_reference,
    markdown,
    record_frame,
    replace_between,
    rule_text,
    stats_markdown,
)
from leaderboard.store import PACKAGE_DIR, LeaderboardError, load_entries


def render(root: str | Path = PACKAGE_DIR) -> list[Path]:
    """Regenerate every generated file under ``root``; returns the paths written."""
    root = Path(root)
    reference = load_reference()
    target = reference["target"]["core"]
    first_number = len(reference["rows"])
    record = judge_record_track(load_entries(root, "record"), target, first_number)
    dev = judge_dev_board(load_entries(root, "dev"), target)
    written = []
    for j in record + dev:
        path = j.entry.path / "stats.md"
        atomic_write_text(path, stats_markdown(j, target))
        written.append(path)
    readme = root / "README.md"
    if not readme.exists():
        raise LeaderboardError(f"{readme} is missing; restore it from git (it holds the table markers)")
    text = readme.read_text(encoding="utf-8")
    text = replace_between(text, "table", markdown(record_frame(record, reference)), readme)
    text = replace_between(text, "rule", rule_text(reference), readme)
    atomic_write_text(readme, text)
    dev_readme = root / "dev" / "README.md"
    if not dev_readme.exists():
        raise LeaderboardError(f"{dev_readme} is missing; restore it from git (it holds the dev table markers)")
    dev_text = replace_between(dev_readme.read_text(encoding="utf-8"), "dev", markdown(dev_frame(dev)), dev_readme)
    atomic_write_text(dev_readme, dev_text)
    index = root / "index.html"
    atomic_write_text(index, page.build_page(record, dev, reference))
    return [*written, readme, dev_readme, index]
