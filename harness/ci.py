"""Regression check of time-to-GPT-2 that cannot be bought: a candidate's training time to a loss target, measured
beside the reference submission's on the same machine, with the verdict from the leaderboard's statistics engine.
Answers "did this change make the speedrun slower?" in minutes.

    python -m harness.ci submissions/my_idea                      # cpu here: 4 interleaved pairs, about 6 minutes
    python -m harness.ci submissions/my_idea --pairs 5            # more pairs: a sharper verdict
    python -m harness.ci submissions/my_idea --profile 8xh100     # on the node: 8 processes per run (torchrun)
    python -m harness.ci submissions/climbmix --update-baseline   # measure the reference: its target, its times
    python -m harness.ci --drift                                  # nightly: the reference against its stored times

How a check works (docs/ci.md gives the reasons and each profile's figures):
1. Target. ``leaderboard/ci/<profile>.json`` holds the reference submission's sources and the profile's quality
   target: the in-training val_bpb (on the profile's fixed monitor rows) that the reference reaches at a stated
   fraction of its proxy run, the mean over the stored repetitions.
2. Runs. The reference (written out from the stored sources) and the candidate run in pairs, interleaved with
   alternating order (``harness.compare.plan_runs``); pair i runs both at seed i. Each run is a real
   ``python -m harness.run`` evaluating val_bpb every few steps (untimed); this module follows its event log and
   stops it (SIGTERM, as a person would) once it reaches the target, or once its training time passes the cap:
   CAP x the slowest reference run of this check.
3. Time to target: the referee's own clock (``step_times_observed``) summed over the steps up to the evaluation
   that reached the target, interpolated linearly in val_bpb from the evaluation before it.
4. Rule: the check fails when a candidate run did not reach the target within the cap, or when the candidate is
   slower than the reference by more than max(noise, floor) with p < 0.05: a one-sided paired t-test on the pairs'
   log time ratios (``harness.stats.one_sample_greater``), so that the seed's effect and the machine's speed of
   the moment cancel within a pair. Noise is one run's relative timing noise (the sd of the log ratios / sqrt 2),
   floor the profile's. A difference beyond the tolerance that is not significant yet adds two pairs, up to
   ``--max-pairs`` and within the profile's time budget (10 minutes on CPU), before the verdict.
5. Drift. When this machine's hardware and software match the stored baseline's, the reference's times are also
   compared with the stored ones by the same rule: information in a check, the verdict of ``--drift``.

Exit status: 0 pass; 1 regression; 2 error (bad arguments, a failed run, no baseline, a target the reference no
longer reaches); 3 (``--drift`` only) the baseline was measured on other hardware or software. Prints a markdown
summary and writes ``ci.json`` beside the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import profiles
from harness.clock import read_events
from harness.compare import ALPHA, RunSpec, harness_command, plan_runs
from harness.fileio import atomic_write_json, read_json
from harness.markdown import markdown_table
from harness.plugins import SubmissionError, describe_folder, locate_submission
from harness.record import REPO_ROOT, Record, RecordError, Submission, harness_provenance
from harness.replay import materialize_sources
from harness.stats import one_sample_greater, summarize

BASELINE_DIR = REPO_ROOT / "leaderboard" / "ci"
BASELINE_SCHEMA = 2
EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR, EXIT_MISMATCH = 0, 1, 2, 3
# Reference + candidate pairs of a check. Even: the order alternates A B, B A, so a drift of the machine's speed
# during the check (other jobs starting or ending) favours each side in as many pairs; measured here, 3 pairs under a
# falling load put a copy sleeping 20% of each step at +9%.
PAIRS = 4
EXTRA_PAIRS = 2  # a difference beyond the tolerance that is not yet significant gets up to this many more pairs
BUDGET_S = {"cpu": 600.0}  # ... unless they would take the check past this (docs/ci.md: at most 10 minutes on CPU)
REPEATS = 5  # reference runs of a baseline (seeds 0..4)
CAP = 2.0  # a candidate run that has not reached the target after CAP x the slowest reference run has failed
STEP_LIMIT = 4  # ... and one that has run STEP_LIMIT x the proxy run's steps (whatever its time) has too
STOP_TIMEOUT_S = 900.0  # a stopped run saves a checkpoint and writes its record; d24 on 8 GPUs takes a while
POLL_S = 0.25  # how often a run's event log is read
# What must match for stored times to be compared with today's; anything else (hostname, Python patch) may differ.
FINGERPRINT_KEYS = ("profile", "device", "device_count", "world_size", "torch", "cuda", "driver")


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A profile's proxy run: how long, where its target is, how often it evaluates, and its tolerance floor."""

    steps: int  # the proxy run; the reference reaches the target at `fraction` of it
    fraction: float
    eval_every: int  # in-training val_bpb cadence in steps (untimed)
    floor: float  # the smallest relative slowdown that can fail a check, however quiet the machine
    depth: int | None = None  # None: each submission's own depth
    capped: bool = False  # True: runs are planned for `steps` (--max-steps), so the schedule ends with the proxy run
    threads: int | None = None  # OMP_NUM_THREADS of every run (None: the worker's choice)

    @property
    def target_step(self) -> int:
        return round(self.fraction * self.steps)

    def problems(self) -> list[str]:
        found = []
        if not 0 < self.fraction < 1:
            found.append(f"the target fraction must lie strictly between 0 and 1, got {self.fraction}")
        if self.target_step < 1 or self.target_step % self.eval_every:
            found.append(
                f"the target step ({self.fraction} x {self.steps} steps = {self.target_step}) must be a positive "
                f"multiple of the evaluation cadence ({self.eval_every})"
            )
        return found


PROXY = {
    # The record configuration, on its own schedule (not capped: 5,568 steps planned), evaluated every 25 steps;
    # the reference reaches its target at step 200, about 3.6 minutes of training at 1.07 s a step.
    "8xh100": Proxy(steps=400, fraction=0.5, eval_every=25, floor=0.02),
    # One GPU: d12, the scaled configuration (d24 needs 32 micro-steps a step on one GPU), on its own schedule;
    # about 1.2 s a step on an H100 (reasoned: 524k tokens x 0.9 GFLOP at 40% MFU), 4 minutes to the target.
    "gpu": Proxy(steps=400, fraction=0.5, eval_every=25, floor=0.03, depth=12),
    # The smoke profile at d2, planned for 30 steps (its schedule, warm-down included, fits in the run), target at
    # step 15. One OpenMP thread per run: on a shared 2-core machine two threads are several times slower and far
    # noisier (harness/worker.py). The floor sits above the paired noise measured here under load (1-5% in a
    # check) and below the 20% slowdown a check must catch (docs/ci.md).
    "cpu": Proxy(steps=30, fraction=0.5, eval_every=3, floor=0.10, depth=2, capped=True, threads=1),
}


class CIError(Exception):
    """The check could not be made (bad arguments, a failed run, a missing baseline): exit 2 with the message."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.ci", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "submission",
        nargs="?",
        help="the candidate (folder or entry-point name); with --update-baseline the reference to store",
    )
    p.add_argument("--profile", default="auto", choices=["auto", *profiles.PROFILES], help="hardware profile")
    p.add_argument("--baseline", type=Path, help="baseline JSON (default leaderboard/ci/<profile>.json)")
    p.add_argument("--reference", help="run this reference instead of the baseline's stored sources")
    p.add_argument("--pairs", type=int, default=PAIRS, help=f"reference + candidate pairs (default {PAIRS})")
    p.add_argument(
        "--max-pairs",
        type=int,
        help=f"pairs at most, when a slowdown is not yet significant (default pairs + {EXTRA_PAIRS})",
    )
    p.add_argument("--update-baseline", action="store_true", help="measure the reference and store the baseline")
    p.add_argument(
        "--repeats",
        type=int,
        help=f"reference runs of --update-baseline (default {REPEATS}) or of --drift (default {PAIRS})",
    )
    p.add_argument(
        "--drift",
        action="store_true",
        help="run the reference alone and judge it against its stored "
        "times (needs this machine's hardware and software to match the baseline's)",
    )
    for name, kind in (("steps", int), ("fraction", float), ("depth", int), ("eval-every", int)):
        p.add_argument(f"--{name}", type=kind, help="proxy run setting of --update-baseline (default: the profile's)")
    p.add_argument("--nproc", type=int, help="processes (GPUs) per run (default: the profile's world size, else 1)")
    p.add_argument("--out", type=Path, help="folder for the runs and ci.json (default runs/ci/<time>_<name>)")
    p.add_argument("--data-dir", type=Path, help="passed to harness.run (dataset shards folder)")
    p.add_argument("--train-shards", type=int, help="passed to harness.run (shards that must be present)")
    args = p.parse_args(argv)
    for name in ("pairs", "max_pairs", "repeats", "steps", "depth", "eval_every", "nproc", "train_shards"):
        value = getattr(args, name)
        if value is not None and value < (2 if name in ("pairs", "max_pairs") else 1):
            p.error(f"--{name.replace('_', '-')} must be at least {2 if 'pairs' in name else 1}, got {value}")
    args.max_pairs = args.max_pairs or args.pairs + EXTRA_PAIRS
    if args.max_pairs < args.pairs:
        p.error(f"--max-pairs {args.max_pairs} is below --pairs {args.pairs}")
    if args.update_baseline and args.drift:
        p.error("--update-baseline and --drift are separate jobs: measure the baseline first, then track drift")
    if args.submission is None and not args.drift:
        p.error("name the candidate submission (or the reference, with --update-baseline)")
    if args.drift and (args.submission or args.reference):
        p.error("--drift runs the baseline's stored reference alone: name no submission and no --reference")
    if not args.update_baseline and any(
        getattr(args, n) is not None for n in ("steps", "fraction", "depth", "eval_every")
    ):
        p.error("--steps, --fraction, --depth and --eval-every describe a new baseline: a check repeats the stored one")
    return args


# ------------------------------------------------------------------------------------------------
# The hardware and software a measurement belongs to


def machine_key(profile: profiles.Profile, world_size: int) -> dict:
    """The parts of the fingerprint that move step times: device model and count, world size, torch, CUDA, driver."""
    fp = profiles.fingerprint()
    gpus = sorted({gpu["name"] for gpu in fp["gpus"]})
    return {
        "profile": profile.name,
        "device": ", ".join(gpus) if profile.device_type == "cuda" else fp["cpu_model"],
        "device_count": fp["gpu_count"] if profile.device_type == "cuda" else fp["cpu_count"],
        "world_size": world_size,
        "torch": fp["torch"],
        "cuda": fp.get("cuda"),
        "driver": fp.get("driver"),
    }


def key_mismatches(baseline_key: dict, here: dict) -> list[str]:
    return [
        f"{k}: baseline {baseline_key.get(k)!r}, here {here.get(k)!r}"
        for k in FINGERPRINT_KEYS
        if baseline_key.get(k) != here.get(k)
    ]


# ------------------------------------------------------------------------------------------------
# Time to target: pure functions of a run's evaluations and step times


def time_to_target(
    evals: list[tuple[int, float]], step_seconds: list[float], first_step: int, target: float
) -> tuple[float, float] | None:
    """(training seconds, steps) to the first evaluation at or below ``target``; None if none reached it.

    ``evals`` are (steps trained, val_bpb) in order; ``step_seconds[i]`` is the time of step ``first_step + i``.
    Between the evaluation before the crossing and the crossing one, the time and the step are interpolated
    linearly in val_bpb (the loss curve is smooth between two evaluations a few steps apart); a crossing at the
    first evaluation has nothing to interpolate from and counts in full.
    """
    elapsed = [0.0, *itertools.accumulate(step_seconds)]  # elapsed[k]: the first k steps' time

    def seconds_at(step: int) -> float:
        k = step - first_step
        if not 0 <= k < len(elapsed):
            raise CIError(f"an evaluation after step {step} has no step times for it (steps {first_step} on timed)")
        return elapsed[k]

    before = None
    for step, bpb in evals:
        if bpb <= target:
            if before is None or before[1] == bpb:
                return seconds_at(step), float(step)
            share = (before[1] - target) / (before[1] - bpb)
            t0, t1 = seconds_at(before[0]), seconds_at(step)
            return t0 + share * (t1 - t0), before[0] + share * (step - before[0])
        before = (step, bpb)
    return None


@dataclasses.dataclass(frozen=True)
class Regression:
    """The rule applied to paired reference and candidate times: the outcome, whether it fails, and the numbers."""

    outcome: str  # slower | not reached (both fail) | faster | inconclusive | within tolerance
    failed: bool
    pairs: int
    ratio: float  # candidate / reference: the geometric mean of the pairs' ratios
    ratio_ci: tuple[float, float]  # its 95% interval
    p_slower: float  # one-sided paired t-test, H1: the candidate is slower
    p_faster: float  # ... H1: the candidate is faster
    noise: float  # one run's relative timing noise: the sd of the pairs' log ratios / sqrt(2)
    tolerance: float  # max(noise, floor)
    sentence: str


def regression_verdict(pairs: list[tuple[float, float]], floor: float, unreached: int = 0) -> Regression:
    """Fail when a candidate run missed the target (``unreached``), or when the candidate is slower by more than
    max(noise, floor) with p < ALPHA.

    ``pairs`` are (reference, candidate) seconds to the target from runs that share a seed and ran one after the
    other. The test is on the pairs' log ratios (``one_sample_greater``, a paired t-test): the seed's effect on the
    steps to the target, and the machine's speed of the moment, cancel within a pair. Needs two pairs at least.
    """
    logs = [math.log(b / a) for a, b in pairs]
    if unreached:
        ratio = math.exp(statistics.fmean(logs)) if logs else math.nan
        runs = "run" if unreached == 1 else "runs"
        sentence = f"did not reach the target within the cap ({CAP:g}x the slowest reference run's time) in "
        sentence += f"{unreached} {runs}"
        return Regression("not reached", True, len(logs), ratio, (math.nan,) * 2, math.nan, math.nan, math.nan, floor,
                       sentence)  # fmt: skip
    if len(logs) < 2:
        raise ValueError(f"the rule needs two pairs at least, got {len(logs)}")
    s = summarize(logs)
    noise = s.sd / math.sqrt(2)
    tolerance = max(noise, floor)
    ratio, ci = math.exp(s.mean), (math.exp(s.ci_low), math.exp(s.ci_high))
    p_slower, p_faster = one_sample_greater(logs, 0.0)[1], one_sample_greater([-x for x in logs], 0.0)[1]
    if s.sd == 0:  # every pair the same ratio (hand-made samples only): the difference, if any, is exact
        p_slower, p_faster = float(s.mean <= 0), float(s.mean >= 0)
    numbers = (
        f"{ratio:.3f}x the reference's time over {len(logs)} pairs (95% CI {fmt_interval(ci)}; p = {fmt_p(p_slower)} "
        f"that it is slower, {fmt_p(p_faster)} that it is faster; tolerance {tolerance:.1%} = max(noise "
        f"{noise:.1%}, floor {floor:.0%}))"
    )
    change = ratio - 1
    if change > tolerance and p_slower < ALPHA:
        outcome, failed, sentence = "slower", True, f"is slower by {change:.1%}: {numbers}"
    elif change < 0 and p_faster < ALPHA:
        outcome, failed, sentence = "faster", False, f"is faster by {-change:.1%}: {numbers}"
    elif abs(change) > tolerance:  # a difference beyond the tolerance, not significant (yet): more pairs decide
        word = "slower" if change > 0 else "faster"
        outcome, failed = "inconclusive", False
        sentence = f"is {word} by {abs(change):.1%}, beyond the tolerance but not significantly: {numbers}"
    else:
        outcome, failed = "within tolerance", False
        sentence = f"is not slower beyond the tolerance ({abs(change):.1%} {'slower' if change > 0 else 'faster'}): "
        sentence += numbers
    return Regression(outcome, failed, len(logs), ratio, ci, p_slower, p_faster, noise, tolerance, sentence)


def fmt_interval(ci: tuple[float, float]) -> str:
    return "unbounded" if any(math.isnan(x) for x in ci) else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2g}"


# ------------------------------------------------------------------------------------------------
# One run: the harness in a subprocess, followed through its event log and stopped at the target or the cap


@dataclasses.dataclass
class Stop:
    """When to stop a run: at the target, past a training time, past a step count (None: no such limit)."""

    target: float | None
    cap_s: float | None = None
    steps: int | None = None


@dataclasses.dataclass
class Attempt:
    """One run as measured: where it stopped and why, its time and steps to the target."""

    side: str  # "A" (reference) or "B" (candidate)
    seed: int
    run_dir: str
    status: str  # the record's: finished, or interrupted when this module stopped it
    stopped: str  # target | cap | steps | end (the run ended by itself)
    steps_completed: int
    time_to_target_s: float | None  # None: did not reach the target
    steps_to_target: float | None
    step_time_median_s: float | None  # the referee's clock
    evals: list[list[float]]  # [steps trained, val_bpb] on the monitor rows
    wall_s: float


def follow(proc: subprocess.Popen, events_path: Path, stop: Stop) -> str:
    """Read the run's event log while it runs; SIGTERM it at the first stop condition. Returns the reason."""
    offset, reason, deadline = 0, "end", None
    while proc.poll() is None:
        time.sleep(POLL_S)
        if deadline is not None:
            if time.monotonic() > deadline:
                proc.kill()
                raise CIError(f"the run in {events_path.parent} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
            continue
        if not events_path.is_file():
            continue
        with open(events_path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
        offset += len(complete)
        for line in complete.splitlines():
            event = json.loads(line)
            value = event["value"] if isinstance(event.get("value"), dict) else {}
            trained = value.get("training_time_s")  # the worker's clock: good enough to decide when to stop
            if reason != "end":
                break  # the first condition met decides
            if event["event"] == "val_bpb" and value.get("rows") == "monitor" and stop.target is not None:
                reason = "target" if value["val_bpb"] <= stop.target else reason
            if stop.cap_s is not None and trained is not None and trained > stop.cap_s:
                reason = "cap" if reason == "end" else reason
            if stop.steps is not None and event["event"] == "train_loss" and event["key"] + 1 >= stop.steps:
                reason = "steps" if reason == "end" else reason
        if reason != "end":
            proc.send_signal(signal.SIGTERM)  # the referee stops the worker at its next step and writes the record
            deadline = time.monotonic() + STOP_TIMEOUT_S
    return reason


def run_curves(run_dir: Path) -> tuple[list[tuple[int, float]], list[float], int]:
    """A run's monitor evaluations (steps trained, val_bpb) and the referee's step times with the first step's index."""
    events = read_events(run_dir / "events.jsonl")
    evals = [
        (int(e["key"]), float(e["value"]["val_bpb"]))
        for e in events
        if e["event"] == "val_bpb" and e["value"].get("rows") == "monitor"
    ]
    observed = next((e for e in events if e["event"] == "step_times_observed"), None)
    return evals, (observed["value"] if observed else []), (int(observed["key"]) if observed else 0)


def execute(spec: RunSpec, command: list[str], env: dict, stop: Stop) -> Attempt:
    """Run one side to its stop; return what it measured, or raise CIError naming the log."""
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(spec.log, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            reason = follow(proc, spec.out / "events.jsonl", stop)
        except BaseException:  # Ctrl-C (the run got the SIGINT too) or an error here: let the run end cleanly
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            raise
        code = proc.wait()
    record_path = spec.out / "record.json"
    tail = "\n  ".join(spec.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:])
    if not record_path.is_file():
        raise CIError(
            f"run {spec.out.name} ({spec.submission}) exited with status {code} and wrote no record; its "
            f"log {spec.log} ends with:\n  {tail}"
        )
    try:
        record = Record.read(record_path)
    except RecordError as exc:
        raise CIError(f"run {spec.out.name} ({spec.submission}): {exc}") from None
    if record.status not in ("finished", "interrupted", "diverged"):  # interrupted: stopped here, or by a person
        message = record.error.message if record.error else "no error message"
        raise CIError(
            f"run {spec.out.name} ({spec.submission}) {record.status}: {message}. Full output in {spec.log}:\n  {tail}"
        )
    evals, seconds, first = run_curves(spec.out)
    reached = time_to_target(evals, seconds, first, stop.target) if stop.target is not None else None
    if reached and stop.cap_s is not None and reached[0] > stop.cap_s:
        reached = None  # reached after the cap (a step or two ran while the run stopped): too late
    return Attempt(
        side=spec.side,
        seed=spec.seed,
        run_dir=str(spec.out),
        status=record.status,
        stopped=reason,
        steps_completed=record.steps_completed,
        time_to_target_s=reached[0] if reached else None,
        steps_to_target=reached[1] if reached else None,
        step_time_median_s=statistics.median(seconds) if seconds else None,
        evals=[[s, v] for s, v in evals],
        wall_s=round(time.monotonic() - started, 1),
    )


class Runner:
    """Launches the runs of one job with the proxy's settings, printing a line per run."""

    def __init__(self, args: argparse.Namespace, profile: profiles.Profile, proxy: Proxy, nproc: int, out: Path):
        self.profile, self.proxy, self.nproc, self.out = profile, proxy, nproc, out
        self.extra = ["--no-core", "--eval-every", str(proxy.eval_every)]
        self.extra += ["--max-steps", str(proxy.steps)] if proxy.capped else []
        self.extra += ["--data-dir", str(args.data_dir)] if args.data_dir else []
        self.extra += ["--train-shards", str(args.train_shards)] if args.train_shards else []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if proxy.threads and "OMP_NUM_THREADS" not in os.environ:
            self.env["OMP_NUM_THREADS"] = str(proxy.threads)
        self.done = 0

    def plan(self, reference: str, candidate: str | None, pairs: int, first_pair: int = 0) -> list[RunSpec]:
        """Pairs first_pair.. of the interleaved plan (A B, B A, ...); with no candidate, the reference alone."""
        specs = plan_runs(reference, candidate or reference, [self.proxy.depth], first_pair + pairs, 0, self.out)
        specs = [s for s in specs if s.pair >= first_pair]
        return specs if candidate else [s for s in specs if s.side == "A"]

    def run(self, spec: RunSpec, stop: Stop) -> Attempt:
        command = harness_command(spec, self.profile.name, self.nproc, self.extra)
        attempt = execute(spec, command, self.env, stop)
        self.done += 1
        who = "reference" if spec.side == "A" else "candidate"
        if attempt.time_to_target_s is not None:
            result = (
                f"val_bpb {stop.target:.4f} at step {attempt.steps_to_target:.1f} after "
                f"{attempt.time_to_target_s:.2f} s of training"
            )
        elif stop.target is not None:
            best = min((v for _, v in attempt.evals), default=math.nan)
            result = f"did not reach val_bpb {stop.target:.4f} (best {best:.4f} in {attempt.steps_completed} steps)"
        else:
            result = f"{attempt.steps_completed} steps, val_bpb {attempt.evals[-1][1]:.4f}" if attempt.evals else ""
        why = {
            "target": "stopped at the target",
            "cap": f"stopped at the cap ({stop.cap_s or 0:.1f} s)",
            "steps": f"stopped after {stop.steps} steps",
            "end": f"run {attempt.status}",
        }[attempt.stopped]
        print(f"[{self.done}] {who} seed {spec.seed}: {result} ({why}; {attempt.wall_s:.0f} s wall)", flush=True)
        return attempt


# ------------------------------------------------------------------------------------------------
# The baseline file


def load_baseline(path: Path, profile: profiles.Profile, submission: str | None) -> dict:
    if not path.is_file():
        name = submission or "submissions/climbmix"
        raise CIError(
            f"no baseline at {path}; measure one with python -m harness.ci {name} --profile {profile.name} "
            f"--update-baseline"
        )
    baseline = read_json(path, f"measure it again with python -m harness.ci --profile {profile.name} --update-baseline",
                         CIError)  # fmt: skip
    if baseline.get("schema") != BASELINE_SCHEMA:
        raise CIError(
            f"{path} has schema {baseline.get('schema')!r}, this harness reads {BASELINE_SCHEMA}: measure "
            f"it again with --update-baseline"
        )
    if baseline["machine"]["profile"] != profile.name:
        raise CIError(f"{path} is the {baseline['machine']['profile']} profile's baseline, not {profile.name}'s")
    return baseline


def write_reference(baseline: dict, folder: Path) -> Path:
    """The stored reference submission's files, each checked against its digest, written under ``folder``."""
    try:
        return materialize_sources(Submission.from_json(baseline["reference"]), folder)
    except SystemExit as exc:  # replay's way of refusing; here it is an error of the baseline file
        raise CIError(f"the baseline's reference: {exc}") from None


def paired(reference: dict[int, float], candidate: dict[int, float]) -> list[tuple[float, float]]:
    """(reference, candidate) times of the seeds both sides have, in seed order."""
    return [(reference[seed], candidate[seed]) for seed in sorted(set(reference) & set(candidate))]


def seconds_by_seed(attempts: list[Attempt], side: str) -> dict[int, float]:
    return {a.seed: a.time_to_target_s for a in attempts if a.side == side and a.time_to_target_s is not None}


def drift_rows(baseline: dict, today: dict[int, float], here: dict, floor: float) -> dict:
    """Today's reference runs against the stored repetitions of the same seeds, when hardware and software match."""
    stored = {r["seed"]: r["time_to_target_s"] for r in baseline["repetitions"]}
    mismatches = key_mismatches(baseline["machine"], here)
    pairs = paired(stored, today)
    if mismatches:
        return {"compared": False, "mismatches": mismatches, "pairs": pairs}
    if len(pairs) < 2:
        return {"compared": False, "mismatches": [], "pairs": pairs, "note": "fewer than 2 seeds on both sides"}
    verdict = regression_verdict(pairs, floor)
    return {"compared": True, "mismatches": [], "pairs": pairs, "verdict": dataclasses.asdict(verdict)}


# ------------------------------------------------------------------------------------------------
# The report


def side_summary(times: list[float]) -> str:
    s = summarize(times)
    return f"{s.mean:.2f} ± {s.sd:.2f}" if s.n > 1 else f"{s.mean:.2f}"


def markdown(title: str, headline: str | None, target: dict, columns: dict[str, list[dict]], notes: list[str]) -> str:
    """The summary: the verdict, the target, then per column (reference, candidate; or stored, today) its runs."""
    lines = [f"## {title}", ""] + ([headline, ""] if headline else [])
    lines += [
        f"Target: val_bpb {target['val_bpb']:.4f} on the monitor rows, which the reference reaches at step "
        f"{target['step']} of its {target['proxy_steps']}-step proxy run (mean of {target['repetitions']} stored "
        "runs).",
        "",
    ]
    runs = list(columns.values())

    def summary(key: str) -> list[str]:
        values = [[r[key] for r in column if r.get(key) is not None] for column in runs]
        return [side_summary(v) if v else "-" for v in values]

    rows = [
        ["runs (seeds)", *(f"{len(c)} ({', '.join(str(r['seed']) for r in c)})" for c in runs)],
        ["time to target (s, mean ± sd)", *summary("time_to_target_s")],
        ["steps to target", *summary("steps_to_target")],
        ["median step time (s)", *summary("step_time_median_s")],
    ]
    first, last = ({r["seed"]: r.get("time_to_target_s") for r in c} for c in (runs[0], runs[-1]))
    pairs = paired(*({k: v for k, v in side.items() if v is not None} for side in (first, last)))
    blank = [""] * (len(runs) - 1)
    if pairs:
        rows.append(["time ratio to the first column, by seed", *blank, ", ".join(f"{b / a:.3f}" for a, b in pairs)])
    missed = [str(seed) for seed, t in last.items() if t is None]
    if missed:
        rows.append(["did not reach the target", *blank, f"seeds {', '.join(missed)}"])
    lines.append(markdown_table(["", *columns], rows))
    return "\n".join([*lines, "", *notes]) + "\n"


def drift_note(drift: dict) -> str:
    """One sentence on today's reference against its stored runs (or why they were not compared)."""
    if drift["compared"]:
        sentence = f"today's reference, against its stored runs of the same seeds, {drift['verdict']['sentence']}."
        return sentence[0].upper() + sentence[1:] if drift["gating"] else f"Drift (information): {sentence}"
    if drift["mismatches"]:
        differences = "; ".join(drift["mismatches"])
        return f"Drift: not compared, the stored baseline is from other hardware or software ({differences})."
    return f"Drift: not compared ({drift.get('note', '')})."


# ------------------------------------------------------------------------------------------------


def default_out(name: str) -> Path:
    return Path("runs") / "ci" / f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}_{name}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        profile = profiles.resolve_profile(args.profile)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    started = time.monotonic()
    try:
        if args.update_baseline:
            return update_baseline(args, profile)
        return check(args, profile, started)
    except CIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def setup(args: argparse.Namespace, profile: profiles.Profile, name: str) -> tuple[int, dict, Path]:
    nproc = args.nproc or profile.world_size or 1
    out = args.out or default_out(name)
    if out.exists() and any(out.iterdir()):
        raise CIError(f"{out} already holds files; pass --out to a new folder (or delete that one)")
    out.mkdir(parents=True, exist_ok=True)
    return nproc, machine_key(profile, nproc), out


def update_baseline(args: argparse.Namespace, profile: profiles.Profile) -> int:
    """Run the reference REPEATS times over the whole proxy run; store its target, times and sources."""
    try:
        folder = locate_submission(args.submission)
        reference = describe_folder(folder)
    except SubmissionError as exc:
        raise CIError(str(exc)) from exc
    default = PROXY[profile.name]
    proxy = Proxy(
        steps=args.steps or default.steps,
        fraction=args.fraction or default.fraction,
        eval_every=args.eval_every or default.eval_every,
        floor=default.floor,
        depth=args.depth or default.depth,
        capped=default.capped,
        threads=default.threads,
    )
    if proxy.problems():
        raise CIError("; ".join(proxy.problems()))
    nproc, here, out = setup(args, profile, reference["name"])
    runner = Runner(args, profile, proxy, nproc, out)
    specs = runner.plan(str(folder), None, args.repeats or REPEATS)
    print(f"baseline of {reference['name']} on {profile.name}: {len(specs)} runs of {proxy.steps} steps", flush=True)
    runs = [runner.run(spec, Stop(target=None, steps=None if proxy.capped else proxy.steps)) for spec in specs]
    at_target_step = []
    for attempt in runs:
        value = dict((int(s), v) for s, v in attempt.evals).get(proxy.target_step)
        if value is None:
            raise CIError(
                f"run {attempt.run_dir} has no evaluation at step {proxy.target_step} (it made "
                f"{attempt.steps_completed} steps)"
            )
        at_target_step.append(value)
    target = statistics.fmean(at_target_step)
    repetitions = []
    for attempt, value in zip(runs, at_target_step, strict=True):
        reached = time_to_target(*run_curves(Path(attempt.run_dir)), target)
        if reached is None:
            raise CIError(
                f"seed {attempt.seed} never reached the mean target {target:.4f} in its proxy run: lengthen "
                f"the run (--steps) or lower the fraction"
            )
        repetitions.append(
            {
                "seed": attempt.seed,
                "time_to_target_s": reached[0],
                "steps_to_target": reached[1],
                "val_bpb_at_target_step": value,
                "step_time_median_s": attempt.step_time_median_s,
                "evals": attempt.evals,
            }
        )
    baseline = {
        "schema": BASELINE_SCHEMA,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reference": {k: v for k, v in reference.items() if k in ("name", "source_digest", "files", "sources")},
        "proxy": {**dataclasses.asdict(proxy), "nproc": nproc},
        "target": {
            "val_bpb": target,
            "rows": "monitor",
            "step": proxy.target_step,
            "proxy_steps": proxy.steps,
            "repetitions": len(runs),
        },
        "harness": harness_provenance(),
        "machine": here,
        "fingerprint": profiles.fingerprint(),
        "repetitions": repetitions,
    }
    path = args.baseline or BASELINE_DIR / f"{profile.name}.json"
    atomic_write_json(path, baseline)
    times = summarize([r["time_to_target_s"] for r in repetitions])
    print(
        f"baseline: {path}: target val_bpb {target:.4f} (step {proxy.target_step} of {proxy.steps}, spread "
        f"{min(at_target_step):.4f}-{max(at_target_step):.4f}); time to target {times.mean:.2f} ± {times.sd:.2f} s"
    )
    return EXIT_PASS


def check(args: argparse.Namespace, profile: profiles.Profile, started: float) -> int:
    """The A/B check (or, with --drift, the reference alone against its stored times)."""
    path = args.baseline or BASELINE_DIR / f"{profile.name}.json"
    baseline = load_baseline(path, profile, args.submission)
    proxy = Proxy(**{k: v for k, v in baseline["proxy"].items() if k != "nproc"})
    name = Path(args.submission).name if args.submission else f"drift_{baseline['reference']['name']}"
    nproc, here, out = setup(args, profile, name)
    if nproc != baseline["proxy"]["nproc"]:
        raise CIError(
            f"{nproc} processes per run, but the baseline's target was measured with {baseline['proxy']['nproc']}"
        )
    mismatches = key_mismatches(baseline["machine"], here)
    if args.drift and mismatches:
        text = (
            f"## harness.ci drift on {profile.name}: not compared\n\n{path} was measured on other hardware or "
            "software:\n\n" + "\n".join(f"- {m}" for m in mismatches) + "\n\nMeasure a baseline here with "
            "--update-baseline, in its own reviewed commit.\n"
        )
        print(text)
        atomic_write_json(
            out / "ci.json",
            {"verdict": "mismatch", "exit_code": EXIT_MISMATCH, "mismatches": mismatches, "markdown": text},
        )
        return EXIT_MISMATCH
    reference = args.reference or str(write_reference(baseline, out / "reference"))
    target = baseline["target"]
    runner = Runner(args, profile, proxy, nproc, out)
    candidate = None if args.drift else args.submission
    attempts: list[Attempt] = []

    def reference_times() -> list[float]:
        return list(seconds_by_seed(attempts, "A").values())

    def run_pairs(first: int, count: int) -> bool:
        """Run pairs first.. in plan order; False as soon as a candidate run misses the target (the check fails)."""
        for spec in runner.plan(reference, candidate, count, first):
            if spec.side == "A":
                attempt = runner.run(spec, Stop(target["val_bpb"], steps=proxy.steps))
                if attempt.time_to_target_s is None:
                    raise CIError(
                        f"the reference did not reach the baseline's target val_bpb {target['val_bpb']:.4f} "
                        f"within {proxy.steps} steps ({attempt.run_dir}): torch or the harness changed its "
                        f"training; measure the baseline again with --update-baseline"
                    )
            else:
                cap = CAP * max(reference_times())
                attempt = runner.run(spec, Stop(target["val_bpb"], cap_s=cap, steps=STEP_LIMIT * proxy.steps))
            attempts.append(attempt)
            if attempt.side == "B" and attempt.time_to_target_s is None:
                return False
        return True

    pairs = (args.repeats or args.pairs) if args.drift else args.pairs
    print(
        f"harness.ci: {candidate or 'drift of the reference'} on {profile.name}: target val_bpb "
        f"{target['val_bpb']:.4f}, {pairs} {'runs' if args.drift else 'pairs'}, runs in {out / 'runs'}",
        flush=True,
    )
    verdict = None
    if args.drift:
        run_pairs(0, pairs)
    else:
        reached, done = run_pairs(0, pairs), pairs
        while True:
            pairs_done = paired(seconds_by_seed(attempts, "A"), seconds_by_seed(attempts, "B"))
            verdict = regression_verdict(pairs_done, proxy.floor, unreached=0 if reached else 1)
            more = min(2, args.max_pairs - done)  # two at a time: both orders again
            if verdict.outcome != "inconclusive" or more < 1:
                break
            budget, run_s = BUDGET_S.get(profile.name), statistics.fmean(a.wall_s for a in attempts)
            if budget and time.monotonic() - started + 2 * more * run_s > budget:
                print(f"the candidate {verdict.sentence}; no time for more pairs within {budget / 60:.0f} minutes")
                break
            print(f"the candidate {verdict.sentence}; {more} more pair(s), up to {args.max_pairs}", flush=True)
            reached, done = run_pairs(done, more), done + more
    drift = {**drift_rows(baseline, seconds_by_seed(attempts, "A"), here, proxy.floor), "gating": args.drift}
    elapsed = time.monotonic() - started
    ref = baseline["reference"]
    source = f"from {args.reference}" if args.reference else f"stored in {path}"
    setting = (
        f"depth {proxy.depth or 'of each submission'}, "
        f"{f'planned for {proxy.steps} steps' if proxy.capped else 'its own schedule'}"
    )
    today = [dataclasses.asdict(a) for a in attempts if a.side == "A"]
    order = "Runs with" if args.drift else "Runs interleaved A B, B A, ... with"
    run_line = f"{order} seeds 0, 1, ... ({setting}): {len(attempts)} runs in {elapsed / 60:.1f} min."
    rule = (f"slower by more than max(noise, floor {proxy.floor:.0%}) with p < {ALPHA:.2g} (a paired t-test on the "
            f"log time ratios of runs with the same seed, harness/stats.py)")  # fmt: skip
    clock = (f"Times are training seconds by the referee's clock, interpolated between evaluations every "
             f"{proxy.eval_every} steps.")  # fmt: skip
    if args.drift:
        failed = drift["compared"] and drift["verdict"]["failed"]
        title = f"harness.ci drift of {ref['name']} on {profile.name}: {'FAIL' if failed else 'PASS'}"
        headline = f"**{'FAIL' if failed else 'PASS'}**: " + drift_note(drift)
        columns = {f"stored {baseline['measured_at']}": baseline["repetitions"], "today": today}
        notes = [f"Rule: fail when today's reference, against its stored runs of the same seeds, is {rule}. {clock}",
                 f"Reference: {ref['name']} (source {ref['source_digest'][:12]}, {source}). {run_line}"]  # fmt: skip
    else:
        failed = verdict.failed
        title = f"harness.ci: {name} on {profile.name}: {'FAIL' if failed else 'PASS'}"
        headline = f"**{'FAIL' if failed else 'PASS'}**: the candidate {verdict.sentence}."
        columns = {"reference (A)": today, "candidate (B)": [dataclasses.asdict(a) for a in attempts if a.side == "B"]}
        notes = [
            f"Rule: fail when a candidate run misses the target within {CAP:g}x the slowest reference run's time, or "
            f"when the candidate is {rule}. {clock}",
            f"Reference: {ref['name']} (source {ref['source_digest'][:12]}, {source}). {run_line}",
            drift_note(drift),
        ]
    text = markdown(title, headline, target, columns, notes)
    print(text)
    code = EXIT_REGRESSION if failed else EXIT_PASS
    result = {
        "verdict": "fail" if failed else "pass",
        "exit_code": code,
        "submission": args.submission,
        "profile": profile.name,
        "baseline": str(path),
        "target": target,
        "rule": {"cap": CAP, "floor": proxy.floor, "alpha": ALPHA},
        "outcome": dataclasses.asdict(verdict) if verdict else None,
        "drift": drift,
        "runs": [dataclasses.asdict(a) for a in attempts],
        "elapsed_s": round(elapsed, 1),
        "markdown": text,
    }
    atomic_write_json(out / "ci.json", result)
    print(f"ci: {out / 'ci.json'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
