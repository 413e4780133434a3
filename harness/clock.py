"""The clock and the event log: the harness alone decides what counts as training time.

The rule (also in the README's rules section):
- ``training_time_s`` is the sum of the timed training steps. A step is timed from a device synchronisation
  before it to one after it, and covers fetching its batches, forward, backward, gradient communication,
  the schedule and the optimizer step.
- Untimed: setup, data preparation, tokenizer training, model build, the warm-up steps (compilation; the
  model and optimizer are then restored to their initial state), evals, logging, checkpoints, the record.
- With several ranks, each rank measures its own steps and the slowest rank's total counts.

Every phase is written to ``events.jsonl`` as it starts and stops, so its duration can be audited; the
phases tile the run, so they add up to the wall time.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EventLog:
    """Append-only JSON lines: ``{"time", "t", "event", "key", "value"}``; written by rank 0 only."""

    def __init__(self, path: Path | None, start: float):
        self.path = path
        self.start = start
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 - closed in close()

    def write(self, event: str, key: str | int | None = None, value: object = None) -> None:
        if self.file is None:
            return
        now = time.time()
        line = {"time": round(now, 4), "t": round(now - self.start, 4), "event": event, "key": key, "value": value}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()  # a line at a time: a killed run leaves at most one partial last line

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
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
    """Accumulates wall time per phase; ``train`` is the only phase that counts toward training time."""

    def __init__(self, device: torch.device, events: EventLog):
        self.device = device
        self.events = events
        self.start = events.start
        self.phases: dict[str, float] = defaultdict(float)
        self.train_steps = 0

    @contextmanager
    def phase(self, name: str, **info):
        """An untimed phase (setup, warmup, eval, checkpoint ...), logged as it starts and stops."""
        synchronize(self.device)
        self.events.write("phase_start", name, info or None)
        began = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            seconds = time.perf_counter() - began
            self.phases[name] += seconds
            self.events.write("phase_stop", name, {"seconds": round(seconds, 6), **info})

    @contextmanager
    def timed_step(self):
        """One training step, between two device synchronisations. No event per step: see ``flush_train``."""
        synchronize(self.device)
        began = time.perf_counter()
        yield
        synchronize(self.device)
        self.phases["train"] += time.perf_counter() - began
        self.train_steps += 1

    @contextmanager
    def untimed(self, name: str):
        """A short untimed interval inside the training loop (logging), accumulated without an event."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] += time.perf_counter() - began

    def flush_train(self, step: int) -> None:
        """Log the running totals of the in-loop phases, at eval and checkpoint boundaries and at the end."""
        self.events.write(
            "train_segment",
            step,
            {
                "train_s": round(self.phases["train"], 6),
                "log_s": round(self.phases["log"], 6),
                "steps": self.train_steps,
            },
        )

    @property
    def training_time_s(self) -> float:
        return self.phases["train"]

    def wall_time_s(self) -> float:
        return time.time() - self.start
