"""The clocks and the event log: the harness alone decides what counts as training time.

The rule (also in the README's rules section):
- ``training_time_s`` is the sum of the timed training steps. A step is timed from a device synchronisation
  before it to one after it, and covers fetching its batches, forward, backward, gradient communication,
  the schedule and the optimizer step.
- Untimed: setup, data preparation, tokenizer training, model build, the warm-up steps (compilation; the
  model and optimizer are then restored to their initial state), evals, logging, checkpoints, the record.
- With several ranks, each rank measures its own steps and the slowest rank's total counts.

The worker measures its steps with ``Clock`` and reports every phase and step as it starts and stops; the
referee (harness/run.py) stamps each report with its own monotonic clock, writes ``events.jsonl`` and keeps
both measurements in the record. The referee's phases tile the run, so they add up to the wall time.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.fileio import strict_json


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EventLog:
    """Append-only JSON lines ``{"time", "t", "event", "key", "value"}``, written by the referee alone.

    ``t`` is seconds since the run started on the referee's monotonic clock; ``at`` lets an event carry the moment
    a worker message arrived rather than the moment it is written.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.wall_start, self.start = time.time(), time.monotonic()
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - closed in close()
        self.error: str | None = None

    def write(self, event: str, key: str | int | None = None, value: object = None, at: float | None = None) -> None:
        if self.file is None:
            return
        t = (time.monotonic() if at is None else at) - self.start
        line = {"time": round(self.wall_start + t, 4), "t": round(t, 4), "event": event, "key": key, "value": value}
        try:
            self.file.write(strict_json(line) + "\n")
            self.file.flush()  # a line at a time: a killed run leaves at most one partial last line
        except OSError as exc:  # a full disk: the run goes on, and the record says the log stopped here
            self.error = f"{self.path}: {exc.strerror or exc} at t={t:.1f} s; later events are missing"
            self.file = None

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None


def read_events(path: str | Path) -> list[dict]:
    """Read an events.jsonl: one JSON object per line; blank lines are skipped.

    A last line that does not parse (a run killed mid-write) is skipped. Anything else raises ValueError naming
    the file and the line: a line that does not parse before the last, or a line that parses to something other
    than an object (a cut-off line starts with "{", so it never parses to one).
    """
    events = []
    lines = Path(path).read_bytes().splitlines()  # bytes: a cut-off last line may end inside a UTF-8 character
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            if i == len(lines) - 1:
                continue
            raise ValueError(
                f"{path}: line {i + 1} is not UTF-8 JSON ({exc}); only a last line may be cut off"
            ) from None
        if not isinstance(event, dict):
            raise ValueError(f"{path}: line {i + 1} is a JSON {type(event).__name__}, expected an object per line")
        events.append(event)
    return events


class Clock:
    """The worker's clock: ``train`` (the timed steps) is the only phase that counts toward training time.

    Every phase and step is reported as it starts and stops through ``report(kind, **fields)`` (the channel to
    the referee), which stamps each report with its own clock to check these numbers against.
    """

    def __init__(self, device: torch.device, report):
        self.device = device
        self.report = report
        self.phases: dict[str, float] = defaultdict(float)
        self.train_steps = 0

    @contextmanager
    def phase(self, name: str, **info):
        """An untimed phase (build, warmup, eval, checkpoint ...), reported as it starts and stops."""
        synchronize(self.device)
        self.report("phase_start", name=name, **info)
        began = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            seconds = time.perf_counter() - began
            self.phases[name] += seconds
            self.report("phase_stop", name=name, seconds=seconds, **info)

    @contextmanager
    def timed_step(self, step: int):
        """One training step, between two device synchronisations, reported as it starts and stops."""
        self.report("step_start", step=step)
        synchronize(self.device)
        began = time.perf_counter()
        yield
        synchronize(self.device)
        seconds = time.perf_counter() - began
        self.phases["train"] += seconds
        self.train_steps += 1
        self.report("step_stop", step=step, seconds=seconds)

    @contextmanager
    def untimed(self, name: str):
        """A short untimed interval inside the training loop (logging), accumulated without a report."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] += time.perf_counter() - began

    @property
    def training_time_s(self) -> float:
        return self.phases["train"]
