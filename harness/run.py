"""Run a submission end to end: the referee, which times, evaluates and records a training worker it launches.

    python -m harness.run submissions/climbmix                       # auto profile: cpu smoke run here
    python -m harness.run submissions/climbmix --profile cpu --depth 4 --seed 1 --out /tmp/r1
    torchrun --nproc_per_node=8 -m harness.run submissions/climbmix --profile 8xh100

This process never imports submission code. It resolves the configuration once, prepares and verifies the data,
tokenizer and eval bundle, then starts the training worker (harness/worker.py; under torchrun rank 0 referees
and every other rank becomes a worker), follows it through the messages it sends (stamping each with its own
clock, watching for hangs), checks what it can, evaluates the exported model in an isolated process
(harness/evaluate.py) and writes the record. What is guaranteed and what is left to review: docs/rules.md.

main() reads top to bottom: configuration, output directory, setup, the submission's dataset choice, data,
training, checks, evals, record.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch
from filelock import Timeout

from evals.bundle import bundle_locations, load_bundle, resolve_bundle
from harness import checkpoint, flops, profiles
from harness.channel import CLOSED, Channel
from harness.clock import EventLog
from harness.data import CATALOG, get_tokenizer, prepare_dataset, resolve_root
from harness.evaluate import EvalProcess
from harness.fileio import atomic_write_json, cache_dir, check_free_space, file_lock, read_json, sha256_file
from harness.loader import validation_rows
from harness.plugins import RunInterrupted, StopSignals, SubmissionError, describe_folder, locate_submission
from harness.record import (
    REPO_ROOT,
    SCHEMA_VERSION,
    Record,
    Verdict,
    environment,
    harness_digest,
    harness_provenance,
    next_record_file,
    record_digest_problem,
    record_files,
    validate_record,
    write_record,
)
from harness.referee import CLOCK_TOLERANCE, judge
from harness.report import Progress, closing_lines, summary_table
from harness.tokenizer import Tokenizer
from harness.watch import (
    FileWatch,
    become_subreaper,
    changed_during,
    descendants,
    library_roots,
    reap_descendants,
)

LOSS_CURVE_POINTS = 200  # the record keeps about this many (step, loss) points
# What a record says of training, which an evals-only resume keeps from the session that trained (with the
# metrics other than val_bpb and CORE, the in-training evals and the exported program)
TRAINING_FIELDS = ("plan", "run", "data", "tokenizer", "training_time_s", "training_time_observed_s",
                   "worker_phases", "steps_completed", "loss_curve", "warmup", "budgets", "watch", "imported",
                   "memory", "harness")  # fmt: skip


def eval_pycache() -> Path:
    """The eval process's bytecode cache (harness/evaluate.py EvalProcess): the installation check covers it."""
    return cache_dir() / "pycache"


TORCHRUN_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_WORLD_SIZE",
    "ROLE_NAME",
)
EVAL_READY_S = 600.0  # the eval process's start and imports (seconds; 13 s on 2 slow cores with a cold cache)
RECORD_ROOM = 64 << 20  # bytes the referee wants free for its logs, inputs and record (the worker checks its own)
STOP_GRACE_S = {"cpu": 20.0, "cuda": 300.0}  # how long a stopping worker may take to save its checkpoint
WARMUP_LOSS_RTOL = {"cpu": 0.0, "cuda": 1e-3}  # bitwise on CPU; GPU kernels may reduce in another order


class UsageError(Exception):
    """Bad arguments or hardware for the asked profile: print the message and exit 2, no record."""


class RunFailed(Exception):
    """The run cannot produce a valid result; the message says what the referee found."""


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
    p.add_argument("--eval-every", type=int, help="in-training val_bpb every N steps (default: the profile's)")
    p.add_argument("--resume", action="store_true", help="continue --out's run from its last checkpoint")
    p.add_argument("--no-core", action="store_true", help="skip CORE (development; no CORE in the record)")
    p.add_argument("--wandb", metavar="PROJECT", help="log to Weights & Biases (offline unless WANDB_MODE=online)")
    args = p.parse_args(argv)
    if args.resume and args.out is None:
        p.error("--resume needs --out DIR, the run directory to continue")
    for name in ("depth", "max_steps", "checkpoint_every", "train_shards", "eval_every"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "checkpoint_every" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.max_per_task is not None and args.max_per_task != -1 and args.max_per_task < 1:
        p.error(f"--max-per-task must be -1 (every record) or positive, got {args.max_per_task}")
    if not 0 <= args.seed < 2**63:
        p.error(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    return args


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the command line and the profile decide, resolved once."""

    argv: list[str]
    submission: str
    profile: profiles.Profile
    out: Path
    seed: int
    depth: int | None  # None: the submission's own default
    max_steps: int | None  # the smaller of --max-steps and the profile's cap
    max_per_task: int | None  # CORE records per task; None: every record
    core: bool
    checkpoint_every: int
    eval_every: int  # in-training val_bpb cadence in steps
    resume: bool
    data_dir: Path | None
    eval_bundle: Path | None
    train_shards: int
    wandb: str | None
    world_size: int  # torchrun's WORLD_SIZE (1 without torchrun)

    def to_json(self) -> dict:
        """What the record keeps of the configuration (the command line is in record["command"])."""
        fields = ("seed", "depth", "max_steps", "max_per_task", "core", "checkpoint_every", "eval_every", "resume",
                  "train_shards", "world_size")  # fmt: skip
        return {name: getattr(self, name) for name in fields}

    @classmethod
    def resolve(cls, args: argparse.Namespace, argv: list[str], profile: profiles.Profile) -> Config:
        asked = profile.core_max_per_task if args.max_per_task is None else args.max_per_task
        return cls(
            argv=argv,
            submission=args.submission,
            profile=profile,
            out=args.out or default_out_dir(Path(args.submission).name),
            seed=args.seed,
            depth=args.depth or profile.default_depth,
            max_steps=min(filter(None, (args.max_steps, profile.max_steps)), default=None),
            max_per_task=None if asked == -1 else asked,
            core=not args.no_core,
            checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every or profile.eval_every,
            resume=args.resume,
            data_dir=args.data_dir,
            eval_bundle=args.eval_bundle,
            train_shards=args.train_shards,
            wandb=args.wandb,
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    # ---- under torchrun, rank 0 referees and every other rank is a training worker
    if int(os.environ.get("RANK", 0)) > 0:
        become_worker(argv)
    args = parse_args(argv)
    if args.resume:  # continue the run as it was started: its stored arguments, never new defaults
        try:
            args, argv = resume_arguments(args, argv)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    started, started_at = time.monotonic(), dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    # ---- profile and hardware: refuse a profile this machine cannot run, before anything else
    try:
        profile = profiles.resolve_profile(args.profile)
        fp = profiles.fingerprint()
        config = Config.resolve(args, argv, profile)
        problems = profiles.hard_mismatches(profile, fp, config.world_size)
        if problems:
            raise UsageError(
                f"cannot run profile {profile.name!r} here. Found: {profiles.describe_hardware(fp)}, world size "
                f"{config.world_size}. " + "; ".join(problems) + ". Use --profile auto to run what this machine can."
            )
        if os.environ.get("SPEEDRUN_DTYPE", "float32") not in ("float32", "bfloat16", "float16"):
            raise UsageError(f"SPEEDRUN_DTYPE={os.environ['SPEEDRUN_DTYPE']!r}: use float32, bfloat16 or float16")
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # ---- output directory: writable with room to spare, one run at a time, never over a finished record
    out = config.out
    try:
        check_out_dir(out, config.resume)
        lock = file_lock(out / "run", timeout=0)
        lock.acquire()
    except Timeout:
        print(f"error: another run is writing to {out}; wait for it or pass another --out", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record_path = next_record_file(out)  # reserved now: the record goes there whatever appears meanwhile
    events = EventLog(out / "events.jsonl")
    events.write("run_start", None, {"submission": config.submission, "profile": profile.name, "argv": argv})
    referee = Referee(config, events, fingerprint=fp, started_at=started_at)
    become_subreaper()  # whatever the worker leaves behind stays ours to find and end
    signals = StopSignals().install()

    # ---- the run itself: every way it can end produces a record
    try:
        referee.run(signals)
        referee.status = "finished"
    except RunInterrupted as exc:
        referee.status, referee.error = "interrupted", {"message": str(exc), "traceback": ""}
    except WorkerEnded as exc:
        referee.status, referee.error = exc.status, exc.error
    except Exception as exc:  # noqa: BLE001 - every failure must still produce a record
        message = str(exc) if isinstance(exc, SubmissionError | RunFailed) else f"{type(exc).__name__}: {exc}"
        referee.status = "failed"
        referee.error = {"message": message or type(exc).__name__, "traceback": traceback.format_exc()}
    finally:
        reap_descendants(spare=frozenset(referee.own))

    # ---- record: assembled in one place, judged, shown to the submission's observers as a copy, written once
    referee.close_training()
    referee.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    referee.verdict = judge(Record.from_json(referee.assemble()))
    planted = referee.observe(signals)
    if planted:  # the numbers stand, but the machine is not the one they were measured on any more
        referee.status = "failed"
        referee.error = {"message": f"files of the Python installation changed while run_finished ran: "
                                    f"{', '.join(planted[:3])}; a submission may not change the installation "
                                    f"(docs/rules.md)", "traceback": ""}  # fmt: skip
        if referee.watch is not None:
            seen = referee.watch["libraries_changed"]
            seen += [path for path in planted if path not in seen]
        referee.verdict = judge(Record.from_json(referee.assemble()))
    signals.deferring = True  # a signal now is noted, not allowed to cut the record short
    referee.close_phases()
    events.write("run_stop", None, referee.status)
    referee.wall_time_s = round(time.monotonic() - started, 3)
    record = referee.assemble()
    path = save_record(record_path, record, events)
    if not validate_record(record):  # an invalid one was kept aside with the schema's errors (save_record)
        written = Record.from_json(record)
        if referee.wandb is not None:
            referee.wandb.run_finished(written)
        print(summary_table(written))
        print(closing_lines(written, path, out))
    reap_descendants()  # the referee's own helpers too, now that nothing is left to log
    if record["error"]:
        print(f"{record['status']}: {record['error']['message']}", file=sys.stderr)
    events.close()
    lock.release()
    signals.uninstall()
    return 0 if record["status"] == "finished" else 1


def save_record(path: Path, record: dict, events: EventLog) -> Path:
    """Write the record at the path reserved for it when the run started (beside any earlier record of the run,
    never over one), and its sha256 into events.jsonl. On a full or failing disk, write it where there is room,
    or print it whole: a record is never lost."""
    out = path.parent
    try:
        write_record(path, record, reserved=True)
        events.write("record_written", None, {"file": path.name, "sha256": sha256_file(path)})  # leaderboard add
        return path
    except ValueError as exc:  # the referee built a record its own schema refuses: a harness bug, but keep it
        kept = path.with_name(path.stem + ".invalid.json")
        print(f"error: {exc}\nThis is a bug in the harness: please report it. The record is kept in {kept}.",
              file=sys.stderr)  # fmt: skip
        atomic_write_json(kept, record)
        return kept
    except OSError as exc:
        size = len(json.dumps(record))
        elsewhere = Path(tempfile.gettempdir()) / f"speedrun-record-{out.name}-{os.getpid()}.json"
        print(f"error: cannot write {path} ({exc.strerror or exc}; the record needs {size / 1024:.0f} KB): "
              f"writing it to {elsewhere} instead; move it into {out} when there is room", file=sys.stderr)  # fmt: skip
        try:
            write_record(elsewhere, record)
            return elsewhere
        except OSError:
            print("error: that failed too; the record follows on stderr:\n" + json.dumps(record), file=sys.stderr)
            return path


def resume_arguments(args: argparse.Namespace, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The arguments of the run that ``--resume --out DIR`` continues: as it was started (its last record's
    command, or its checkpoint's), with --resume. A flag given again must agree with them; a finished run is
    never resumed."""
    out = args.out
    records = record_files(out)
    stored = None
    if records:
        last = read_json(records[-1], "the record is damaged; start a new run with another --out", UsageError)
        if last["status"] == "finished":
            raise UsageError(f"{records[-1]} is a finished run, and a finished record is never replaced; start "
                             f"a new run with another --out")  # fmt: skip
        stored = last["command"][3:]  # [python, -m, harness.run, *argv]
    meta = checkpoint.latest_meta(out)
    if stored is None and meta is not None:
        stored = meta.get("argv")
    if stored is None:
        raise UsageError(f"--resume: {out} holds no record and no intact checkpoint to continue; start a new run")
    original = parse_args([arg for arg in stored if arg != "--resume"])
    given = {token.split("=")[0][2:].replace("-", "_") for token in argv if token.startswith("--")}
    given -= {"resume", "out"}
    conflicts = [f"--{name.replace('_', '-')} {getattr(args, name)} (the run used {getattr(original, name)})"
                 for name in sorted(given) if getattr(args, name) != getattr(original, name)]  # fmt: skip
    same_submission = Path(args.submission).resolve() == Path(original.submission).resolve()
    if args.submission != original.submission and not same_submission:
        conflicts.append(f"submission {args.submission} (the run used {original.submission})")
    if conflicts:
        raise UsageError(f"--resume continues {out} as it was started ({' '.join(stored)}); these differ: "
                         f"{'; '.join(conflicts)}. Drop them, or start a new run with another --out")  # fmt: skip
    effective = without_flag([arg for arg in stored if arg != "--resume"], "--out")
    effective += ["--out", str(out), "--resume"]
    return parse_args(effective), effective


def without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag VALUE`` or ``--flag=VALUE``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def become_worker(argv: list[str]) -> None:
    """A torchrun rank other than 0: replace this process with a training worker (rank 0's referee feeds it)."""
    args = parse_args(argv)
    device_type = profiles.resolve_profile(args.profile).device_type
    cmd = [sys.executable, "-m", "harness.worker", "--device-type", device_type]
    os.execv(sys.executable, cmd)


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
    if resume and not finished and checkpoint.latest_meta(out) is None:
        raise UsageError(f"--resume: no intact checkpoint under {out / checkpoint.CHECKPOINTS_DIR}; start a new run")


# ------------------------------------------------------------------------------------------------
# The referee


class WorkerEnded(Exception):
    """The worker stopped before finishing: failed, diverged or interrupted, as it (or the referee) reported."""

    def __init__(self, status: str, error: dict):
        super().__init__(error["message"])
        self.status, self.error = status, error


class Referee:
    """The run as the referee sees it: its own phases, the worker's reports, and the record assembled from them."""

    def __init__(self, config: Config, events: EventLog, fingerprint: dict, started_at: str):
        self.config, self.events = config, events
        self.profile = config.profile
        self.phases: dict[str, float] = defaultdict(float)  # seconds per phase, on the referee's clock
        self.current, self.since = "start", time.monotonic()  # the bundle and the submission's files
        self.worker_phases: dict[str, float] = {}
        self.reports: dict[str, dict] = {}  # the last message of each kind from the worker
        self.step_seconds: list[float] = []  # as the worker timed them
        self.step_observed: list[float] = []  # as the referee saw them
        self.losses: dict[int, float] = {}
        self.resumed_train_s = 0.0  # training time of the sessions before a --resume, from the checkpoint
        self.loop_start = 0  # the step the training loop started at (0, or the checkpoint's)
        # The training worker's reports the record is made of (an observer's worker replaces self.reports later)
        self.plan_report: dict | None = None
        self.summary: dict | None = None  # its totals at the end of training
        self.warmup_report: dict | None = None
        self.step = 0
        self.step_began = 0.0
        self.probing = False  # the probe's own phases all count as "probe"
        self.progress: Progress | None = None
        self.wandb = None
        self.evals: EvalProcess | None = None  # the referee's eval process, started early (start_evals)
        self.code_ran: list[tuple[float, float]] = []  # wall-clock spans of each worker's life
        # The referee's own processes, which no reaper ends before the record is written: the eval process, the
        # training worker while it waits for its inputs, wandb's service.
        self.own: set[int] = set()

        # What the record says, each fact kept where it becomes known; assemble() makes the record of them.
        self.started_at, self.fingerprint = started_at, fingerprint
        self.harness = harness_provenance()  # now, before any submission code: the end of the run is checked against it
        self.environment = environment()
        self.status, self.error = "failed", None  # until the run says otherwise
        self.finished_at: str | None = None
        self.verdict = Verdict()  # judged once the run has ended (main)
        self.wall_time_s = 0.0
        self.submission: dict | None = None  # describe_folder, with the overrides the probe reported
        self.memory: dict | None = None  # the plan's estimated peak per GPU, from the probe
        self.data: dict | None = None  # the dataset's description and the submission's choice
        self.tokenizer: dict | None = None
        self.bundle: dict | None = None
        self.loss_curve: list[list] = []
        self.monitor_evals: list[dict] = []  # the worker's in-training val_bpb, on the monitor rows
        self.budgets: dict | None = None  # the untimed phases against their budgets, once training has ended
        self.watch: dict | None = None  # what the file watch, the installation check and the reaper saw
        self.program: dict | None = None  # the exported model: path and sha256 when the worker exited
        self.evaluated: dict | None = None  # the referee's eval process's result
        self.checkpoint: str | None = None  # where an interrupted worker saved its state
        self.before: dict | None = None  # an evals-only resume: the record of the session that trained

    # -- phases on the referee's clock: each moment of the run belongs to exactly one --------------------------

    def enter(self, name: str, at: float | None = None, **info) -> None:
        # A message the reader thread stamped before the referee itself changed phase counts from that change.
        at = max(time.monotonic() if at is None else at, self.since)
        seconds = at - self.since
        self.phases[self.current] += seconds
        if self.current not in ("train", "log"):
            self.events.write("phase_stop", self.current, {"seconds": round(seconds, 6)}, at=at)
        if name not in ("train", "log"):
            self.events.write("phase_start", name, info or None, at=at)
        self.current, self.since = name, at

    def close_phases(self) -> None:
        self.enter("record")
        self.phases["record"] += time.monotonic() - self.since
        self.since = time.monotonic()

    # -- the run ------------------------------------------------------------------------------------------------

    def run(self, signals: StopSignals) -> None:
        config, profile = self.config, self.profile
        out = config.out

        folder = locate_submission(config.submission)
        self.submission = describe_folder(folder, None if Path(config.submission).exists() else config.submission)
        before = previous_record(out) if config.resume else None
        if before is not None and before.get("program") and before["steps_completed"] == before["plan"]["num_steps"]:
            return self.evals_only(before, resolve_bundle(config.eval_bundle) if config.core else None, signals)

        # ---- the referee's eval process and the training worker start now and import while the probe and the setup
        # run, then wait: the eval process for the exported model (on a first run its bytecode is written before
        # any submission code runs), the worker for its inputs (it runs no submission code until then)
        evals = self.start_evals()
        if evals.writes_bytecode:
            evals.wait_ready(EVAL_READY_S)
        training = self.start_worker()
        self.own.add(training[0].pid)

        # ---- the submission's dataset choice, from a short-lived worker (the referee never imports it); the
        # evaluation files already on this machine are watched while it runs, as they are during training
        self.enter("probe")
        inputs = out / "inputs"
        probe_config = self.worker_config(out, run={**self.run_fields(), "vocab_size": profile.vocab_size,
                                                     "bos_token_id": -1})  # fmt: skip
        atomic_write_json(inputs / "probe.json", probe_config)
        watch = FileWatch(evaluation_files_here(config))
        try:
            self.follow_worker(inputs / "probe.json", signals, mode=["--probe"])
        finally:
            touched = watch.close()
        if touched:
            raise RunFailed(f"the submission opened files it must not read while it chose its dataset "
                            f"(select_dataset): {', '.join(touched[:3])}; the evaluation data is the referee's alone "
                            f"(docs/rules.md)")  # fmt: skip
        loaded = self.reports.get("loaded")
        self.submission["overrides"] = list(loaded["overrides"]) if loaded else []
        selected = self.reports["dataset"]["selected"]
        if "memory" in self.reports:  # the plan's estimated peak per GPU (harness/memory.py), checked before data
            self.memory = {k: self.reports["memory"][k] for k in ("allocated", "required", "capacity")}

        # ---- the eval bundle, after the submission's own mistakes (the probe) and before any long work
        self.enter("setup")
        bundle = resolve_bundle(config.eval_bundle) if config.core else None

        # ---- data and tokenizer, verified against their digests; the held-out rows of the in-training val_bpb
        dataset_name = selected if selected.startswith("hf:") else (profile.dataset or selected)
        dataset = prepare_dataset(dataset_name, train_shards(config, dataset_name), data_dir=config.data_dir)
        tokenizer = get_tokenizer(dataset, profile.vocab_size)
        tokenizer.save(out / "tokenizer.json")
        self.data = {**dataset.describe(), "selected": selected}
        self.tokenizer = {"digest": tokenizer.digest, "vocab_size": tokenizer.vocab_size}
        self.bundle = describe_bundle(bundle)
        monitor = monitor_rows(dataset.val_file, tokenizer, profile)
        if monitor is not None:
            torch.save(monitor, inputs / "monitor_rows.pt")
        worker_config = self.worker_config(
            out,
            run={**self.run_fields(), "vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.bos_token_id},
            train_files=[str(f) for f in dataset.train_files],
            tokenizer=str(out / "tokenizer.json"),
            tokenizer_digest=tokenizer.digest,
            monitor_rows=str(inputs / "monitor_rows.pt") if monitor is not None else None,
        )
        atomic_write_json(inputs / "worker.json", worker_config)
        check_free_space(out, RECORD_ROOM)
        if config.wandb:
            from harness.wandb_observer import WandbObserver  # only when asked for: importing wandb takes seconds

            self.wandb = WandbObserver(
                config.wandb, out.name, {"submission": config.submission, "profile": profile.name, "argv": config.argv}
            )
            # wandb's service process is the referee's own, not something a worker left behind. The probe's
            # leftovers are ended by now, so every descendant alive here is the referee's.
            self.own |= set(descendants())

        # ---- training, in the worker; the referee watches the files the worker must not read
        watched = [dataset.val_file] + ([bundle.root] if bundle is not None else [])
        self.evals.wait_ready(EVAL_READY_S)  # an eval process that cannot start is named now, not after training
        watch = FileWatch(watched)
        left_behind = self.follow_worker(inputs / "worker.json", signals, started=training)
        touched = watch.close()
        # Provenance of what actually ran: the harness, evals, baselines and every repository file the worker
        # imported; uncommitted changes make the run ineligible and their text is kept in the record.
        own = Path(self.submission["path"])  # the submission's files are embedded whatever their git state
        imported = [f for f in self.summary["imported"] if not (REPO_ROOT / f).resolve().is_relative_to(own)]
        self.harness = {**harness_provenance(imported), "source_digest": self.harness["source_digest"]}

        # ---- the referee's evals of the exported program start now, while the referee checks the run: the clocks
        # agree, the warm-up restored everything, nothing the referee relies on was read or changed
        self.enter("eval")
        signals.deferring = True  # from here a signal stops the evals, which keep the exported model (finish_evals)
        exported = self.reports["exported"]
        self.program = {"path": exported["path"], "sha256": exported["sha256"]}
        self.evaluate(Path(exported["path"]), exported["sha256"], dataset, tokenizer, bundle)
        changed = self.installation_changes()
        self.watch = {"available": watch.available, "watched": [str(p) for p in watched], "touched": touched,
                      "libraries_changed": changed, "left_behind": len(left_behind)}  # fmt: skip
        problems = [*self.clock_problems(), *self.warmup_problems()]
        if touched:
            problems.append(f"the worker opened files it must not read: {', '.join(touched[:3])} (the evaluation "
                            f"data is the referee's alone)")  # fmt: skip
        if changed:
            problems.append(f"files of the Python installation changed while submission code ran: "
                            f"{', '.join(changed[:3])}")  # fmt: skip
        if harness_digest() != self.harness["source_digest"]:
            problems.append("harness or eval source files changed on disk during the run")
        data_now = prepare_dataset(dataset.name, train_shards(config, dataset.name), data_dir=config.data_dir)
        if data_now.digest != dataset.digest:
            problems.append(f"dataset {dataset.name} shards changed during the run")
        if bundle is not None and load_bundle(bundle.root).digest != bundle.digest:
            problems.append("the eval bundle changed during the run")
        if problems:
            self.evals.kill()
            raise RunFailed("; ".join(problems) + ". The referee's code, clock and files may not be touched by a "
                            "submission (docs/rules.md).")  # fmt: skip
        self.record_evals(self.finish_evals(Path(exported["path"]), signals))

    def record_evals(self, evaluated: dict) -> None:
        """What the referee's eval process measured (the calibration, val_bpb on the fixed rows, CORE): kept for the
        record, and written to the events."""
        self.evaluated = evaluated
        trained = self.resumed_train_s + sum(self.step_seconds) if self.step_seconds else self.training_time_s()
        self.events.write("val_bpb", self.step, {"val_bpb": evaluated["val_bpb"], "rows": "validation",
                          "training_time_s": round(trained, 6)})  # fmt: skip
        if self.bundle is not None:
            core = evaluated["core"]
            self.events.write("core", self.step, core["core"] if core["core"] is not None else core["core_partial"])

    def evals_only(self, before: dict, bundle, signals: StopSignals) -> None:
        """Resume a run whose training finished but whose evals did not (a signal, a killed eval process): the
        referee evaluates the exported program again; the record keeps what the training session recorded."""
        out = self.config.out
        print(f"resuming {out}: training finished at step {before['steps_completed']}; evaluating the exported "
              f"model again", flush=True)  # fmt: skip
        self.before = before
        self.monitor_evals = [e for e in before["evals"] if e.get("rows") != "validation"]
        self.program = {"path": before["program"]["path"], "sha256": before["program"]["sha256"]}
        self.step = before["steps_completed"]
        self.enter("setup")
        name = before["data"]["dataset"]
        dataset = prepare_dataset(name, train_shards(self.config, name), data_dir=self.config.data_dir)
        tokenizer = Tokenizer.load(out / "tokenizer.json")
        if tokenizer.digest != before["tokenizer"]["digest"]:
            raise RunFailed(f"{out / 'tokenizer.json'} is not the tokenizer the run trained with; it changed on disk")
        self.bundle = describe_bundle(bundle)
        self.enter("eval")
        signals.deferring = True
        program = Path(self.program["path"])
        self.start_evals()
        self.evaluate(program, self.program["sha256"], dataset, tokenizer, bundle)
        self.record_evals(self.finish_evals(program, signals))

    def observe(self, signals: StopSignals) -> list[str]:
        """The submission's run_finished observers see a copy of the record, in a worker of their own, before the
        referee writes the record itself: nothing they do to files can change it. Returns the files of the
        installation they changed (installation_changes)."""
        loaded = self.reports.get("loaded")
        if loaded is None or "run_finished" not in loaded["overrides"]:
            return []
        self.enter("observe")
        copy = self.config.out / "inputs" / "record.json"
        atomic_write_json(copy, self.assemble())
        try:
            inputs = self.config.out / "inputs"
            config_file = inputs / "worker.json" if (inputs / "worker.json").exists() else inputs / "probe.json"
            self.follow_worker(config_file, signals, mode=["--observe", str(copy)])
        except (WorkerEnded, RunInterrupted) as exc:
            print(f"warning: run_finished failed: {exc}", file=sys.stderr)
        return self.installation_changes(self.code_ran[-1:])

    def installation_changes(self, spans: list[tuple[float, float]] | None = None) -> list[str]:
        """Files of the Python installation or of the eval process's bytecode cache changed while submission code
        ran (every worker's life: the probe, the training worker, the observers): a startup hook or a patched
        library would run in the referee's later processes, and in the next run's referee."""
        return changed_during(self.code_ran if spans is None else spans, [*library_roots(), eval_pycache()])

    def run_fields(self) -> dict:
        config, profile = self.config, self.profile
        return {"profile": profile.name, "seed": config.seed, "seq_len": profile.seq_len, "depth": config.depth,
                "max_steps": config.max_steps, "max_batch_tokens": profile.max_batch_tokens}  # fmt: skip

    def worker_config(self, out: Path, run: dict, **fields) -> dict:
        config = self.config
        return {
            "submission": config.submission,
            "out": str(out),
            "run": run,
            "resume": config.resume,
            "warmup_steps": self.profile.warmup_steps,
            "eval_every": config.eval_every,
            "checkpoint_every": config.checkpoint_every,
            "world_size": config.world_size,
            # What a checkpoint records of the run, and a resume must match (checked before loading weights).
            "identity": {
                "argv": config.argv,
                "source_digest": self.submission["source_digest"],
                "seed": config.seed,
                "depth": config.depth,
                "world_size": config.world_size,
            },  # fmt: skip
            **fields,
        }

    # -- following a worker ------------------------------------------------------------------------------------

    def start_worker(self, mode: list[str] | None = None) -> tuple[subprocess.Popen, Channel]:
        """Start a worker process that imports the harness and waits for its inputs (follow_worker gives them): the
        training worker, or with ``mode`` a short one (``--probe``: the dataset choice; ``--observe RECORD``:
        run_finished). Until then it runs no submission code, so the referee starts the training worker while it
        prepares the data."""
        channel = Channel()
        cmd = [sys.executable, "-m", "harness.worker", "--device-type", self.profile.device_type, *(mode or [])]
        # The worker is not told where the evaluation data is (and the referee watches it: harness/watch.py). A
        # short worker runs alone: under torchrun it must not take rank 0's place in the process group.
        hidden = {"SPEEDRUN_EVAL_BUNDLE", *(TORCHRUN_ENV if mode else ())}
        env = {k: v for k, v in os.environ.items() if k not in hidden and not (mode and k.startswith("TORCHELASTIC_"))}
        proc = subprocess.Popen(cmd, env=env | channel.env, stdin=subprocess.PIPE, start_new_session=True)
        return proc, channel

    def follow_worker(self, config_file: Path, signals: StopSignals, mode: list[str] | None = None,
                      started: tuple[subprocess.Popen, Channel] | None = None) -> list[int]:  # fmt: skip
        """Give a worker its inputs and follow it until it exits: the one ``start_worker`` started ahead, or a new
        one with ``mode``; a short worker's time counts as one phase.

        Returns the processes it left behind (ended). Raises WorkerEnded when it reports a failure, hangs, or
        exits without saying it finished.
        """
        proc, channel = started or self.start_worker(mode)
        self.own.discard(proc.pid)  # its own now: what it leaves behind is ended
        self.reports = {}
        device_type = self.profile.device_type
        self.probing = mode is not None
        if mode is None:
            self.enter("worker_start")
        # Submission code runs from here (the span installation_changes checks; wall clock, as file times are).
        began = time.time()
        try:
            proc.stdin.write(f"{config_file}\n".encode())
            proc.stdin.close()
        except OSError:  # it died while waiting: it said why on stderr, and the loop below names how it ended
            pass
        signals.deferring = True
        stopping_since = None
        try:
            while True:
                received = channel.next(timeout=0.2)
                if received is not None:
                    self.handle(*received)
                    if received[1]["kind"] == CLOSED:
                        break
                    continue
                if proc.poll() is not None and channel.messages.empty():
                    break
                if signals.received and stopping_since is None:
                    stopping_since = time.monotonic()
                    _signal_group(proc, signal.SIGTERM)  # the worker stops at its next step boundary and saves
                grace = STOP_GRACE_S[device_type]
                if stopping_since is not None and time.monotonic() - stopping_since > grace:
                    self.kill(proc)
                    raise RunInterrupted(f"received {signals.received[0]}; the worker did not stop within {grace:.0f} "
                                         f"s and was killed (no checkpoint saved)")  # fmt: skip
                hung = self.hung()
                if hung:
                    self.kill(proc)
                    raise WorkerEnded("failed", {"message": hung, "traceback": ""})
            returncode = proc.wait()
        finally:
            signals.deferring = False
            channel.close()
            if self.progress is not None:
                self.progress.close()
            left_behind = reap_descendants(spare=frozenset(self.own))  # whatever the worker started ends with it
            self.code_ran.append((began, time.time()))
        self.probing = False
        stopped_in = self.current  # for a worker that exits without a word: where it was
        self.enter("worker_exit")
        error = self.reports.get("error")
        if error is not None:
            if error["status"] == "interrupted":
                self.checkpoint = error.get("checkpoint")
            details = {"step": error["step"], "last_finite_loss": error["last_finite_loss"]} if (
                error["status"] == "diverged") else {}  # fmt: skip
            raise WorkerEnded(error["status"], {"message": error["message"], "traceback": error.get("traceback", ""),
                                                **details})  # fmt: skip
        if "done" not in self.reports:
            raise WorkerEnded("failed", {"message": self.silent_exit(returncode, stopped_in), "traceback": ""})
        if signals.received:
            raise RunInterrupted(f"received {signals.received[0]}")
        return left_behind

    def handle(self, at: float, message: dict) -> None:
        """One message from the worker: advance the referee's timeline and keep what it says."""
        kind = message["kind"]
        self.reports[kind] = message
        if self.probing:
            return
        if kind == "plan":
            self.plan_report = message
        elif kind == "summary":
            self.summary = message
        if kind == "phase_start":
            self.enter(str(message.get("name")), at)
        elif kind == "phase_stop":
            self.enter("log" if "loop_start" in self.reports and "loop_stop" not in self.reports else "worker", at)
        elif kind == "step_start":
            self.enter("train", at)
            self.step_began = at
        elif kind == "step_stop":
            self.enter("log", at)
            self.step_seconds.append(float(message["seconds"]))
            self.step_observed.append(at - self.step_began)
        elif kind == "metrics":
            self.step = int(message["step"]) + 1
            step = int(message["step"])
            self.losses[step] = message["loss"]
            num_steps = self.reports["plan"]["plan"]["num_steps"]
            if step % max(1, num_steps // LOSS_CURVE_POINTS) == 0 or step + 1 == num_steps:
                self.loss_curve.append([step, round(message["loss"], 6)])
                self.events.write("train_loss", step, {"loss": round(message["loss"], 6),
                                  "lr_mult": message.get("lr_mult"),
                                  "training_time_s": round(self.resumed_train_s + sum(self.step_seconds), 6)},
                                  at=at)  # fmt: skip
            metrics = self.step_metrics(message)
            self.progress.update(self.step - 1, metrics)
            if self.wandb is not None:
                self.wandb.log_metrics(self.step - 1, metrics)
        elif kind == "loop_start":
            self.enter("log", at)
            self.step = self.loop_start = int(message["step"])
            self.progress = Progress(int(message["num_steps"]), self.step, enabled=True)
            self.events.write("loop_start", self.step, None, at=at)
        elif kind == "loop_stop":
            self.enter("worker", at)
            self.events.write("train_segment", message["step"], {"train_s": round(self.phases["train"], 6),
                              "log_s": round(self.phases["log"], 6), "steps": len(self.step_seconds)},
                              at=at)  # fmt: skip
        elif kind == "eval":
            self.monitor_evals.append({"step": message["step"], "val_bpb": message["val_bpb"], "rows": "monitor"})
            print(f"step {message['step']:>6} | val_bpb {message['val_bpb']:.4f} (held-out rows)", flush=True)
            trained_s = round(self.resumed_train_s + sum(self.step_seconds), 6)
            value = {"val_bpb": message["val_bpb"], "rows": "monitor", "training_time_s": trained_s}
            self.events.write("val_bpb", message["step"], value, at=at)
        elif kind == "warmup":
            self.warmup_report = message
            self.events.write("warmup_restored", None, {"state_digest": message["state_digest"],
                              "first_loss": message["first_loss"]}, at=at)  # fmt: skip
        elif kind == "resumed":
            self.step = int(message["step"])
            self.resumed_train_s = float(message["training_time_s"])
            print(f"resuming from step {self.step} of {self.plan_report['plan']['num_steps']}", flush=True)
            self.carry_over(self.step)
            self.events.write("resumed", self.step, None, at=at)
        elif kind == "checkpoint":
            self.events.write("checkpoint", message["step"], message["path"], at=at)
        elif kind == "phases":
            self.worker_phases = {k: float(v) for k, v in message["phases"].items()}
        elif kind == "garbled":
            raise WorkerEnded("failed", {"message": "the worker sent a message that is not a JSON object",
                                         "traceback": ""})  # fmt: skip

    def step_metrics(self, message: dict) -> dict:
        """What a step line shows and wandb logs: the worker's loss and schedule, the referee's throughput."""
        plan = self.reports["plan"]
        step_time = sum(self.step_seconds) / max(1, len(self.step_seconds))
        tokens_per_s = plan["plan"]["total_batch_tokens"] / max(step_time, 1e-9)
        metrics = {k: v for k, v in message.items() if k not in ("kind", "step")}
        remaining = plan["plan"]["num_steps"] - self.step
        trained = self.resumed_train_s + sum(self.step_seconds)
        return {**metrics, "tokens_per_s": tokens_per_s, "mfu": self.mfu(tokens_per_s), "eta_s": step_time * remaining,
                "step_ms": 1000 * step_time, "trained_s": trained}  # fmt: skip

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation of the fingerprinted GPUs (None on CPU or an unlisted GPU)."""
        gpus = self.fingerprint["gpus"]
        if not gpus or self.plan_report is None:
            return None
        plan, world = self.plan_report["plan"], self.plan_report["run"]["world_size"]
        return flops.mfu(plan["flops_per_token"], tokens_per_s, gpus[0]["name"], num_gpus=world)

    def hung(self) -> str | None:
        """Why the worker counts as hung, or None: no message for longer than the limit of what it is doing."""
        quiet = time.monotonic() - self.since
        if self.current in ("train", "log"):
            median = statistics.median(self.step_observed) if self.step_observed else 0.0
            limit = max(self.profile.hang_floor_s, 20 * median)
            where = (
                f"train_step at step {self.step}" if self.current == "train" else f"log_metrics after step {self.step}"
            )
        else:
            share, floor = self.profile.budgets.get(self.current, (0.0, 0.0))
            limit = 2 * floor if floor and not share else self.profile.hang_cap_s
            where = {"build": "build_model, plan_training, build_optimizer or build_schedule",
                     "load": "importing the submission"}.get(self.current, f"the {self.current} phase")  # fmt: skip
        if quiet <= limit:
            return None
        return f"hung in {where}: no progress for {quiet:.0f} s (limit {limit:.0f} s); the worker was killed"

    def kill(self, proc: subprocess.Popen) -> None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def silent_exit(self, returncode: int, phase: str) -> str:
        how = (
            f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with code {returncode}"
        )
        return (
            f"the worker {how} in the {phase} phase at step {self.step} without reporting why: a "
            f"submission must not end the process (sys.exit, os._exit) or crash the interpreter"
        )

    def carry_over(self, step: int) -> None:
        """A resumed run's record continues the curves of the record the referee wrote when the run stopped."""
        before = previous_record(self.config.out)
        if before is None:
            return
        self.loss_curve = [point for point in before["loss_curve"] if point[0] < step]
        self.monitor_evals = [e for e in before["evals"] if e["step"] <= step and e.get("rows") != "validation"]

    # -- the record: assembled in one place from what the referee saw and what it was told ----------------------

    def assemble(self) -> dict:
        """The record's JSON, every field decided here from the referee's observations and the reports of the worker
        and the eval process (docs/audit.md says which is which). It changes nothing: main calls it to judge the
        run, for the observers' copy, and to write the record."""
        config, plan, summary, evaluated = self.config, self.plan_report, self.summary, self.evaluated or {}
        steps = self.loop_start + len(self.step_seconds) if plan else 0
        run = None
        if plan is not None:
            run = {"seed": config.seed, "world_size": plan["run"]["world_size"], "dtype": plan["run"]["dtype"],
                   "depth": plan["depth"], "device": plan["run"]["device"].split(":")[0]}  # fmt: skip
            if summary is not None:
                run |= {"attention_backend": summary["attention_backend"], "compiled": summary["compiled"]}
        data = None
        if self.data is not None:
            data = {**self.data, "stream_digest": summary["stream_digest"] if summary else None,
                    "tokens_consumed": plan["plan"]["total_batch_tokens"] * steps if plan else 0}  # fmt: skip
        bundle = self.bundle
        if bundle is not None and self.evaluated is not None:
            bundle = {**bundle, "max_per_task": config.max_per_task or -1, "evaluated_in": "referee"}
        validation = []
        if self.evaluated is not None:
            validation = [{"step": self.step, "val_bpb": evaluated["val_bpb"], "rows": "validation",
                           "rows_sha256": evaluated["val_rows_sha256"]}]  # fmt: skip
        record = {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "submission": self.submission,
            "harness": self.harness,
            "command": [sys.executable, "-m", "harness.run", *config.argv],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "environment": self.environment,
            "profile": self.profile.name,
            "fingerprint": self.fingerprint,
            "calibration": evaluated.get("calibration", {}),
            "eligibility": self.verdict.to_json(),
            "resumed": config.resume,
            "run": run,
            "plan": None if plan is None else {**plan["plan"], "grad_accum": plan["grad_accum"]},
            "data": data,
            "tokenizer": self.tokenizer,
            "eval_bundle": bundle,
            "training_time_s": self.training_time_s(),
            "wall_time_s": self.wall_time_s,
            "phases": {k: round(v, 6) for k, v in sorted(self.phases.items())},
            "steps_completed": steps,
            "metrics": self.metrics(),
            "evals": [*self.monitor_evals, *validation],
            "loss_curve": self.loss_curve,
            "error": self.error,
            "config": config.to_json(),
        }
        warmup = None
        if summary is not None and self.warmup_report is not None:
            warmup = {"first_loss": self.warmup_report["first_loss"], "first_step_loss": self.losses.get(0),
                      "state_digest": self.warmup_report["state_digest"]}  # fmt: skip
        non_finite = None
        if "val_bpb" in evaluated.get("non_finite", {}):  # the eval process wrote null: say what it was
            non_finite = {"metrics.val_bpb": evaluated["non_finite"]["val_bpb"]}
        optional = {  # written only when known
            "checkpoint": self.checkpoint,
            "training_time_observed_s": round(self.resumed_train_s + self.phases.get("train", 0.0), 6),
            "budgets": self.budgets,
            "worker_phases": {k: round(v, 6) for k, v in sorted(self.worker_phases.items())} if summary else None,
            "warmup": warmup,
            "imported": summary["imported"] if summary else None,
            "watch": self.watch,
            "program": None if self.program is None else {**self.program, **evaluated.get("program", {})},
            "memory": self.memory,
            "events_error": self.events.error or None,
            "non_finite": non_finite,
        }
        record |= {key: value for key, value in optional.items() if value is not None}
        if self.before is not None:  # an evals-only resume: what the training session recorded stands
            record |= {key: self.before[key] for key in TRAINING_FIELDS if key in self.before}
            trained = {k: v for k, v in self.before["metrics"].items() if not k.startswith(("core", "val"))}
            record["metrics"] |= trained
        return record

    def metrics(self) -> dict:
        """The loss and throughput the referee counted, the peak memory the worker measured, val_bpb and CORE from
        the eval process."""
        evaluated = self.evaluated or {}
        metrics = {"final_loss": None, "val_bpb": evaluated.get("val_bpb"), "core": None, "core_partial": None,
                   "core_label": None, "core_tasks": {}}  # fmt: skip
        if self.bundle is not None and self.evaluated is not None:
            core = evaluated["core"]
            metrics |= {"core": core["core"], "core_partial": core["core_partial"],
                        "core_label": "CORE" if core["core"] is not None else "core_partial",
                        "core_tasks": core["per_task"]}  # fmt: skip
        if self.summary is not None:
            metrics["peak_memory_gb"] = self.summary["peak_memory_gb"]
        if self.plan_report is not None:
            metrics["final_loss"] = self.loss_curve[-1][1] if self.loss_curve else None
            metrics["step_time_median_s"] = statistics.median(self.step_seconds) if self.step_seconds else None
            if self.step_seconds:
                batch = self.plan_report["plan"]["total_batch_tokens"]
                metrics["tokens_per_s"] = batch * len(self.step_seconds) / max(sum(self.step_seconds), 1e-9)
                metrics["mfu"] = self.mfu(metrics["tokens_per_s"])
        return metrics

    def training_time_s(self) -> float:
        """The worker's clock: the slowest rank's total when it reported one, else rank 0's steps as they came."""
        if self.before is not None:
            return self.before["training_time_s"]
        if self.plan_report is None:
            return 0.0
        return self.summary["training_time_s"] if self.summary else self.resumed_train_s + sum(self.step_seconds)

    def close_training(self) -> None:
        """Once the run has ended: the untimed phases against their budgets, and each step's time by both clocks in
        events.jsonl. An evals-only resume keeps the training session's."""
        if self.before is not None:
            return
        self.budgets = self.budget_report()
        if self.plan_report is not None and self.step_seconds:
            first = self.loop_start
            self.events.write("step_times", first, [round(s, 6) for s in self.step_seconds])  # the worker's clock
            self.events.write("step_times_observed", first, [round(s, 6) for s in self.step_observed])

    # -- the referee's checks of what the worker reported ------------------------------------------------------

    def clock_problems(self) -> list[str]:
        """The worker's clock against the referee's, phase by phase."""
        share, floor = CLOCK_TOLERANCE
        # A resumed worker's clock starts from the checkpoint's training time; the referee saw this session only.
        # Rank 0's own clock, the one the referee watches (the record's training_time_s is the slowest rank's, whose
        # timed steps also hold its waits for rank 0 at the collectives).
        reported = {**self.worker_phases, "train": self.worker_phases.get("train", 0.0) - self.resumed_train_s}
        problems = []
        for name, worker_s in sorted(reported.items()):
            seen = self.phases.get(name, 0.0)
            tolerance = max(share * seen, floor)
            if abs(worker_s - seen) > tolerance:
                problems.append(f"the worker reported {name} {worker_s:.1f} s but the referee observed {seen:.1f} s "
                                f"(tolerance {tolerance:.1f} s): the worker's clock was tampered with")  # fmt: skip
        # The run's training time is the slowest rank's: never below rank 0's, and rank 0's alone on one rank.
        total, own = self.summary["training_time_s"], self.worker_phases.get("train", 0.0)
        tolerance = max(share * own, floor)
        alone = self.reports["plan"]["run"]["world_size"] == 1
        if total < own - tolerance or (alone and total > own + tolerance):
            problems.append(f"the worker reported train {total:.1f} s as the run's training time but its own steps "
                            f"add up to {own:.1f} s: the worker's clock was tampered with")  # fmt: skip
        return problems

    def warmup_problems(self) -> list[str]:
        """After the warm-up restore the first timed step sees the warm-up's first batch and state: same loss."""
        warmup = self.warmup_report
        first, timed = (warmup or {}).get("first_loss"), self.losses.get(0)
        if first is None or timed is None:
            return []
        rtol = WARMUP_LOSS_RTOL[self.profile.device_type]
        if first == timed or abs(first - timed) <= rtol * abs(first):
            return []
        return [
            f"the first timed step's loss {timed:.6f} differs from the first warm-up step's {first:.6f} on the same "
            f"batch from the restored state: state outside state_dict() survived the warm-up restore"
        ]

    def budget_report(self) -> dict[str, dict]:
        """Each bounded untimed phase's time on the referee's clock against its budget."""
        training = self.phases.get("train", 0.0)
        report = {}
        for name, (share, floor) in self.profile.budgets.items():
            report[name] = {"seconds": round(self.phases.get(name, 0.0), 3),
                            "budget": round(max(share * training, floor), 3)}  # fmt: skip
        return report

    # -- the referee's evals -----------------------------------------------------------------------------------

    def start_evals(self) -> EvalProcess:
        """The referee's eval process, started now so that its start and imports overlap the setup (it waits)."""
        self.evals = EvalProcess(eval_pycache(), self.config.out / "evals" / "stderr.txt")
        self.own.add(self.evals.pid)
        return self.evals

    def evaluate(self, program: Path, sha256: str, dataset, tokenizer, bundle) -> None:
        """val_bpb and CORE of the exported program, in the isolated process running only the referee's code."""
        config, profile, out = self.config, self.profile, self.config.out
        self.eval_result = out / "evals" / "result.json"
        args = [str(program), "--sha256", sha256, "--tokenizer", str(out / "tokenizer.json"),
                "--tokenizer-digest", tokenizer.digest, "--val-file", str(dataset.val_file),
                "--val-tokens", str(profile.val_tokens), "--seq-len", str(profile.seq_len),
                "--device", "cuda:0" if profile.device_type == "cuda" else "cpu", "--calibrate",
                "--json", str(self.eval_result)]  # fmt: skip
        if bundle is not None:
            args += ["--bundle", str(bundle.root), "--bundle-digest", bundle.digest]
            args += ["--max-per-task", str(config.max_per_task)] if config.max_per_task else []
        self.evals.go(args)

    def finish_evals(self, program: Path, signals: StopSignals) -> dict:
        evals = self.evals
        signals.deferring = True
        try:
            while evals.poll() is None:
                if signals.received:
                    evals.kill()
                    raise RunInterrupted(f"received {signals.received[0]} during the final evals; the exported model "
                                         f"is kept in {program.parent}")  # fmt: skip
                time.sleep(0.1)
        finally:
            signals.deferring = False
        stderr = evals.stderr_text()
        sys.stderr.write(stderr)
        returncode = evals.poll()
        if returncode != 0:
            how = (f"was killed by {signal.Signals(-returncode).name}" if returncode < 0
                   else f"failed with code {returncode}")  # fmt: skip
            raise RunFailed(f"the referee's eval process {how}: {stderr.strip()[-2000:] or 'no message'}. The "
                            f"exported model is kept in {program.parent}")  # fmt: skip
        return json.loads(self.eval_result.read_text())


def describe_bundle(bundle) -> dict | None:
    """The record's eval_bundle section as the referee resolved it (None: CORE was not asked for)."""
    if bundle is None:
        return None
    return {"path": str(bundle.root), "digest": bundle.digest, "missing_labels": list(bundle.missing_labels)}


def previous_record(out: Path) -> dict | None:
    """The last record the referee wrote in ``out`` (checked against events.jsonl), or None."""
    records = record_files(out)
    if not records or record_digest_problem(out, records[-1].name) is not None:
        return None
    return json.loads(records[-1].read_text())


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def evaluation_files_here(config: Config) -> list[Path]:
    """The evaluation data already on this machine, before the submission has chosen its dataset: the validation
    shard of every catalog dataset in the data folder and every place an eval bundle is looked for."""
    root = resolve_root(config.data_dir)
    shards = [spec.local_dir(root) / spec.shard_name(spec.val_shard) for spec in CATALOG.values()]
    places = [*shards, *bundle_locations(config.eval_bundle)]
    return list(dict.fromkeys(path.resolve() for path in places if path.exists()))


def train_shards(config: Config, dataset_name: str) -> int | None:
    """How many training shards the run needs locally: all of the small smoke corpus, else --train-shards."""
    return None if dataset_name == "smoke" or dataset_name.startswith("hf:") else config.train_shards


def monitor_rows(val_file: Path, tokenizer, profile: profiles.Profile) -> torch.Tensor | None:
    """The held-out rows of the in-training val_bpb: the validation shard's rows after the final val_bpb's rows,
    so training on them cannot improve the reported val_bpb. None when the shard has no rows to spare."""
    first = profile.val_tokens // profile.seq_len
    wanted = (profile.val_tokens + profile.monitor_tokens) // profile.seq_len
    rows = validation_rows(val_file, tokenizer, wanted * profile.seq_len, profile.seq_len, exact=False)
    return rows[first:] if len(rows) > first else None


if __name__ == "__main__":
    sys.exit(main())
