"""What ``leaderboard add`` re-derives from a run's own files before it believes the record.

    problems = run_problems(run_dir, record, events)    # record: a typed Record; {check name: reason or ""}
    commit_problem(record.harness.commit)                # "" when the commit is in this repository's history

A record is only as good as its consistency with the evidence beside it: the sha256 the referee wrote into
events.jsonl when it wrote record.json (``harness.record.record_digest_problem``), the per-step times in the
``step_times`` event, the referee's own clock (``training_time_observed_s``, ``phases``) and the plan. Each check
here is one of those comparisons; a hand-made or edited record fails at least one of them unless every file was
forged consistently, which ``python -m leaderboard verify`` (a re-run) is for. Clock comparisons allow the
referee's own tolerance (``harness.run.CLOCK_TOLERANCE``: 2% or 2 s, whichever is larger).
"""

from __future__ import annotations

import math
import subprocess
from functools import cache
from pathlib import Path

from harness.record import REPO_ROOT, Record, record_digest_problem
from harness.referee import CLOCK_TOLERANCE

CHECKS = ("record digest", "training time", "step times", "wall time", "tokens", "harness commit")


def _number(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def tolerance(seconds: float) -> float:
    share, floor = CLOCK_TOLERANCE
    return max(share * abs(seconds), floor)


def run_problems(run_dir: Path, record: Record, events: list[dict]) -> dict[str, str]:
    """Every per-run consistency check, by name (CHECKS), with its reason ("" when it passed). ``record`` is the
    run's typed record (valid against the schema); ``events`` is the run's event log as read."""
    return {
        "record digest": digest_problem(run_dir),
        "training time": clock_problem(record),
        "step times": step_times_problem(record, events),
        "wall time": wall_time_problem(record),
        "tokens": tokens_problem(record),
        "harness commit": commit_problem(record.harness.commit if record.harness else None),
    }


def digest_problem(run_dir: Path) -> str:
    try:
        problem = record_digest_problem(run_dir)
    except (OSError, ValueError) as e:
        return f"cannot read the record's digest from events.jsonl ({e})"
    return "" if problem is None else f"{problem}; file the record.json and events.jsonl the run wrote"


def clock_problem(record: Record) -> str:
    """The worker's training time against the referee's observation of the same steps."""
    worker = _number(record.training_time_s)
    observed = _number(record.training_time_observed_s)
    train = _number(record.phases.get("train", 0.0))
    if observed is None and record.plan is None and worker == 0 and not train:
        return ""  # the run stopped before training was planned: no step was timed by either clock
    if worker is None or observed is None or train is None:
        return "the record has no training_time_observed_s (the referee's clock): it was not written by this harness"
    problems = []
    # A run that stopped mid-step saw part of a step the worker never finished timing: only a finished run's
    # clocks must agree both ways; the worker may never claim more than the referee saw.
    if worker - observed > tolerance(observed) or (
        record.status == "finished" and observed - worker > tolerance(observed)
    ):
        problems.append(
            f"training_time_s {worker:.1f} s but the referee observed {observed:.1f} s (tolerance "
            f"{tolerance(observed):.1f} s)"
        )
    # phases.train is this session's; a resumed run's observed time adds the sessions before it.
    if (abs(observed - train) if not record.resumed else train - observed) > tolerance(observed):
        problems.append(f"training_time_observed_s {observed:.1f} s but phases.train is {train:.1f} s")
    return "; ".join(problems) + ("; the record was edited after the run" if problems else "")


def step_times_problem(record: Record, events: list[dict]) -> str:
    """The sum of the step_times events (the worker's time of each step) against training_time_s."""
    steps, worker = record.steps_completed, _number(record.training_time_s)
    if worker is None:
        return "training_time_s is missing"
    per_step: dict[int, float] = {}
    for event in events:  # a resumed run appends a session's steps; a step run again replaces the earlier time
        if event.get("event") != "step_times":
            continue
        first, times = event.get("key"), event.get("value")
        if type(first) is not int or not isinstance(times, list) or not all(_number(t) is not None for t in times):
            return f"a step_times event is malformed ({str(event)[:80]}); file the events.jsonl the run wrote"
        per_step.update({first + i: float(t) for i, t in enumerate(times)})
    covered = 0
    while covered in per_step:
        covered += 1
    if covered < steps:
        return (
            f"events.jsonl has no time for step {covered} of the {steps} steps the record completed; file the "
            "events.jsonl the run wrote"
        )
    total = sum(per_step[s] for s in range(steps))
    if abs(total - worker) > tolerance(worker):
        return (
            f"the step_times in events.jsonl sum to {total:.1f} s but training_time_s is {worker:.1f} s "
            f"(tolerance {tolerance(worker):.1f} s): the record and its event log disagree"
        )
    return ""


def wall_time_problem(record: Record) -> str:
    """The referee's phases tile the run: their sum is its wall time."""
    wall, phases = _number(record.wall_time_s), record.phases
    total = sum(v for v in (_number(p) for p in phases.values()) if v is not None)
    if wall is None or abs(total - wall) > tolerance(wall):
        return f"the phases sum to {total:.1f} s but wall_time_s is {wall} s: the record was edited after the run"
    return ""


def tokens_problem(record: Record) -> str:
    plan, data = record.plan, record.data
    if plan is None or data is None:
        return ""  # stopped before planning or data: nothing was consumed, nothing to compare
    expected = plan.total_batch_tokens * record.steps_completed
    if data.tokens_consumed != expected:
        return (
            f"tokens_consumed {data.tokens_consumed:,} but the plan's {plan.total_batch_tokens:,} tokens per "
            f"step x {record.steps_completed} steps is {expected:,}: the record was edited after the run"
        )
    return ""


@cache
def _git(*args: str) -> tuple[int, str]:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return -1, str(e)
    return out.returncode, (out.stdout or out.stderr).strip()


def commit_problem(commit: object) -> str:
    """The harness commit must be one of this repository's commits, reachable from the checked-out HEAD."""
    if not isinstance(commit, str) or not commit:
        return "the record names no harness commit (run from a git clone of the repository)"
    code, out = _git("rev-parse", "--is-inside-work-tree")
    if code != 0:
        return f"cannot check the harness commit here: git failed ({out}); run add from a git clone of the repository"
    code, _ = _git("cat-file", "-e", f"{commit}^{{commit}}")
    if code == 0:
        code, _ = _git("merge-base", "--is-ancestor", commit, "HEAD")
    if code != 0:
        return (
            f"harness commit {commit[:12]} is not in this repository's history (a shallow clone needs `git fetch "
            "--unshallow`); run with a committed harness from this repository"
        )
    return ""
