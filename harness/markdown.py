"""Markdown tables, written one way everywhere: a run's CORE table, compare, ci, replay and the leaderboard.

markdown_table(["task", "accuracy"], [["arc_easy", "0.2727"]], align="lr")
# | task | accuracy |
# |---|---:|
# | arc_easy | 0.2727 |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table. ``align`` gives a letter a column, ``l`` or ``r`` (default: all left). Cells are
    written as given: escape user text first (a ``|`` in it would split a cell)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(header), "l")) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
