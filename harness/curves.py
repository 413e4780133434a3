"""A run's curves, read from the files it wrote: training loss, val_bpb and the schedule's learning-rate multiplier,
each point with its step and the training time (harness clock) at which it was reached.

    curves = read_run_curves("runs/20261124T020000Z_climbmix")     # record.json (optional) + events.jsonl
    curves = run_curves(record, events)                             # the same from parsed files
    curves.loss[0]      # Point(step=0, value=8.3176, time_s=1.73)

What is read, in ``events.jsonl`` (the harness's event log):

- ``train_loss`` lines: ``key`` the step, ``value`` the loss, or an object ``{"loss": x, "lr_mult": y,
  "training_time_s": t}`` (``lr_mult``: what the schedule returned for that step; ``training_time_s``: the
  clock's training time at the end of the step). Without ``training_time_s`` the time is the running sum of the
  ``step_times`` lines (``key`` the first step, ``value`` each step's seconds); a step whose time is unknown
  (a resumed run's earlier segment) has ``time_s`` None and is left out of plots against time.
- ``val_bpb`` lines: ``key`` the number of steps done, ``value`` the bits per byte, or an object ``{"val_bpb": x,
  "rows": ..., "training_time_s": t}``; without ``training_time_s``, the time at the end of the last step done.
  The curve is the in-training val_bpb (``rows`` "monitor"); the referee's final value (``rows`` "validation",
  on the fixed validation rows) is another measurement and is left out of it.

When the log has no ``train_loss`` or ``val_bpb`` lines, the record's ``loss_curve`` and ``evals`` are used.
Points whose value is not a finite number (a diverged run; null in strict JSON) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from harness.clock import read_events
from harness.fileio import read_json


class Point(NamedTuple):
    step: int
    value: float
    time_s: float | None  # training time when the point was reached; None when the log does not say


@dataclass
class RunCurves:
    label: str
    loss: list[Point] = field(default_factory=list)
    val_bpb: list[Point] = field(default_factory=list)
    lr_mult: list[Point] = field(default_factory=list)


class CurvesError(Exception):
    """A run directory whose curves cannot be read; the message names the file and the fix."""


def _number(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _step(key: object) -> int | None:
    try:
        return int(key)
    except (TypeError, ValueError):
        return None


def step_end_times(events: list[dict]) -> dict[int, float]:
    """Training time at the end of each step, from the ``step_times`` lines: the running sum of the step
    durations from step 0 on, as far as they are known without a gap."""
    durations: dict[int, float] = {}
    for e in events:
        first = _step(e.get("key"))
        if e.get("event") == "step_times" and first is not None and isinstance(e.get("value"), list):
            for i, seconds in enumerate(e["value"]):
                if _number(seconds) is not None:
                    durations[first + i] = float(seconds)
    ends, total, step = {}, 0.0, 0
    while step in durations:
        total += durations[step]
        ends[step] = total
        step += 1
    return ends


def run_curves(record: dict | None, events: list[dict], label: str = "") -> RunCurves:
    """The curves of one run from its parsed record (None when the run wrote none) and event log."""
    record = record or {}
    ends = step_end_times(events)
    curves = RunCurves(label)
    for e in events:
        step = _step(e.get("key"))
        if step is None:
            continue
        value = e.get("value")
        if e.get("event") == "train_loss":
            fields = value if isinstance(value, dict) else {"loss": value}
            time_s = _number(fields.get("training_time_s"))
            time_s = time_s if time_s is not None else ends.get(step)
            if (loss := _number(fields.get("loss"))) is not None:
                curves.loss.append(Point(step, loss, time_s))
            if (mult := _number(fields.get("lr_mult"))) is not None:
                curves.lr_mult.append(Point(step, mult, time_s))
        elif e.get("event") == "val_bpb":
            fields = value if isinstance(value, dict) else {"val_bpb": value}
            if fields.get("rows") == "validation":  # the referee's final value is on other rows: not this curve
                continue
            time_s = _number(fields.get("training_time_s"))
            time_s = time_s if time_s is not None else ends.get(step - 1, 0.0 if step == 0 else None)
            if (bpb := _number(fields.get("val_bpb"))) is not None:
                curves.val_bpb.append(Point(step, bpb, time_s))
    if not curves.loss:
        for item in record.get("loss_curve") or []:
            if isinstance(item, list) and len(item) >= 2 and (step := _step(item[0])) is not None:
                if (loss := _number(item[1])) is not None:
                    curves.loss.append(Point(step, loss, ends.get(step)))
    if not curves.val_bpb:
        for item in record.get("evals") or []:
            step = _step(item.get("step")) if isinstance(item, dict) else None
            if step is not None and (bpb := _number(item.get("val_bpb"))) is not None:
                curves.val_bpb.append(Point(step, bpb, ends.get(step - 1, 0.0 if step == 0 else None)))
    for points in (curves.loss, curves.val_bpb, curves.lr_mult):
        points.sort()
    return curves


def read_run_curves(run_dir: str | Path, label: str | None = None) -> RunCurves:
    """The curves of the run in ``run_dir`` (its events.jsonl, and record.json when there is one)."""
    run_dir = Path(run_dir)
    events_path, record_path = run_dir / "events.jsonl", run_dir / "record.json"
    if not run_dir.is_dir():
        raise CurvesError(f"{run_dir}: no such directory; pass a run directory (it holds events.jsonl)")
    if not events_path.is_file() and not record_path.is_file():
        raise CurvesError(
            f"{run_dir}: no events.jsonl or record.json; pass a run directory that harness.run wrote (its --out)"
        )
    try:
        events = read_events(events_path) if events_path.is_file() else []
    except ValueError as e:
        raise CurvesError(f"{e}; the log is damaged") from None
    record = None
    if record_path.is_file():
        record = read_json(record_path, "the record is damaged", CurvesError)
    return run_curves(record, events, label if label is not None else run_dir.name)


def thin(points: list[Point], limit: int) -> list[Point]:
    """At most ``limit`` (>= 2) points, evenly strided, always keeping the first and the last (the final loss)."""
    n = len(points)
    if n <= limit:
        return points
    stride = -(-(n - 1) // (limit - 1))  # then at most limit - 1 strides fit in n - 1, and the last point is added
    return points[::stride] + ([points[-1]] if (n - 1) % stride else [])
