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
import math
import os
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel

from harness import checkpoint, profiles
from harness.clock import Clock, EventLog
from harness.hookspecs import Plan, Run
from harness.plugins import Submission, SubmissionError, load_submission
from harness.record import environment, harness_provenance, write_record

LOSS_CURVE_POINTS = 200  # the record keeps about this many (step, loss) points


class RunInterrupted(Exception):
    """SIGTERM (or SIGINT) arrived: stop cleanly, checkpoint, and write an `interrupted` record."""


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
    p.add_argument("--no-core", action="store_true", help="skip CORE (development; no CORE in the record)")
    p.add_argument("--wandb", metavar="PROJECT", help="log to Weights & Biases (offline unless WANDB_MODE=online)")
    args = p.parse_args(argv)
    if args.resume and args.out is None:
        p.error("--resume needs --out DIR, the run directory to continue")
    for name in ("depth", "max_steps", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "checkpoint_every" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
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
        # Share the cores between the ranks on this node instead of oversubscribing them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
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


def max_over_ranks(value: float, device: torch.device, world_size: int) -> float:
    if world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t.item()


# ------------------------------------------------------------------------------------------------
# Checks on what the submission's hooks returned: fail early, naming the hook and the fix


def check_outputs(submission: Submission, model, plan, optimizer, schedule, run: Run) -> None:
    where = f"submission {submission.name} ({submission.path})"
    if not isinstance(model, torch.nn.Module):
        raise SubmissionError(f"{where}: build_model returned {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(plan, Plan):
        raise SubmissionError(f"{where}: plan_training returned {type(plan).__name__}, not harness.hookspecs.Plan")
    if plan.num_steps < 1 or plan.device_batch < 1 or plan.seq_len < 2:
        raise SubmissionError(f"{where}: plan_training returned an empty plan: {plan}")
    plan.grad_accum_steps(run.world_size)  # raises with the fix when the batch does not divide
    if run.max_steps and plan.num_steps > run.max_steps:
        raise SubmissionError(f"{where}: plan_training planned {plan.num_steps} steps over the cap {run.max_steps}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise SubmissionError(f"{where}: build_optimizer returned {type(optimizer).__name__}, not an Optimizer")
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_groups]
    if missing:
        raise SubmissionError(
            f"{where}: build_optimizer left {len(missing)} parameters out of every group "
            f"(first: {', '.join(missing[:3])}); add them to a parameter group"
        )
    if not callable(schedule):
        raise SubmissionError(f"{where}: build_schedule returned {type(schedule).__name__}, not a callable")


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


def install_signal_handlers() -> None:
    def handler(signum, frame):
        raise RunInterrupted(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ------------------------------------------------------------------------------------------------
# Progress and summary (rank 0 only)


class Progress:
    """A tqdm bar on a terminal; on a pipe (CI, logs) a plain line about every 5% of the run."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.bar = None
        self.every = max(1, total // 20)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        mfu = f"{metrics['mfu'] * 100:.1f}%" if metrics.get("mfu") is not None else "n/a"
        text = f"loss {metrics['loss']:.4f} | {metrics['tokens_per_s']:,.0f} tok/s | MFU {mfu}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif (step + 1) % self.every == 0 or step + 1 == self.total:
            eta = metrics["eta_s"]
            print(f"step {step + 1:>6}/{self.total} | {text} | ETA {eta:,.0f}s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_table(record: dict) -> str:
    m = record["metrics"]
    core = m.get("core") if m.get("core") is not None else m.get("core_partial")
    rows = [
        ("submission", f"{record['submission']['name']} (overrides: {', '.join(record['submission']['overrides'])})"),
        ("status", record["status"]),
        ("profile", f"{record['profile']} ({record['run']['world_size']} x {record['run']['device']})"),
        ("steps", f"{record['steps_completed']}" + (f" / {record['plan']['num_steps']}" if record["plan"] else "")),
        ("tokens", f"{record['data']['tokens_consumed']:,}" if record["data"] else "-"),
        ("training time", f"{record['training_time_s']:.1f} s ({record['training_time_s'] / 3600:.4f} h)"),
        ("wall time", f"{record['wall_time_s']:.1f} s"),
        ("final loss", f"{m['final_loss']:.4f}" if m.get("final_loss") is not None else "-"),
        ("val_bpb", f"{m['val_bpb']:.4f}" if m.get("val_bpb") is not None else "-"),
        (m.get("core_label") or "CORE", f"{core:.4f}" if core is not None else "-"),
        (
            "eligible",
            "yes"
            if record["eligibility"]["eligible"]
            else "no: "
            + "; ".join(record["eligibility"]["reasons"][:3])
            + ("; ..." if len(record["eligibility"]["reasons"]) > 3 else ""),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v}" for k, v in rows)


# ------------------------------------------------------------------------------------------------


def new_record(args: argparse.Namespace, argv: list[str]) -> dict:
    return {
        "schema_version": 1,
        "status": "failed",
        "submission": None,
        "harness": harness_provenance(),
        "command": [sys.executable, "-m", "harness.run", *argv],
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "finished_at": None,
        "environment": environment(),
        "profile": None,
        "fingerprint": None,
        "calibration": {},
        "eligibility": {"eligible": False, "reasons": []},
        "resumed": bool(args.resume),
        "run": None,
        "plan": None,
        "data": None,
        "tokenizer": None,
        "eval_bundle": None,
        "training_time_s": 0.0,
        "wall_time_s": 0.0,
        "phases": {},
        "steps_completed": 0,
        "metrics": {
            "final_loss": None,
            "val_bpb": None,
            "core": None,
            "core_partial": None,
            "core_label": None,
            "core_tasks": {},
        },
        "evals": [],
        "loss_curve": [],
        "error": None,
    }


def default_out_dir(submission_name: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / f"{stamp}_{submission_name}"


def check_writable(out: Path) -> None:
    """Detect an unwritable or full output directory before any long work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_bytes(b"\0" * (1 << 20))
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"cannot write to the output directory {out}: {exc.strerror}; pass --out DIR on a "
            f"writable disk with free space"
        ) from exc


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

    # ---- submission: a contract error (misspelt hook, import error) fails here, before data or model work
    try:
        submission = load_submission(args.submission)
    except SubmissionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record["submission"] = {
        "name": submission.name,
        "path": str(submission.path),
        "source_digest": submission.source_digest,
        "overrides": submission.overrides,
        "files": submission.files,
        "sources": submission.sources(),
    }
    out = broadcast(args.out or default_out_dir(submission.name), world_size)
    if master:
        try:
            check_writable(out)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.wandb and master:
        from harness.wandb_observer import WandbObserver

        config = {"submission": submission.name, "profile": profile.name, "argv": argv}
        submission.pm.register(WandbObserver(args.wandb, Path(out).name, config), name="observer:wandb")
    events = EventLog(out / "events.jsonl" if master else None, start=wall_start)
    clock = Clock(device, events)
    events.write("run_start", None, {"submission": submission.name, "profile": profile.name, "argv": argv})
    install_signal_handlers()

    state = {"step": 0, "model": None}
    try:
        run_training(args, profile, submission, record, clock, state, rank, local_rank, world_size, device, dtype, out)
        record["status"] = "finished"
    except RunDiverged as exc:
        record["status"] = "diverged"
        record["error"] = {
            "message": str(exc),
            "traceback": traceback.format_exc(),
            "step": exc.step,
            "last_finite_loss": exc.last_finite,
        }
    except (RunInterrupted, KeyboardInterrupt) as exc:
        record["status"] = "interrupted"
        record["error"] = {"message": str(exc) or "interrupted", "traceback": traceback.format_exc()}
    except Exception as exc:  # noqa: BLE001 - every failure must still produce a record
        record["status"] = "failed"
        record["error"] = {"message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # ---- record: only rank 0 writes; the slowest rank's training time counts
    record["training_time_s"] = (
        max_over_ranks(clock.training_time_s, device, world_size)
        if (record["status"] == "finished")
        else clock.training_time_s
    )
    record["steps_completed"] = state["step"]
    record["phases"] = {k: round(v, 6) for k, v in sorted(clock.phases.items())}
    record["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    clock.flush_train(state["step"])
    events.write("run_stop", None, record["status"])
    record["wall_time_s"] = round(time.time() - wall_start, 3)
    if master:
        write_record(out, record)
        submission.hook.run_finished(record=record, run=state.get("run"))
        print(summary_table(record))
        print(f"record: {out / 'record.json'}")
        if record["error"]:
            print(f"{record['status']}: {record['error']['message']}", file=sys.stderr)
    events.close()
    if world_size > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    return 0 if record["status"] == "finished" else 1


def run_training(args, profile, submission, record, clock, state, rank, local_rank, world_size, device, dtype, out):
    from evals.bpb import evaluate_bpb
    from evals.bundle import resolve_bundle
    from evals.core import evaluate_core
    from harness.data import get_tokenizer, prepare_dataset
    from harness.loader import TrainLoader, validation_rows

    master = rank == 0
    hook = submission.hook

    # ---- data, tokenizer, eval bundle (untimed setup; each is verified against its committed digests)
    with clock.phase("setup"):
        record["calibration"] = profiles.calibrate(device, world_size)
        probe = Run(
            profile=profile.name,
            device=str(device),
            dtype=dtype,
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            seed=args.seed,
            vocab_size=profile.vocab_size,
            bos_token_id=-1,
            seq_len=profile.seq_len,
            depth=args.depth or profile.default_depth,
            max_steps=min(filter(None, (args.max_steps, profile.max_steps)), default=None),
            max_batch_tokens=profile.max_batch_tokens,
        )
        asked = hook.select_dataset(run=probe)
        dataset_name = profile.dataset or asked
        # Rank 0 prepares (builds, verifies, trains the tokenizer) first; the others then find it cached.
        if master:
            dataset = prepare_dataset(dataset_name, train_shards(args, dataset_name), data_dir=args.data_dir)
            tokenizer = get_tokenizer(dataset, profile.vocab_size)
        if world_size > 1:
            torch_dist.barrier()
        if not master:
            dataset = prepare_dataset(dataset_name, train_shards(args, dataset_name), data_dir=args.data_dir)
            tokenizer = get_tokenizer(dataset, profile.vocab_size)
        bundle = None if args.no_core else resolve_bundle(args.eval_bundle)
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
    record["run"] = {
        "seed": run.seed,
        "world_size": world_size,
        "dtype": dtype,
        "depth": run.depth,
        "device": device.type,
    }

    # ---- model, plan, optimizer, schedule: the submission's hooks, checked before any training
    with clock.phase("build"):
        torch.manual_seed(run.seed)
        model = hook.build_model(run=run)
        plan = hook.plan_training(model=model, run=run)
        optimizer = hook.build_optimizer(model=model, plan=plan, run=run)
        schedule = hook.build_schedule(optimizer=optimizer, plan=plan, run=run)
        check_outputs(submission, model, plan, optimizer, schedule, run)
        accum = plan.grad_accum_steps(world_size)
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
    state["model"] = model
    record["plan"] = {**dataclasses.asdict(plan), "grad_accum": accum}
    record["eligibility"] = eligibility(args, profile, record, bundle, dataset)
    peak = profiles.peak_flops(device)

    def one_step(step: int) -> tuple[torch.Tensor, dict]:
        loss = hook.train_step(model=trained, batches=(next(loader) for _ in range(accum)), plan=plan, run=run)
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

    # ---- untimed warm-up on real batches (compilation, allocator), then restore the initial state exactly
    start_step = 0
    if args.resume:
        resumed = checkpoint.latest_training_state(out)
        if resumed is None:
            raise FileNotFoundError(f"--resume: no intact checkpoint under {out / checkpoint.CHECKPOINTS_DIR}")
        start_step, saved = resumed
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        loader.load_state_dict(saved["loader"][rank] if isinstance(saved["loader"], list) else saved["loader"])
        clock.phases["train"] = saved["training_time_s"]
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
            after = state_digest([model.state_dict(), optimizer.state_dict()])
            if after != before:
                raise RuntimeError(
                    "the model or optimizer state after warm-up differs from the initial state; "
                    "an optimizer keeps state outside state_dict(), which the contract forbids"
                )
        clock.events.write("warmup_restored", None, {"state_digest": before})

    # ---- timed training
    progress = Progress(plan.num_steps, start_step, master)
    loss_every = max(1, plan.num_steps // LOSS_CURVE_POINTS)
    last_finite = None
    tokens_per_step = plan.total_batch_tokens
    step_seconds = []  # each timed step's duration: the steady-state step time (harness.ci) needs them
    for step in range(start_step, plan.num_steps):
        timed_before = clock.training_time_s
        with clock.timed_step():
            loss, settings = one_step(step)
            loss_value = loss.item()
        step_seconds.append(clock.training_time_s - timed_before)
        state["step"] = step + 1
        if not math.isfinite(loss_value):
            raise RunDiverged(step, loss_value, last_finite)
        last_finite = loss_value
        with clock.untimed("log"):
            step_time = clock.training_time_s / max(1, clock.train_steps)
            tokens_per_s = tokens_per_step / step_time
            metrics = {
                "loss": loss_value,
                "tokens_per_s": tokens_per_s,
                **settings,
                "mfu": plan.flops_per_token * tokens_per_s / (peak * world_size) if peak else None,
                "eta_s": step_time * (plan.num_steps - step - 1),
            }
            if step % loss_every == 0 or step + 1 == plan.num_steps:
                record["loss_curve"].append([step, round(loss_value, 6)])
                clock.events.write("train_loss", step, round(loss_value, 6))
            progress.update(step, metrics)
            hook.log_metrics(step=step, metrics=metrics, run=run)
        if profile.eval_every and (step + 1) % profile.eval_every == 0 and step + 1 < plan.num_steps:
            hook.log_metrics(step=step, metrics={"val_bpb": evaluate_val_bpb(step + 1)}, run=run)
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < plan.num_steps:
            save_checkpoint(clock, out, step + 1, model, optimizer, loader, world_size, master)
    progress.close()
    clock.events.write("step_times", start_step, [round(s, 6) for s in step_seconds])  # one line, not one per step
    record["metrics"]["final_loss"] = last_finite
    record["metrics"]["step_time_median_s"] = statistics.median(step_seconds) if step_seconds else None
    record["metrics"]["tokens_per_s"] = plan.total_batch_tokens * clock.train_steps / max(clock.training_time_s, 1e-9)
    if peak:
        record["metrics"]["mfu"] = plan.flops_per_token * record["metrics"]["tokens_per_s"] / (peak * world_size)
    if device.type == "cuda":
        record["metrics"]["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    record["data"]["stream_digest"] = combined_stream_digest(loader.stream_digest, world_size)
    record["data"]["tokens_consumed"] = plan.total_batch_tokens * state["step"]

    # ---- final evals (untimed): val_bpb, then the final model is saved and CORE computed
    record["metrics"]["val_bpb"] = evaluate_val_bpb(plan.num_steps)
    with clock.phase("checkpoint"):
        if master:
            checkpoint.save_model(out / checkpoint.MODEL_DIR, model, tokenizer, run, submission)
    if bundle is not None:
        max_per_task = profile.core_max_per_task if args.max_per_task is None else args.max_per_task
        with clock.phase("eval_core"):
            model.eval()
            with torch.no_grad():
                result = evaluate_core(
                    model,
                    tokenizer,
                    bundle,
                    max_per_task=max_per_task,
                    device=str(device),
                    progress=master and sys.stderr.isatty(),
                )
        core = result.to_dict()
        record["metrics"].update(
            core=core["core"],
            core_partial=core["core_partial"],
            core_label="CORE" if core["core"] is not None else "core_partial",
            core_tasks=core["per_task"],
        )
        record["eval_bundle"]["max_per_task"] = max_per_task
        clock.events.write("core", plan.num_steps, core["core"] if core["core"] is not None else core["core_partial"])
        if master:
            print(result.table())


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


def save_checkpoint(clock, out, step, model, optimizer, loader, world_size, master) -> None:
    clock.flush_train(step)
    with clock.phase("checkpoint", step=step):
        loaders = [None] * world_size
        if world_size > 1:
            torch_dist.all_gather_object(loaders, loader.state_dict())
        else:
            loaders = [loader.state_dict()]
        if master:
            checkpoint.save_training_state(
                out,
                step,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "loader": loaders,
                    "training_time_s": clock.training_time_s,
                },
            )


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
