"""Regression check of time-to-GPT-2: a short proxy run of a submission, projected to its whole plan and compared
with a stored baseline for the profile. Answers "did this change make the speedrun slower?" in minutes.

    python -m harness.ci submissions/climbmix                                 # check against leaderboard/ci/cpu.json
    python -m harness.ci submissions/climbmix --update-baseline               # measure 5 repetitions, store them
    python -m harness.ci submissions/climbmix --profile 8xh100                # on the node: 8 processes (torchrun)
    python -m harness.ci submissions/climbmix --baseline /tmp/b.json --out /tmp/ci

How it works (docs/ci.md has the reasoning and what the projection means on each profile):
1. Proxy run: ``python -m harness.run SUBMISSION --max-steps N --no-core`` (torchrun when the profile needs
   several processes); the harness is the only clock. Its event log lists every timed step's duration.
2. Steady-state step time = the median (on CPU: a low quantile) of the timed steps after the first SKIP; fixed
   costs = what those first steps took beyond the steady step time.
3. Projection = fixed costs + steady step time x the submission's *uncapped* planned steps, which this module
   gets by calling the submission's own build_model (on the meta device: no memory, no compute) and
   plan_training with no step cap, at the profile's configuration.
4. Baseline (``leaderboard/ci/<profile>.json``): REPEATS repetitions with seeds 0, 1, ...; a check runs seed 0
   and fails when the projection exceeds the baseline mean by more than max(K_SIGMA x sd/mean, TIME_FLOOR),
   or when the training loss at a fixed step (mean over a window of steps) exceeds the baseline mean by more
   than max(K_SIGMA x sd, LOSS_FLOOR). sd is the baseline repetitions' own run-to-run standard deviation.
   A timing failure must reproduce in the profile's CONFIRM more runs (noise only adds time; the fastest counts).

Exit status: 0 pass; 1 regression; 2 error (bad arguments, a failed run, no baseline); 3 the baseline was measured
on other hardware or software (reported, not compared). Prints a markdown summary and writes ``ci.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from harness import profiles
from harness.clock import read_events
from harness.fileio import atomic_write_json
from harness.hookspecs import Run
from harness.plugins import SubmissionError, load_submission
from harness.record import REPO_ROOT, harness_provenance
from harness.stats import summarize
from harness.tokenizer import SPECIAL_TOKENS

BASELINE_DIR = REPO_ROOT / "leaderboard" / "ci"
BASELINE_SCHEMA = 1
EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR, EXIT_MISMATCH = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Proxy:
    """The proxy run on one profile: how many steps, at which depth, and how many first steps are not steady."""

    steps: int
    skip: int  # first timed steps left out of the steady state (allocator, caches, CUDA graphs settling)
    depth: int | None = None  # None: the profile's depth, else the submission's own
    time_floor: float = 0.02  # smallest relative tolerance on the projection, whatever the baseline noise
    quantile: float = 0.5  # the steady step time is this quantile of the steady steps' times
    confirm: int = 1  # a timing regression must reproduce in this many more runs before it fails the check


PROXY = {
    # A few hundred real steps of the record configuration: about 2 minutes of training on the node.
    "8xh100": Proxy(steps=300, skip=10, time_floor=0.02),
    # One GPU: d12 is the scaled configuration (d24 needs 32 micro-steps a step on one GPU).
    "gpu": Proxy(steps=100, skip=10, depth=12, time_floor=0.03),
    # The smoke profile on a shared 2-core machine, where a neighbour's work stretches steps up to 10x (measured:
    # 0.74 s quiet, 3-9 s contended, in one run; docs/ci.md). Contention only ever adds time, so the 10th
    # percentile of the step times estimates the machine's own speed, and a failure must reproduce twice more.
    "cpu": Proxy(steps=30, skip=3, time_floor=0.25, quantile=0.1, confirm=2),
}
PROJECTION_MEANING = {
    "8xh100": "On 8xH100 this is the submission's own time-to-GPT-2 (training time, as the harness clocks it).",
    "gpu": "On one GPU it is the training time of the scaled configuration (see --depth) to its own horizon: a "
    "relative signal, not the 8xH100 time.",
    "cpu": "On CPU it is the smoke configuration (profile depth, 4,096-token steps) trained to its uncapped "
    "horizon: a relative signal only; GPT-2 is never reached on CPU.",
}

REPEATS = 5  # baseline repetitions (seeds 0..4): enough for a run-to-run standard deviation
K_SIGMA = 3.0  # tolerance in baseline standard deviations, for both the projection and the loss
LOSS_FLOOR = 0.05  # nats: smallest loss tolerance (same-seed runs can agree to the last digit: sd = 0)
LOSS_FRACTIONS = (0.25, 0.5, 1.0)  # loss is checked at these fractions of the proxy run's steps
LOSS_WINDOW = 0.1  # ... as the mean loss over the last 10% of the steps up to there (one batch is noisy)
# What must match for a comparison to mean anything; anything else (hostname, Python patch) may differ.
FINGERPRINT_KEYS = ("profile", "device", "device_count", "world_size", "torch", "cuda")


class CIError(Exception):
    """The check could not be made (bad arguments, a failed run, a missing baseline): exit 2 with the message."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.ci", description=__doc__.split("\n\n")[0])
    p.add_argument("submission", help="submission folder (holding submission.py) or entry-point name")
    p.add_argument("--profile", default="auto", choices=["auto", *profiles.PROFILES], help="hardware profile")
    p.add_argument("--baseline", type=Path, help="baseline JSON (default leaderboard/ci/<profile>.json)")
    p.add_argument("--update-baseline", action="store_true", help="measure the baseline and write it")
    p.add_argument("--steps", type=int, help="proxy run length in steps (baseline only; a check uses the baseline's)")
    p.add_argument("--depth", type=int, help="model depth of the proxy run (baseline only; default: the profile's)")
    p.add_argument("--repeats", type=int, help=f"runs to measure (default {REPEATS} for a baseline, 1 for a check)")
    p.add_argument("--nproc", type=int, help="processes (GPUs) per run (default: the profile's world size, else 1)")
    p.add_argument("--out", type=Path, help="folder for the proxy runs and ci.json (default runs/ci/<time>_<name>)")
    p.add_argument(
        "--confirm", type=int, help="extra runs that must reproduce a timing regression (default: the profile's)"
    )
    p.add_argument("--data-dir", type=Path, help="passed to harness.run (dataset shards folder)")
    p.add_argument("--train-shards", type=int, help="passed to harness.run (shards that must be present)")
    args = p.parse_args(argv)
    for name in ("steps", "depth", "repeats", "nproc", "train_shards", "confirm"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "confirm" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not args.update_baseline and (args.steps or args.depth):
        p.error("--steps and --depth describe a new baseline: a check always repeats the baseline's configuration")
    return args


# ------------------------------------------------------------------------------------------------
# The hardware and software a measurement belongs to


def machine_key(profile: profiles.Profile, world_size: int) -> dict:
    """The parts of the fingerprint that move step times: device model and count, world size, torch, CUDA."""
    fp = profiles.fingerprint()
    gpus = sorted({gpu["name"] for gpu in fp["gpus"]})
    return {
        "profile": profile.name,
        "device": ", ".join(gpus) if profile.device_type == "cuda" else fp["cpu_model"],
        "device_count": fp["gpu_count"] if profile.device_type == "cuda" else fp["cpu_count"],
        "world_size": world_size,
        "torch": fp["torch"],
        "cuda": fp.get("cuda"),
    }


def key_mismatches(baseline_key: dict, here: dict) -> list[str]:
    return [
        f"{k}: baseline {baseline_key.get(k)!r}, here {here.get(k)!r}"
        for k in FINGERPRINT_KEYS
        if baseline_key.get(k) != here.get(k)
    ]


# ------------------------------------------------------------------------------------------------
# One proxy run: the harness in a subprocess, then its record and event log


def harness_command(args, profile: profiles.Profile, nproc: int, steps: int, depth: int | None, seed: int, out: Path):
    launcher = [sys.executable, "-m", "harness.run"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launcher += ["-m", "harness.run"]
    cmd = [*launcher, args.submission, "--profile", profile.name, "--max-steps", str(steps), "--no-core"]
    cmd += ["--seed", str(seed), "--out", str(out)]
    cmd += ["--depth", str(depth)] if depth else []
    cmd += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    cmd += ["--train-shards", str(args.train_shards)] if args.train_shards else []
    return cmd


def run_harness(cmd: list[str], out: Path) -> tuple[int, float]:
    """Run the harness with its output in ``out/harness.log``; return its exit code and peak host memory (GB).

    os.wait4 gives this child's own resource usage (the largest resident set among it and its children).
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "harness.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return proc.returncode, usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def window_loss(curve: dict[int, float], step: int, window: int) -> float:
    """Mean training loss over the logged steps in (step - window, step] (0-based steps, so step - 1 is the last)."""
    values = [loss for s, loss in curve.items() if step - window <= s < step]
    if not values:
        raise CIError(f"the run logged no training loss between steps {step - window} and {step}")
    return statistics.fmean(values)


def loss_steps(steps: int) -> tuple[list[int], int]:
    """The fixed steps the loss is checked at, and the window each is averaged over."""
    window = max(1, round(LOSS_WINDOW * steps))
    return sorted({max(window, round(f * steps)) for f in LOSS_FRACTIONS}), window


def measure(args, profile, cfg: dict, seed: int, out: Path) -> dict:
    """One proxy run: steady step time, fixed costs, tokens/s, loss at the fixed steps, peak memory."""
    skip = cfg["skip"]
    cmd = harness_command(args, profile, cfg["nproc"], cfg["steps"], cfg["depth"], seed, out)
    print(f"proxy run (seed {seed}): {' '.join(cmd)}", flush=True)
    code, peak_rss_gb = run_harness(cmd, out)
    record_path = out / "record.json"
    if code != 0 or not record_path.is_file():
        tail = (out / "harness.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise CIError(f"the proxy run failed (exit {code}); its log is {out / 'harness.log'}:\n{tail}")
    record = json.loads(record_path.read_text())
    if record["steps_completed"] <= skip:
        raise CIError(f"the proxy run made {record['steps_completed']} steps, not more than the {skip} left out")
    times = next((e["value"] for e in read_events(out / "events.jsonl") if e["event"] == "step_times"), None)
    if times is None:
        raise CIError(f"{out / 'events.jsonl'} has no step_times event: the harness predates harness.ci")
    steady = float(np.quantile(times[skip:], cfg["quantile"]))
    planned_steps, total_batch_tokens = planned_plan(args.submission, profile, record)
    fixed_s = max(0.0, sum(times[:skip]) - skip * steady)
    curve = {int(s): float(loss) for s, loss in record["loss_curve"]}
    at, window = loss_steps(record["steps_completed"])
    return {
        "seed": seed,
        "run_dir": str(out),
        "steps": record["steps_completed"],
        "planned_steps": planned_steps,
        "total_batch_tokens": total_batch_tokens,
        "step_time_s": steady,
        "step_time_median_s": statistics.median(times[skip:]),
        "fixed_cost_s": fixed_s,
        "projected_s": fixed_s + steady * planned_steps,
        "tokens_per_s": total_batch_tokens / steady,
        "training_time_s": record["training_time_s"],
        "loss_window": window,
        "loss_at": {str(s): window_loss(curve, s, window) for s in at},
        "peak_gpu_memory_gb": record["metrics"].get("peak_memory_gb"),
        "peak_host_memory_gb": peak_rss_gb,
        "record_plan": record["plan"],
    }


def planned_plan(submission_ref: str, profile: profiles.Profile, record: dict) -> tuple[int, int]:
    """The submission's own plan for this run with no step cap: (planned steps, tokens per step).

    The model is built on the meta device (shapes only), so this costs well under a second even at d24. The run's
    other settings (depth, vocabulary, batch cap, world size) are the proxy run's, read from its record.
    """
    try:
        submission = load_submission(submission_ref)
    except SubmissionError as exc:
        raise CIError(str(exc)) from exc
    vocab = record["tokenizer"]["vocab_size"]
    run = Run(
        profile=profile.name,
        device="meta",
        dtype=record["run"]["dtype"],
        rank=0,
        local_rank=0,
        world_size=record["run"]["world_size"],
        seed=record["run"]["seed"],
        vocab_size=vocab,
        bos_token_id=vocab - len(SPECIAL_TOKENS),
        seq_len=profile.seq_len,
        depth=record["run"]["depth"],
        max_steps=None,
        max_batch_tokens=profile.max_batch_tokens,
    )
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # e.g. "fp8 requested but meta has no fp8 matmuls": shapes only here
            model = submission.hook.build_model(run=run)
            plan = submission.hook.plan_training(model=model, run=run)
    except Exception as exc:  # noqa: BLE001 - a submission's build_model may not support the meta device
        raise CIError(
            f"could not plan {submission.name} without a step cap on the meta device ({type(exc).__name__}: {exc}); "
            f"build_model must create its parameters on run.device and avoid data-dependent work at build time"
        ) from exc
    ran = record["plan"]
    if plan.total_batch_tokens != ran["total_batch_tokens"] or plan.num_steps < ran["num_steps"]:
        raise CIError(
            f"the uncapped plan ({plan.num_steps} steps of {plan.total_batch_tokens} tokens) does not extend the "
            f"proxy run's ({ran['num_steps']} steps of {ran['total_batch_tokens']} tokens); a plan's batch must "
            f"not depend on the step cap"
        )
    return plan.num_steps, plan.total_batch_tokens


# ------------------------------------------------------------------------------------------------
# Comparison against the baseline


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and run-to-run standard deviation (0 for one value) of the baseline's repetitions."""
    s = summarize(values)
    return s.mean, 0.0 if math.isnan(s.sd) else s.sd


def compare(baseline: dict, runs: list[dict]) -> list[dict]:
    """The gating checks (projection, loss at each fixed step) and informational rows, each a dict."""
    reps = baseline["repetitions"]
    floor = baseline["config"]["time_floor"]
    rows = []
    base_mean, base_sd = spread([r["projected_s"] for r in reps])
    cand = statistics.fmean(r["projected_s"] for r in runs)
    tolerance = max(K_SIGMA * base_sd / base_mean, floor)
    change = cand / base_mean - 1
    ok = change <= tolerance
    rows.append(
        {
            "name": "projected time-to-target",
            "gating": True,
            "baseline": base_mean,
            "baseline_sd": base_sd,
            "value": cand,
            "change": change,
            "tolerance": tolerance,
            "ok": ok,
            "unit": "h",
            "message": (
                f"projected time-to-target {'regressed' if change > 0 else 'changed'} by {change:+.1%} "
                f"(tolerance {tolerance:.1%}): {cand / 3600:.3f} h against the baseline's {base_mean / 3600:.3f} h "
                f"({(cand - base_mean) / 3600:+.3f} h over {runs[0]['planned_steps']:,} planned steps)"
            ),
        }
    )
    for key, name in (
        ("step_time_s", "steady step time"),
        ("tokens_per_s", "tokens/s"),
        ("fixed_cost_s", "fixed costs"),
        ("peak_gpu_memory_gb", "peak GPU memory"),
        ("peak_host_memory_gb", "peak host memory"),
    ):
        base_values = [r[key] for r in reps if r.get(key) is not None]
        values = [r[key] for r in runs if r.get(key) is not None]
        if not base_values or not values:
            continue
        mean, sd = spread(base_values)
        value = statistics.fmean(values)
        rows.append(
            {
                "name": name,
                "gating": False,
                "baseline": mean,
                "baseline_sd": sd,
                "value": value,
                "change": value / mean - 1 if mean else float("nan"),
                "tolerance": None,
                "ok": True,
                "unit": {"step_time_s": "s", "fixed_cost_s": "s", "tokens_per_s": "tok/s"}.get(key, "GB"),
            }
        )
    for step in sorted(baseline["config"]["loss_steps"]):
        base_mean, base_sd = spread([r["loss_at"][str(step)] for r in reps])
        if any(str(step) not in r["loss_at"] for r in runs):
            raise CIError(f"the proxy run has no loss at step {step}; the baseline's configuration was not repeated")
        value = statistics.fmean(r["loss_at"][str(step)] for r in runs)
        band = max(K_SIGMA * base_sd, LOSS_FLOOR)
        ok = value - base_mean <= band
        window = baseline["config"]["loss_window"]
        rows.append(
            {
                "name": f"loss at step {step} (mean of steps {step - window + 1}-{step})",
                "gating": True,
                "baseline": base_mean,
                "baseline_sd": base_sd,
                "value": value,
                "change": value - base_mean,
                "tolerance": band,
                "ok": ok,
                "unit": "nats",
                "message": f"loss at step {step} is {value:.4f} against the baseline's {base_mean:.4f} "
                f"({value - base_mean:+.4f} nats; noise band {band:.4f})",
            }
        )
    return rows


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "h":
        return f"{value / 3600:.3f} h"
    if unit == "tok/s":
        return f"{value:,.0f} tok/s"
    if unit == "s":
        return f"{value:.4f} s"
    return f"{value:.4f} {unit}"


def markdown(title: str, rows: list[dict], notes: list[str]) -> str:
    lines = [f"## {title}", "", "| metric | baseline (mean ± sd) | this run | change | tolerance | verdict |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        relative = r["unit"] != "nats"
        change = f"{r['change']:+.1%}" if relative else f"{r['change']:+.4f}"
        tolerance = (
            "-" if r["tolerance"] is None else (f"{r['tolerance']:.1%}" if relative else f"{r['tolerance']:.4f}")
        )
        verdict = ("ok" if r["ok"] else "**REGRESSION**") if r["gating"] else "info"
        base = f"{fmt(r['baseline'], r['unit'])} ± {fmt(r['baseline_sd'], r['unit']).split(' ')[0]}"
        lines.append(f"| {r['name']} | {base} | {fmt(r['value'], r['unit'])} | {change} | {tolerance} | {verdict} |")
    return "\n".join([*lines, "", *notes]) + "\n"


# ------------------------------------------------------------------------------------------------


def default_out(name: str) -> Path:
    return Path("runs") / "ci" / f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}_{name}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return check(args)
    except CIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def check(args: argparse.Namespace) -> int:
    # ---- profile, machine, baseline: a baseline from other hardware is reported, never compared
    try:
        profile = profiles.resolve_profile(args.profile)
    except ValueError as exc:
        raise CIError(str(exc)) from exc
    proxy = PROXY[profile.name]
    nproc = args.nproc or profile.world_size or 1
    here = machine_key(profile, nproc)
    baseline_path = args.baseline or BASELINE_DIR / f"{profile.name}.json"
    name = Path(args.submission).name
    out = args.out or default_out(name)
    baseline = None
    if not args.update_baseline:
        if not baseline_path.is_file():
            raise CIError(
                f"no baseline at {baseline_path}; measure one on this machine with "
                f"python -m harness.ci {args.submission} --profile {profile.name} --update-baseline"
            )
        baseline = json.loads(baseline_path.read_text())
        if baseline.get("schema") != BASELINE_SCHEMA:
            raise CIError(f"{baseline_path} has schema {baseline.get('schema')!r}, expected {BASELINE_SCHEMA}")
        problems = key_mismatches(baseline["machine"], here)
        if problems:
            text = (
                f"## harness.ci: {name} on {profile.name}: baseline from other hardware or software, not compared\n\n"
                f"{baseline_path} was measured on a different machine:\n\n"
                + "\n".join(f"- {p}" for p in problems)
                + f"\n\nMeasure a baseline here with --update-baseline (and --baseline FILE to keep {baseline_path}).\n"
            )
            print(text)
            atomic_write_json(
                out / "ci.json",
                {"verdict": "mismatch", "exit_code": EXIT_MISMATCH, "mismatches": problems, "markdown": text},
            )
            return EXIT_MISMATCH
        if args.nproc and args.nproc != baseline["config"]["nproc"]:
            raise CIError(f"--nproc {args.nproc} differs from the baseline's {baseline['config']['nproc']}")

    # ---- the proxy runs: the baseline's configuration when checking, the profile's when measuring one
    if baseline:
        cfg = baseline["config"]
        seeds = cfg["seeds"][:1] + [max(cfg["seeds"]) + 1 + i for i in range((args.repeats or 1) - 1)]
    else:
        cfg = {
            "steps": args.steps or proxy.steps,
            "depth": args.depth or proxy.depth,
            "skip": proxy.skip,
            "quantile": proxy.quantile,
            "nproc": nproc,
        }
        seeds = list(range(args.repeats or REPEATS))
        if cfg["steps"] <= cfg["skip"] + 1:
            raise CIError(f"--steps {cfg['steps']} leaves no steady state after the first {cfg['skip']} steps")
    runs = [measure(args, profile, cfg, seed, out / f"seed{seed}") for seed in seeds]

    # ---- a new baseline: store every repetition, so the check can derive its tolerance from their spread
    if args.update_baseline:
        at, window = loss_steps(runs[0]["steps"])
        cfg = {**cfg, "seeds": seeds, "time_floor": proxy.time_floor, "k_sigma": K_SIGMA, "loss_floor": LOSS_FLOOR}
        baseline = {
            "schema": BASELINE_SCHEMA,
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "submission": {"name": name, "ref": args.submission},
            "harness": harness_provenance(),
            "machine": here,
            "fingerprint": profiles.fingerprint(),
            "config": {**cfg, "loss_steps": at, "loss_window": window},
            "repetitions": [{k: v for k, v in r.items() if k not in ("run_dir", "record_plan")} for r in runs],
        }
        atomic_write_json(baseline_path, baseline)
        mean, sd = spread([r["projected_s"] for r in runs])
        tolerance = max(K_SIGMA * sd / mean, proxy.time_floor)
        print(
            f"baseline: {baseline_path} ({len(runs)} repetitions of {cfg['steps']} steps): projected "
            f"{mean / 3600:.3f} h ± {sd / mean:.1%} run to run; checks will tolerate {tolerance:.1%}"
        )
        if K_SIGMA * sd / mean > proxy.time_floor:
            print(
                f"warning: run-to-run noise sets the tolerance above the {proxy.time_floor:.0%} floor; a quieter "
                "machine gives a sharper check"
            )
        return EXIT_PASS

    # ---- the verdict; a timing failure is confirmed by more runs (noise only ever adds time: the fastest counts)
    rows = compare(baseline, runs)
    confirm = proxy.confirm if args.confirm is None else args.confirm
    for attempt in range(1, confirm + 1):
        if rows[0]["ok"]:
            break
        print(f"{rows[0]['message']}; confirming with another run ({attempt} of {confirm})", flush=True)
        again = [measure(args, profile, cfg, seed, out / f"seed{seed}_confirm{attempt}") for seed in seeds]
        if statistics.fmean(r["projected_s"] for r in again) < statistics.fmean(r["projected_s"] for r in runs):
            runs = again
        rows = compare(baseline, runs)
    failures = [r["message"] for r in rows if r["gating"] and not r["ok"]]
    verdict = "FAIL" if failures else "PASS"
    base_sub = baseline["submission"]
    quantile = "median" if cfg["quantile"] == 0.5 else f"{cfg['quantile']:.0%} quantile"
    notes = [
        f"Projection: fixed costs + steady step time ({quantile} of the steps after the first {cfg['skip']}) x "
        f"{runs[0]['planned_steps']:,} planned steps of {runs[0]['total_batch_tokens']:,} tokens, from a "
        f"{cfg['steps']}-step proxy run at seed {seeds[0]}. {PROJECTION_MEANING[profile.name]}",
        f"Baseline: {baseline_path}, {len(baseline['repetitions'])} repetitions of {base_sub['name']} measured "
        f"{baseline['measured_at']} at harness {str(baseline['harness'].get('commit'))[:12]}.",
        *(f"**FAIL**: {m}" for m in failures),
    ]
    if base_sub["name"] != name:
        notes.append(f"Note: the baseline is of {base_sub['name']}, this run of {name}.")
    text = markdown(f"harness.ci: {name} on {profile.name}: {verdict}", rows, notes)
    print(text)
    code = EXIT_REGRESSION if failures else EXIT_PASS
    atomic_write_json(
        out / "ci.json",
        {
            "verdict": verdict.lower(),
            "exit_code": code,
            "submission": name,
            "profile": profile.name,
            "baseline": str(baseline_path),
            "failures": failures,
            "checks": rows,
            "runs": runs,
            "markdown": text,
        },
    )
    print(f"ci: {out / 'ci.json'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
