"""The static web page ``leaderboard/index.html``: one self-contained file, no server, no network.

Written by ``python -m leaderboard render`` (``build_page``); open it straight from disk. It shows the
record-track table (click a header to sort), record time against date, then two entries compared: their loss
curves overlaid (against step or training time) and per-task CORE of B against A, then the development board.

The page's markup, style and script live in ``templates/``; the charts are uPlot's, inlined by
``harness.webpage`` (which also makes the embedded JSON and the template filling injection-proof). This module
fills in the tables (pandas, HTML-escaped) and the data computed by ``harness.stats``; curves are read from
the runs' event logs by ``harness.curves``, as ``python -m harness.plot`` reads them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from harness import stats
from harness.curves import run_curves, thin
from harness.webpage import CHARTS_JS, UPLOT_CSS, UPLOT_JS, escape, fill, script_json
from leaderboard.render import Judged, dev_frame, finite, html_table, record_frame, rule_text

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_CURVE_POINTS = 400  # per run: enough to see the curve's shape, small enough to keep the page light


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _entry_data(j: Judged, board: str) -> dict:
    e = j.entry
    tasks = []
    for run in e.runs:
        per_task = run.record.metrics.core_tasks
        values = {str(label): finite(task.get("centered")) for label, task in per_task.items()}  # schema: objects
        tasks.append({label: v for label, v in values.items() if v is not None})
    curves = []
    for run in e.runs:
        points = thin(run_curves(run.data, run.events).loss, MAX_CURVE_POINTS)
        curves.append({"seed": run.seed, "points": [[p.step, round(p.value, 6), _round(p.time_s, 3)] for p in points]})
    core = j.assessment.core
    return {
        "id": f"{board}/{e.path.name}",
        "label": f"{'' if board == 'record' else 'dev '}#{j.number} {' '.join(str(e.meta['name']).split())}",
        "core": None if core is None else core.mean,
        "tasks": {label: s.mean for label, s in stats.task_means(tasks).items()},
        "curves": curves,
    }


def _unix(date: str) -> int | None:
    try:
        return int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
    except (TypeError, ValueError):
        return None  # GPT-2 XL's bare year (2019, 168 h) has no day and would flatten the chart anyway


def _history(record: list[Judged], reference: dict) -> list[dict]:
    """Points of the record-time chart: nanochat's dated history and every entry that set a record here."""
    points = [
        {"date": _unix(row["date"]), "time_h": row["time_h"], "label": f"#{i}", "kind": "reference"}
        for i, row in enumerate(reference["rows"])
    ]
    points += [
        {"date": _unix(j.entry.meta["date"]), "time_h": j.assessment.time_h.mean, "label": f"#{j.number}",
         "kind": "record"}
        for j in record
        if j.holds_record and j.assessment.time_h is not None
    ]  # fmt: skip
    return [p for p in points if p["date"] is not None and math.isfinite(p["time_h"])]


def _defaults(record: list[Judged], dev: list[Judged]) -> dict:
    """The pair shown first: A the record in force (else the first entry), B the newest other entry."""
    ids = [f"record/{j.entry.path.name}" for j in record] + [f"dev/{j.entry.path.name}" for j in dev]
    holders = [f"record/{j.entry.path.name}" for j in record if j.holds_record]
    a = holders[-1] if holders else (ids[0] if ids else None)
    others = [i for i in ids if i != a]
    newest_record = [i for i in others if i.startswith("record/")]
    b = newest_record[-1] if newest_record else (others[-1] if others else a)
    return {"a": a, "b": b}


def build_page(record: list[Judged], dev: list[Judged], reference: dict) -> str:
    data = {
        "target": reference["target"]["core"],
        "history": _history(record, reference),
        "entries": [_entry_data(j, "record") for j in record] + [_entry_data(j, "dev") for j in dev],
        "defaults": _defaults(record, dev),
    }
    return fill(
        (TEMPLATES / "page.html").read_text(encoding="utf-8"),
        {
            "STYLE": UPLOT_CSS + (TEMPLATES / "page.css").read_text(encoding="utf-8"),
            "UPLOT_JS": UPLOT_JS,
            "CHARTS_JS": CHARTS_JS,
            "SCRIPT": (TEMPLATES / "page.js").read_text(encoding="utf-8"),
            "DATA": script_json(data),
            "RULE": escape(rule_text(reference).replace("**", "").replace("`", "")),
            "RECORD_TABLE": html_table(record_frame(record, reference, markdown=False), "record-table"),
            "DEV_TABLE": html_table(dev_frame(dev, markdown=False), "dev-table"),
        },
    )
