"""The static web page ``leaderboard/index.html``: one self-contained file, no server, no network.

Written by ``python -m leaderboard render`` (``build_page``); open it straight from disk. It shows the
record-track table (click a header to sort), a chart of record time against date, per-task CORE bars for
a chosen entry and that entry's loss curves read from its runs' events logs, then the development board.

The page's markup, style and script live in ``templates/``; this module fills in the tables (pandas) and
the data (JSON embedded in the page) computed by ``leaderboard.stats``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from leaderboard import stats
from leaderboard.render import Judged, dev_frame, html_table, record_frame, rule_text
from leaderboard.store import Entry

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_CURVE_POINTS = 400  # per run: enough to see the curve's shape, small enough to keep the page light


def loss_curve(events: list[dict]) -> list[list[float]]:
    """[[step, loss], ...] from the ``train_loss`` events (key = step), thinned to at most MAX_CURVE_POINTS."""
    points = sorted(
        (int(e["key"]), float(e["value"]))
        for e in events
        if e.get("event") == "train_loss"
        and e.get("key") is not None
        and isinstance(e.get("value"), int | float)
        and math.isfinite(e["value"])  # a diverged run logs NaN: no point to draw
    )
    if len(points) > MAX_CURVE_POINTS:
        stride = -(-len(points) // MAX_CURVE_POINTS)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    return [[step, round(loss, 6)] for step, loss in points]


def _entry_data(j: Judged, board: str) -> dict:
    e: Entry = j.entry
    tasks = [
        {
            label: task["centered"]
            for label, task in (run.record["metrics"].get("core_tasks") or {}).items()
            if isinstance(task.get("centered"), int | float)
        }
        for run in e.runs
    ]
    return {
        "id": f"{board}/{e.path.name}",
        "label": f"{'' if board == 'record' else 'dev '}#{j.number} {e.meta['name']}",
        "tasks": [
            {"label": label, "mean": s.mean, "sd": None if s.sd != s.sd else s.sd}
            for label, s in stats.task_means(tasks).items()
        ],
        "curves": [{"seed": run.seed, "points": loss_curve(run.events)} for run in e.runs],
    }


def _history(record: list[Judged], reference: dict) -> list[dict]:
    """Points of the record-time chart: nanochat's dated history and every entry that set a record here."""
    points = [
        {"date": row["date"], "time_h": row["time_h"], "label": f"#{i} {row['description']}", "kind": "reference"}
        for i, row in enumerate(reference["rows"])
        if len(row["date"]) == 10  # GPT-2 XL (2019, 168 h) has no day and would flatten the chart
    ]
    points += [
        {
            "date": j.entry.meta["date"],
            "time_h": j.assessment.time_h.mean,
            "label": f"#{j.number} {j.entry.meta['name']}",
            "kind": "record",
        }
        for j in record
        if j.assessment.beats_record
    ]
    return points


def _json_for_script(obj: object) -> str:
    # "</" would end the <script> element early; "<\/" is the same string to JSON.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def build_page(record: list[Judged], dev: list[Judged], reference: dict) -> str:
    data = {
        "target": reference["target"]["core"],
        "history": _history(record, reference),
        "entries": [_entry_data(j, "record") for j in record] + [_entry_data(j, "dev") for j in dev],
    }
    page = (TEMPLATES / "page.html").read_text(encoding="utf-8")
    fills = {
        "__STYLE__": (TEMPLATES / "page.css").read_text(encoding="utf-8"),
        "__SCRIPT__": (TEMPLATES / "page.js").read_text(encoding="utf-8"),
        "__DATA__": _json_for_script(data),
        "__RULE__": rule_text(reference).replace("**", "").replace("`", ""),
        "__RECORD_TABLE__": html_table(record_frame(record, reference), "record-table"),
        "__DEV_TABLE__": html_table(dev_frame(dev), "dev-table"),
    }
    for key, value in fills.items():
        page = page.replace(key, value)
    return page
