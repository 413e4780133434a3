"""Run a submission end to end under the harness's clock and write its record.

    python -m harness.run submissions/climbmix                       # auto profile: cpu smoke run here
    python -m harness.run submissions/climbmix --profile cpu --depth 4 --seed 1 --out /tmp/r1
    torchrun --nproc_per_node=8 -m harness.run submissions/climbmix --profile 8xh100

main() reads top to bottom: profile, submission, data and tokenizer, eval bundle, model, plan, optimizer,
schedule, untimed warm-up, timed training, val_bpb, final checkpoint, CORE, record. What the clock
counts is written in harness/clock.py and the README's rules section.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as torch_dist
from filelock import Timeout
from torch.nn.parallel import DistributedDataParallel

from evals.bpb import evaluate_bpb
from evals.bundle import resolve_bundle
from evals.core import evaluate_core
from harness import checkpoint, guard, profiles
from harness.clock import Clock, EventLog
from harness.data import get_tokenizer, prepare_dataset
from harness.fileio import file_lock
from harness.guard import RunInterrupted, StopSignal, call_hook
from harness.hookspecs import Plan, Run
from harness.loader import TrainLoader, validation_rows
from harness.plugins import (
    Submission,
    SubmissionError,
    load_submission,
    read_sources,
    source_digest,
    submission_files,
)
from harness.record import harness_digest, write_record
from harness.report import Progress, new_record, summary_table

LOSS_CURVE_POINTS = 200  # the record keeps about this many (step, loss) points


class RunDiverged(Exception):
    def __init__(self, step: int, loss: float, last_finite: float | None):
        super().__init__(f"loss became {loss} at step {step} (last finite loss: {last_finite})")
        self.step, self.loss, self.last_finite = step, loss, last_finite


class UsageError(Exception):
    """Bad arguments or hardware for the asked profile: print the message and exit 2, no record."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.run", description=__doc__.split("\n")[0])
    p.add_argument("submission", help="submission folder (holding submission.py) or entry-point name")
    p.add_argument(
        "--profile",
        default="auto",
        choices=["auto", *profiles.PROFILES],
        help="hardware profile; auto picks 8xh100, gpu or cpu from what is present",
    )
    p.add_argument("--depth", type=int, help="model depth (number of layers); default: profile or submission")
    p.add_argument("--seed", type=int, default=0, help="seeds model init and data order")
    p.add_argument("--out", type=Path, help="run directory (default runs/<UTC time>_<submission>)")
    p.add_argument(
        "--eval-bundle",
        type=Path,
        default=os.environ.get("SPEEDRUN_EVAL_BUNDLE"),
        help="CORE eval bundle folder (default: $SPEEDRUN_EVAL_BUNDLE, else the cached download)",
    )
    p.add_argument("--max-per-task", type=int, help="CORE records per task (-1: all; default: the profile's)")
    p.add_argument("--max-steps", type=int, help="cap on optimizer steps (development; makes a run ineligible)")
    p.add_argument("--data-dir", type=Path, help="dataset shards folder (default: $SPEEDRUN_DATA_DIR or cache)")
    p.add_argument(
        "--train-shards",
        type=int,
        default=170,
        help="training shards of a real dataset that must be present locally (d24 on ClimbMix reads about 150)",
    )
    p.add_argument("--checkpoint-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue --out's run from its last checkpoint")
    p.add_argument(
        "--fresh-eval",
        action="store_true",
        help="compute CORE in a fresh process from the saved model (always done for record-eligible runs)",
    )
    p.add_argument("--no-core", action="store_true", help="skip CORE (development; no CORE in the record)")
    p.add_argument("--wandb", metavar="PROJECT", help="log to Weights & Biases (offline unless WANDB_MODE=online)")
    args = p.parse_args(argv)
    if args.resume and args.out is None:
        p.error("--resume needs --out DIR, the run directory to continue")
    for name in ("depth", "max_steps", "checkpoint_every", "train_shards"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "checkpoint_every" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.max_per_task is not None and args.max_per_task != -1 and args.max_per_task < 1:
        p.error(f"--max-per-task must be -1 (every record) or positive, got {args.max_per_task}")
    if not 0 <= args.seed < 2**63:
        p.error(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    return args


# ------------------------------------------------------------------------------------------------
# Distributed setup: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; NCCL on GPUs, gloo on CPU


def init_distributed(profile: profiles.Profile) -> tuple[int, int, int, torch.device]:
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if profile.device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference allows TF32 for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        # Share the cores between the ranks on this node instead of oversubscribing them. An explicit
        # OMP_NUM_THREADS wins: on a shared machine one thread avoids OpenMP's spin-wait contention (measured on
        # 2 busy cores, 5 steps at d2: 5-7 s on 1 thread, 14-36 s on 2).
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // local_world)
        torch.set_num_threads(threads)
    if world_size > 1 and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch_dist.init_process_group("nccl", device_id=device)
        else:
            torch_dist.init_process_group("gloo")
    return rank, local_rank, world_size, device


def compute_dtype(device: torch.device) -> str:
    """bf16 on GPUs that support it, fp32 on CPU; SPEEDRUN_DTYPE overrides (nanochat-recipe.md, Precision)."""
    override = os.environ.get("SPEEDRUN_DTYPE")
    if override:
        if override not in ("float32", "bfloat16", "float16"):
            raise UsageError(f"SPEEDRUN_DTYPE={override!r}: use float32, bfloat16 or float16")
        return override
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def broadcast(value, world_size: int):
    if world_size == 1:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_over_ranks(value: float, device: torch.device, world_size: int, op: str = "max") -> float:
    """The maximum or mean of a per-rank number over all ranks (the number itself with one rank)."""
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX if op == "max" else torch_dist.ReduceOp.SUM)
    return t.item() if op == "max" else t.item() / world_size


# ------------------------------------------------------------------------------------------------
# Checks on what the submission's hooks returned: fail early, naming the hook and the fix


def check_outputs(submission: Submission, model, plan, optimizer, schedule, run: Run) -> int:
    """Check what the hooks returned, naming the file that answered; return the gradient accumulation steps."""

    def fail(hook: str, problem: str):
        raise SubmissionError(f"{guard.hook_file(submission, hook)}: {hook} {problem}")

    if plan.num_steps < 1 or plan.device_batch < 1 or plan.seq_len < 2:
        fail("plan_training", f"returned an empty plan: {plan}")
    try:
        accum = plan.grad_accum_steps(run.world_size)
    except ValueError as exc:
        fail("plan_training", f"planned a batch that does not divide: {exc}")
    if run.max_steps and plan.num_steps > run.max_steps:
        fail("plan_training", f"planned {plan.num_steps} steps over the cap run.max_steps={run.max_steps}")
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_groups]
    if missing:
        fail(
            "build_optimizer",
            f"left {len(missing)} parameters out of every group (first: {', '.join(missing[:3])}); "
            f"add them to a parameter group",
        )
    if not callable(schedule):
        fail("build_schedule", f"returned {type(schedule).__name__}, not a callable schedule(step) -> dict")
    return accum


def state_digest(obj) -> str:
    """A digest of nested state (tensors by dtype, shape and bytes): equal digests mean identical state."""
    digest = hashlib.sha256()

    def visit(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                digest.update(f"K{k!s}".encode())
                visit(x[k])
        elif isinstance(x, list | tuple):
            digest.update(f"L{len(x)}".encode())
            for item in x:
                visit(item)
        else:
            digest.update(f"V{x!r}".encode())

    visit(obj)
    return digest.hexdigest()


def default_out_dir(submission_name: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{stamp}_{submission_name}"


def check_out_dir(out: Path, resume: bool) -> None:
    """Detect an unwritable or full output directory, or one holding a finished run, before any long work."""
    try:
        finished = (out / "record.json").exists()
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_bytes(b"\0" * (1 << 20))
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"cannot write to the output directory {out}: {exc.strerror or exc}; pass --out DIR on a "
            f"writable disk with free space"
        ) from exc
    if finished and not resume:
        raise UsageError(f"{out} already holds a record; pass a new --out (or --resume to continue that run)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    record = new_record(args, argv)
    wall_start = time.time()

    # ---- profile and hardware: refuse a profile this machine cannot run, before anything else
    try:
        profile = profiles.resolve_profile(args.profile)
        fp = profiles.fingerprint()
        world_size_env = int(os.environ.get("WORLD_SIZE", 1))
        problems = profiles.hard_mismatches(profile, fp, world_size_env)
        if problems:
            raise UsageError(
                f"cannot run profile {profile.name!r} here. Found: {profiles.describe_hardware(fp)}, world size "
                f"{world_size_env}. " + "; ".join(problems) + ". Use --profile auto to run what this machine can."
            )
        rank, local_rank, world_size, device = init_distributed(profile)
        dtype = compute_dtype(device)
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    master = rank == 0
    record.update(profile=profile.name, fingerprint=fp)

    # ---- output directory: writable with room to spare, one run at a time, never over a finished record
    out = broadcast(args.out or default_out_dir(Path(args.submission).name), world_size)
    lock = None
    if master:
        try:
            check_out_dir(out, args.resume)
            lock = file_lock(out / "run", timeout=0)
            lock.acquire()
        except Timeout:
            print(f"error: another run is writing to {out}; wait for it or pass another --out", file=sys.stderr)
            return 2
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    events = EventLog(out / "events.jsonl" if master else None, start=wall_start)
    clock = Clock(device, events)
    events.write("run_start", None, {"submission": args.submission, "profile": profile.name, "argv": argv})
    stop = StopSignal().install()
    state = {"step": 0, "out": out, "world_size": world_size, "record": record}

    # ---- the run itself: every way it can end produces a record
    submission = None
    try:
        referee = guard.referee_snapshot()  # the harness and eval code as imported, before any submission code
        with clock.phase("load"):
            submission = load_submission(args.submission)  # a contract error stops here, before data or model
        record["submission"] = describe(submission)
        if args.wandb and master:
            from harness.wandb_observer import WandbObserver

            config = {"submission": submission.name, "profile": profile.name, "argv": argv}
            submission.pm.register(WandbObserver(args.wandb, out.name, config), name="observer:wandb")
        where = Where(rank, local_rank, world_size, device, dtype)
        run_training(args, profile, submission, record, clock, state, stop, where, referee)
        record["status"] = "finished"
    except RunDiverged as exc:
        record["status"] = "diverged"
        record["error"] = {**error_of(exc), "step": exc.step, "last_finite_loss": exc.last_finite}
    except (RunInterrupted, KeyboardInterrupt) as exc:
        record["status"] = "interrupted"
        record["error"] = error_of(exc)
        record["checkpoint"] = checkpoint_on_interrupt(state, clock, master, getattr(exc, "agreed", False))
    except Exception as exc:  # noqa: BLE001 - every failure must still produce a record
        record["status"] = "failed"
        record["error"] = error_of(exc)
        if submission is None and isinstance(exc, SubmissionError):
            record["submission"] = describe_unloadable(args.submission)
    finally:
        stop.uninstall()

    # ---- record: only rank 0 writes, atomically
    record["training_time_s"] = state.get("training_time_s", clock.training_time_s)
    record["steps_completed"] = state["step"]
    clock.flush_train(state["step"])
    record["phases"] = {k: round(v, 6) for k, v in sorted(clock.phases.items())}
    record["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    events.write("run_stop", None, record["status"])
    record["wall_time_s"] = round(time.time() - wall_start, 3)
    if master:
        write_record(out, record)
        if submission is not None:
            submission.hook.run_finished(record=record, run=state.get("run"))
        print(summary_table(record))
        print(f"record: {out / 'record.json'}")
        if record["error"]:
            print(f"{record['status']}: {record['error']['message']}", file=sys.stderr)
        lock.release()
    events.close()
    if world_size > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    return 0 if record["status"] == "finished" else 1


@dataclasses.dataclass(frozen=True)
class Where:
    """This process's place in the run."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    dtype: str

    @property
    def master(self) -> bool:
        return self.rank == 0


def run_training(args, profile, submission, record, clock, state, stop, where: Where, referee) -> None:
    rank, world_size, device, master = where.rank, where.world_size, where.device, where.master
    out = state["out"]

    # ---- data, tokenizer, eval bundle (untimed setup; each is verified against its committed digests)
    with clock.phase("setup"):
        record["calibration"] = profiles.calibrate(device, world_size)
        probe = Run(
            profile=profile.name,
            device=str(device),
            dtype=where.dtype,
            rank=rank,
            local_rank=where.local_rank,
            world_size=world_size,
            seed=args.seed,
            vocab_size=profile.vocab_size,
            bos_token_id=-1,
            seq_len=profile.seq_len,
            depth=args.depth or profile.default_depth,
            max_steps=min(filter(None, (args.max_steps, profile.max_steps)), default=None),
            max_batch_tokens=profile.max_batch_tokens,
        )
        bundle = None if args.no_core else resolve_bundle(args.eval_bundle)  # first: a missing bundle fails fast
        asked = call_hook(submission, "select_dataset", run=probe)
        dataset_name = profile.dataset or asked
        # Rank 0 prepares (builds, verifies, trains the tokenizer) first; the others then find it cached.
        for turn in ("master", "others"):
            if (turn == "master") == master:
                dataset = prepare_dataset(dataset_name, train_shards(args, dataset_name), data_dir=args.data_dir)
                tokenizer = get_tokenizer(dataset, profile.vocab_size)
            if world_size > 1:
                torch_dist.barrier()
    record["data"] = {
        "dataset": dataset.name,
        "selected": asked,
        "digest": dataset.digest,
        "pinned": dataset.pinned,
        "shards": dataset.digests,
        "stream_digest": None,
        "tokens_consumed": 0,
    }
    record["tokenizer"] = {"digest": tokenizer.digest, "vocab_size": tokenizer.vocab_size}
    if bundle is not None:
        record["eval_bundle"] = {
            "path": str(bundle.root),
            "digest": bundle.digest,
            "missing_labels": list(bundle.missing_labels),
        }
    run = dataclasses.replace(probe, vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id)
    state["run"] = run
    record["run"] = {"seed": run.seed, "world_size": world_size, "dtype": where.dtype, "depth": run.depth,
                     "device": device.type}  # fmt: skip

    # ---- model, plan, optimizer, schedule: the submission's hooks, checked before any training
    with clock.phase("build"):
        torch.manual_seed(run.seed)
        model = call_hook(submission, "build_model", expect=torch.nn.Module, run=run)
        plan = call_hook(submission, "plan_training", expect=Plan, model=model, run=run)
        optimizer = call_hook(
            submission, "build_optimizer", expect=torch.optim.Optimizer, model=model, plan=plan, run=run
        )
        schedule = call_hook(submission, "build_schedule", optimizer=optimizer, plan=plan, run=run)
        accum = check_outputs(submission, model, plan, optimizer, schedule, run)
        if master:
            guard.check_free_space(out, checkpoint_bytes(model) * (3 if args.checkpoint_every else 1))
        loader = TrainLoader(
            dataset.train_files,
            tokenizer,
            plan.device_batch,
            plan.seq_len,
            rank=rank,
            world_size=world_size,
            device=str(device),
            seed=run.seed,
        )
        val_rows = validation_rows(dataset.val_file, tokenizer, profile.val_tokens, plan.seq_len)
        token_bytes = tokenizer.token_bytes().to(device)
        trained = DistributedDataParallel(model) if world_size > 1 else model
    state.update(model=model, optimizer=optimizer, loader=loader)
    record["plan"] = {**dataclasses.asdict(plan), "grad_accum": accum}
    record["eligibility"] = eligibility(args, profile, record, bundle, dataset)
    peak = profiles.peak_flops(device)

    def one_step(step: int) -> tuple[torch.Tensor, dict]:
        batches = (next(loader) for _ in range(accum))
        loss = call_hook(submission, "train_step", model=trained, batches=batches, plan=plan, run=run)
        settings = schedule(step)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss, settings

    def evaluate_val_bpb(step: int) -> float:
        clock.flush_train(step)
        with clock.phase("eval_bpb", step=step):
            model.eval()
            bpb = evaluate_bpb(model, val_rows, token_bytes, plan.device_batch, str(device))
            model.train()
        record["evals"].append({"step": step, "val_bpb": bpb})
        clock.events.write("val_bpb", step, bpb)
        return bpb

    # ---- untimed warm-up on real batches (compilation, allocator), then restore the initial state exactly;
    # a resumed run instead restores its last checkpoint (and is never record-eligible)
    start_step = 0
    if args.resume:
        start_step = resume(out, rank, model, optimizer, loader, record, clock)
    else:
        with clock.phase("warmup", steps=profile.warmup_steps):
            initial = {
                "model": copy.deepcopy(model.state_dict()),
                "optimizer": copy.deepcopy(optimizer.state_dict()),
                "loader": loader.state_dict(),
                "rng": torch.get_rng_state(),
            }
            before = state_digest([initial["model"], initial["optimizer"]])
            for step in range(min(profile.warmup_steps, plan.num_steps)):
                one_step(step)
            model.load_state_dict(initial["model"])
            optimizer.load_state_dict(initial["optimizer"])
            loader.load_state_dict(initial["loader"])
            torch.set_rng_state(initial["rng"])
            if state_digest([model.state_dict(), optimizer.state_dict()]) != before:
                raise RuntimeError(
                    "the model or optimizer state after warm-up differs from the initial state; "
                    "an optimizer keeps state outside state_dict(), which the contract forbids"
                )
        clock.events.write("warmup_restored", None, {"state_digest": before})

    # ---- timed training: only the steps count (harness/clock.py); a non-finite loss stops the run at once
    progress = Progress(plan.num_steps, start_step, master)
    loss_every = max(1, plan.num_steps // LOSS_CURVE_POINTS)
    last_finite = None
    step_seconds = []  # each timed step's duration, for the steady-state step time (harness.ci)

    # A stop signal takes effect at the next step boundary, the same one on every rank: no step is cut in half
    # or lost, and the ranks can save one checkpoint together.
    def any_rank(flag: bool) -> bool:
        return reduce_over_ranks(float(flag), device, world_size, "max") > 0

    with stop.deferred():
        for step in range(start_step, plan.num_steps):
            timed_before = clock.training_time_s
            with clock.timed_step():
                loss, settings = one_step(step)
                loss_value = loss.item()
            step_seconds.append(clock.training_time_s - timed_before)
            state["step"] = step + 1
            with clock.untimed("log"):
                mean_loss = reduce_over_ranks(loss_value, device, world_size, "mean")  # non-finite if any rank's is
            if not math.isfinite(mean_loss):
                raise RunDiverged(step, mean_loss, last_finite)
            last_finite = mean_loss
            with clock.untimed("log"):
                step_time = clock.training_time_s / max(1, clock.train_steps)
                tokens_per_s = plan.total_batch_tokens / step_time
                metrics = {
                    "loss": mean_loss,
                    "tokens_per_s": tokens_per_s,
                    **settings,
                    "mfu": plan.flops_per_token * tokens_per_s / (peak * world_size) if peak else None,
                    "eta_s": step_time * (plan.num_steps - step - 1),
                }
                if step % loss_every == 0 or step + 1 == plan.num_steps:
                    record["loss_curve"].append([step, round(metrics["loss"], 6)])
                    clock.events.write("train_loss", step, round(metrics["loss"], 6))
                progress.update(step, metrics)
                submission.hook.log_metrics(step=step, metrics=metrics, run=run)
            if profile.eval_every and (step + 1) % profile.eval_every == 0 and step + 1 < plan.num_steps:
                submission.hook.log_metrics(step=step, metrics={"val_bpb": evaluate_val_bpb(step + 1)}, run=run)
            if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < plan.num_steps:
                save_checkpoint(clock, out, step + 1, model, optimizer, loader, record, world_size, master)
            with clock.untimed("log"):
                stop.raise_if_stopping(any_rank)
    progress.close()

    # ---- what training did, agreed over ranks: the slowest rank's time counts; one proof of data for all
    state["training_time_s"] = reduce_over_ranks(clock.training_time_s, device, world_size, "max")
    clock.events.write("step_times", start_step, [round(s, 6) for s in step_seconds])  # one line, not one per step
    metrics = record["metrics"]
    metrics["final_loss"] = record["loss_curve"][-1][1] if record["loss_curve"] else None
    metrics["step_time_median_s"] = statistics.median(step_seconds) if step_seconds else None
    metrics["tokens_per_s"] = plan.total_batch_tokens * clock.train_steps / max(clock.training_time_s, 1e-9)
    if peak:
        metrics["mfu"] = plan.flops_per_token * metrics["tokens_per_s"] / (peak * world_size)
    if device.type == "cuda":
        metrics["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    record["data"]["stream_digest"] = combined_stream_digest(loader.stream_digest, world_size)
    record["data"]["tokens_consumed"] = plan.total_batch_tokens * state["step"]

    # ---- final evals (untimed): val_bpb, the final model saved, the referee checked, then CORE
    metrics["val_bpb"] = evaluate_val_bpb(plan.num_steps)
    with clock.phase("checkpoint"):
        if master:
            checkpoint.save_model(out / checkpoint.MODEL_DIR, model, tokenizer, run, submission)
    with clock.phase("integrity"):
        check_integrity(args, record, referee, dataset, bundle)
    # A record-eligible run's reported numbers come from a fresh process that loads the saved model: nothing the
    # submission did to this process (a patched torch function, global state) can reach them.
    fresh = args.fresh_eval or record["eligibility"]["eligible"]
    if fresh and master:
        with clock.phase("eval_bpb_fresh"):
            metrics["val_bpb"] = bpb_in_fresh_process(out, dataset.val_file, profile.val_tokens, plan, where)
        record["evals"][-1]["val_bpb_fresh_process"] = metrics["val_bpb"]
    if bundle is None:
        return
    max_per_task = profile.core_max_per_task if args.max_per_task is None else args.max_per_task
    with clock.phase("eval_core", fresh_process=fresh):
        if fresh:
            core = core_in_fresh_process(out, bundle, max_per_task, where) if master else None
        else:
            model.eval()
            with torch.no_grad():
                progress_bar = master and sys.stderr.isatty()
                result = evaluate_core(model, tokenizer, bundle, max_per_task, str(device), progress=progress_bar)
            core = result.to_dict()
            if master:
                print(result.table())
    if master:
        metrics.update(
            core=core["core"],
            core_partial=core["core_partial"],
            core_label="CORE" if core["core"] is not None else "core_partial",
            core_tasks=core["per_task"],
        )
        record["eval_bundle"].update(max_per_task=max_per_task, evaluated_in="fresh process" if fresh else "run")
        clock.events.write("core", plan.num_steps, core["core"] if core["core"] is not None else core["core_partial"])


def check_integrity(args, record, referee, dataset, bundle) -> None:
    """After training, the referee's code, the data and the eval bundle must be what they were at the start.

    A submission that monkeypatches the harness or edits the data or bundle on disk fails here, so its run
    can never report a result computed by modified code or files.
    """
    problems = []
    replaced = guard.referee_changes(referee)
    if replaced:
        problems.append(f"harness functions replaced at run time: {', '.join(replaced[:5])}")
    if harness_digest() != record["harness"]["source_digest"]:
        problems.append("harness or eval source files changed on disk during the run")
    data_now = prepare_dataset(dataset.name, train_shards(args, dataset.name), data_dir=args.data_dir)
    if data_now.digest != dataset.digest:
        problems.append(f"dataset {dataset.name} shards changed during the run")
    if bundle is not None and resolve_bundle(args.eval_bundle).digest != bundle.digest:
        problems.append("the eval bundle changed during the run")
    if problems:
        raise TamperError("; ".join(problems) + ". The referee's code and files may not be modified by a submission.")


class TamperError(Exception):
    """The harness code, data or eval bundle changed during a run."""


def core_in_fresh_process(out: Path, bundle, max_per_task: int, where: Where) -> dict:
    """CORE of the saved final model, computed by `python -m evals.core` in a new process (rank 0 only)."""
    args = ["--bundle", str(bundle.root), "--max-per-task", str(max_per_task)]
    return in_fresh_process("evals.core", out, args, out / "core.json", where)


def bpb_in_fresh_process(out: Path, val_file: Path, val_tokens: int, plan: Plan, where: Where) -> float:
    """The final val_bpb of the saved model on the run's validation rows, by `python -m evals.bpb` (rank 0 only)."""
    args = ["--val-file", str(val_file), "--val-tokens", str(val_tokens), "--seq-len", str(plan.seq_len)]
    args += ["--device-batch", str(plan.device_batch)]
    return in_fresh_process("evals.bpb", out, args, out / "val_bpb.json", where)["val_bpb"]


def in_fresh_process(module: str, out: Path, args: list[str], result_path: Path, where: Where) -> dict:
    """Run ``python -m module --checkpoint out/model ...`` outside torchrun's group; return its --json result.

    Nothing the submission did to this process (monkeypatching, global state) can reach that one.
    """
    device = f"cuda:{where.local_rank}" if where.device.type == "cuda" else "cpu"
    cmd = [sys.executable, "-m", module, "--checkpoint", str(out / checkpoint.MODEL_DIR), *args]
    cmd += ["--device", device, "--json", str(result_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {module} in a fresh process failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout, end="")
    return json.loads(result_path.read_text())


def train_shards(args, dataset_name: str) -> int | None:
    """How many training shards the run needs locally: all of the small smoke corpus, else --train-shards."""
    return None if dataset_name == "smoke" else args.train_shards


def combined_stream_digest(local: str, world_size: int) -> str:
    """One proof of data for all ranks: sha256 over the ranks' running digests, in rank order."""
    if world_size == 1:
        return local
    digests = [None] * world_size
    torch_dist.all_gather_object(digests, local)
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def training_state(model, optimizer, loaders: list, record: dict, clock: Clock) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loader": loaders,
        "training_time_s": clock.training_time_s,
        "train_steps": clock.train_steps,
        "loss_curve": record["loss_curve"],
        "evals": record["evals"],
        "rng": torch.get_rng_state(),
    }


def save_checkpoint(clock, out, step, model, optimizer, loader, record, world_size, master) -> Path | None:
    """A resumable checkpoint with every rank's loader position (every rank calls this); the two newest are kept.

    Returns its path on rank 0.
    """
    clock.flush_train(step)
    with clock.phase("checkpoint", step=step):
        loaders = [None] * world_size
        if world_size > 1:
            torch_dist.all_gather_object(loaders, loader.state_dict())
        else:
            loaders = [loader.state_dict()]
        if master:
            state = training_state(model, optimizer, loaders, record, clock)
            return checkpoint.save_training_state(out, step, state, keep=2)
    return None


def checkpoint_on_interrupt(state: dict, clock: Clock, master: bool, agreed: bool) -> str | None:
    """On SIGINT/SIGTERM, save where training stopped. With several ranks only an ``agreed`` stop (every rank at
    the same step boundary) saves one; otherwise the last periodic checkpoint stands, since a collective cannot
    be trusted while ranks stop at different points."""
    if "optimizer" not in state or state["step"] == 0 or (state["world_size"] > 1 and not agreed):
        return None
    path = save_checkpoint(clock, state["out"], state["step"], state["model"], state["optimizer"], state["loader"],
                           state["record"], state["world_size"], master)  # fmt: skip
    return str(path) if path is not None else None


def resume(out: Path, rank: int, model, optimizer, loader, record: dict, clock: Clock) -> int:
    found = checkpoint.latest_training_state(out)
    if found is None:
        raise FileNotFoundError(
            f"--resume: no intact checkpoint under {out / checkpoint.CHECKPOINTS_DIR}; start a new run instead"
        )
    step, saved = found
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if len(saved["loader"]) <= rank:
        ranks = len(saved["loader"])
        raise ValueError(f"the checkpoint at step {step} was written by {ranks} ranks; resume with as many")
    loader.load_state_dict(saved["loader"][rank])
    torch.set_rng_state(saved["rng"])
    clock.phases["train"] = saved["training_time_s"]
    clock.train_steps = saved["train_steps"]
    record["loss_curve"] = list(saved["loss_curve"])
    record["evals"] = list(saved["evals"])
    clock.events.write("resumed", step, None)
    return step


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About what one checkpoint takes: the weights and two optimizer moments, plus room for the record."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * weights + (64 << 20)


def error_of(exc: BaseException) -> dict:
    message = str(exc) if isinstance(exc, SubmissionError | RunDiverged) else f"{type(exc).__name__}: {exc}"
    return {"message": message or type(exc).__name__, "traceback": traceback.format_exc()}


def describe(submission: Submission) -> dict:
    return {
        "name": submission.name,
        "path": str(submission.path),
        "source_digest": submission.source_digest,
        "overrides": submission.overrides,
        "files": submission.files,
        "sources": submission.sources(),
    }


def describe_unloadable(spec: str) -> dict | None:
    """What can be said of a submission that failed to load: its folder's files, when it is a folder."""
    folder = (Path(spec).parent if Path(spec).suffix == ".py" else Path(spec)).resolve()
    if not folder.is_dir():
        return None
    files = submission_files(folder)
    return {
        "name": folder.name,
        "path": str(folder),
        "source_digest": source_digest(files),
        "overrides": [],
        "files": files,
        "sources": read_sources(folder, files),
    }


def eligibility(args, profile, record, bundle, dataset) -> dict:
    """Why this run could not set a record; empty reasons mean eligible."""
    reasons = []
    if not profile.record_eligible:
        reasons.append(f"profile {profile.name!r} is not the record profile (8xh100)")
    reasons += profiles.calibration_shortfalls(profile, record["calibration"]) if profile.record_eligible else []
    if args.resume:
        reasons.append("resumed from a checkpoint")
    if args.max_steps:
        reasons.append(f"--max-steps {args.max_steps} caps the planned training")
    if args.no_core or bundle is None:
        reasons.append("CORE not evaluated (--no-core)")
    elif bundle.missing_labels:
        reasons.append(f"eval bundle is partial (missing {', '.join(bundle.missing_labels)})")
    if args.max_per_task not in (None, -1) or (args.max_per_task is None and profile.core_max_per_task != -1):
        reasons.append("CORE evaluated on a per-task cap, not on every record")
    if not dataset.pinned:
        reasons.append(f"dataset {dataset.name!r} has shards without committed digests (python -m harness.data pin)")
    if record["harness"]["dirty"]:
        reasons.append("the harness has uncommitted changes")
    return {"eligible": not reasons, "reasons": reasons}


if __name__ == "__main__":
    sys.exit(main())
