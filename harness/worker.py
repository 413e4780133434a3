"""The training worker: the one process (per rank) that runs submission code, under the harness's clock.

    python -m harness.worker --device-type cpu --config RUN_DIR/inputs/worker.json           # started by harness.run
    python -m harness.worker --device-type cpu --config RUN_DIR/inputs/worker.json --probe   # select_dataset only
    python -m harness.worker --device-type cpu          # started early: reads the config's path on stdin first

``python -m harness.run`` (the referee) prepares the data, writes the worker's inputs and starts it; it is never
meant to be started by hand. The worker loads the submission, builds, warms up, trains, and exports the final
model as a torch.export program; rank 0 reports every phase, step and result to the referee over the channel
(harness/channel.py), and the referee, in its own process, times what it sees, evaluates the exported program
and writes the record. Nothing the worker reports is trusted beyond what the referee can check: see
docs/rules.md. Under torchrun every rank runs this program; ranks agree through torch.distributed.

main() reads top to bottom: distributed setup, inputs, submission, model and plan, warm-up, training, export.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as torch_dist

from evals.bpb import evaluate_bpb
from harness import checkpoint
from harness.channel import Link
from harness.clock import Clock
from harness.device import (
    TRAIN_TIMEOUT,
    cpu_copy,
    freeze_gc,
    init_process_group,
    rng_state,
    set_collective_timeout,
    set_rng_state,
    thaw_gc,
)
from harness.export import ExportError, export_model
from harness.fileio import check_free_space, sha256_file
from harness.hookspecs import Plan, Run
from harness.loader import TrainLoader
from harness.memory import check_fits
from harness.plugins import (
    RunInterrupted,
    StopSignals,
    Submission,
    SubmissionError,
    call_hook,
    hook_file,
    implementing_file,
    load_submission,
)
from harness.profiles import PROFILES
from harness.sharding import Sharding
from harness.tokenizer import Tokenizer
from harness.watch import library_roots


class RunDiverged(Exception):
    def __init__(self, step: int, loss: float, last_finite: float | None):
        super().__init__(f"loss became {loss} at step {step} (last finite loss: {last_finite})")
        self.step, self.loss, self.last_finite = step, loss, last_finite


@dataclasses.dataclass(frozen=True)
class Place:
    """This process's place in the run: rank, ranks, device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__.split("\n")[0])
    p.add_argument("--device-type", choices=["cpu", "cuda"], required=True)
    p.add_argument(
        "--config",
        type=Path,
        help="the inputs the referee wrote (rank 0; other ranks receive them); "
        "without it rank 0 reads their path on stdin",
    )
    p.add_argument("--probe", action="store_true", help="load the submission, answer select_dataset, exit")
    p.add_argument("--observe", type=Path, help="load the submission, show it this record (run_finished), exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # ---- distributed setup: torchrun's RANK/LOCAL_RANK/WORLD_SIZE; NCCL on GPUs, gloo on CPU
    place = init_distributed(args.device_type)
    link = Link.from_env() if place.master else Link(None)
    link.send("hello", pid=os.getpid(), world_size=place.world_size)

    # ---- inputs: rank 0 reads what the referee wrote and hands it to every rank. The referee may start this
    # process before it has prepared them, so that its start overlaps the data setup: then it names the file on
    # stdin when they are ready (an empty stdin: the referee ended the run meanwhile).
    path = args.config
    if place.master and path is None:
        path = Path(sys.stdin.readline().strip())
        if path == Path():
            return 0
    config = broadcast(json.loads(path.read_text()) if place.master else None, place.world_size)
    out = Path(config["out"])
    clock = Clock(place.device, link.send)
    stop = StopSignal().install()

    submission = model = sharding = loader = None
    step = 0
    try:
        with clock.phase("load"):
            submission = load_submission(config["submission"])  # a contract error stops here, before any work
        link.send("loaded", overrides=submission.overrides, imported=imported_repo_files())
        run = make_run(config, place)
        if args.probe:
            link.send("dataset", selected=call_hook(submission, "select_dataset", run=run))
            if args.device_type == "cuda":  # a plan that cannot fit fails now, before any data work
                fit = check_fits(submission, PROFILES[run.profile], depth=run.depth, world_size=config["world_size"])
                link.send("memory", allocated=fit.allocated, required=fit.required, capacity=fit.capacity)
            link.send("done")
            return 0
        if args.observe:  # a copy of the record: the referee writes the real one after this process has ended
            with clock.phase("observe"):
                call_hook(submission, "run_finished", record=json.loads(args.observe.read_text()), run=run)
            link.send("done")
            return 0

        # ---- model, plan, optimizer, schedule: the submission's hooks, checked before any training
        tokenizer = load_tokenizer(config)
        with clock.phase("build"):
            torch.manual_seed(run.seed)
            model = call_hook(submission, "build_model", expect=torch.nn.Module, run=run)
            plan = call_hook(submission, "plan_training", expect=Plan, model=model, run=run)
            optimizer = call_hook(
                submission, "build_optimizer", expect=torch.optim.Optimizer, model=model, plan=plan, run=run
            )
            schedule = call_hook(submission, "build_schedule", optimizer=optimizer, plan=plan, run=run)
            accum = check_outputs(submission, model, plan, optimizer, schedule, run)
            preflight(submission, model, run)
            if place.master:  # the exported model, and with --checkpoint-every two training states, must fit
                copies = 3 if config["checkpoint_every"] else 1
                check_free_space(out, copies * checkpoint_bytes(model))
            if place.master:  # exportable now, not after an hour of training (a copy: tracing may touch state)
                check_exportable(submission, copy.deepcopy(model), run)
            loader = TrainLoader(
                [Path(f) for f in config["train_files"]],
                tokenizer,
                plan.device_batch,
                plan.seq_len,
                rank=place.rank,
                world_size=place.world_size,
                device=str(place.device),
                seed=run.seed,
            )
            monitor = load_monitor_rows(config)
            token_bytes = tokenizer.token_bytes().to(place.device)
            # The harness owns the collectives: gradients reduce-scattered, the optimizer stepping its share.
            sharding = Sharding(model, optimizer, place.world_size, place.rank)
        if place.world_size > 1:
            set_collective_timeout(TRAIN_TIMEOUT)  # setup is over: a rank that stops answering now is an error
        depth = getattr(getattr(model, "dims", None), "depth", run.depth)
        link.send("plan", plan=dataclasses.asdict(plan), grad_accum=accum, run=dataclasses.asdict(run), depth=depth)

        def one_step(step: int) -> tuple[torch.Tensor, dict]:
            sharding.zero_grad()
            batches = (next(loader) for _ in range(accum))
            loss = call_hook(submission, "train_step", model=model, batches=batches, plan=plan, run=run)
            settings = schedule(step)
            sharding.step()
            return loss, settings

        def evaluate_monitor(at_step: int) -> None:
            if monitor is None:
                return
            with clock.phase("eval_bpb", step=at_step):
                model.eval()
                try:
                    bpb = evaluate_bpb(model, monitor, token_bytes, plan.device_batch, str(place.device))
                except RunInterrupted:  # a stop signal during the evaluation is the user's, not the model's failure
                    raise
                except Exception as exc:  # noqa: BLE001 - the model's forward failed: say whose, where, on what
                    where = implementing_file(submission, exc.__traceback__)
                    raise SubmissionError(
                        f"{where}: the model failed in the in-training val_bpb at step {at_step} on inputs of shape "
                        f"({plan.device_batch}, {monitor.shape[1] - 1}): {type(exc).__name__}: {exc}"
                    ) from exc
                model.train()
            link.send("eval", step=at_step, val_bpb=bpb)
            submission.hook.log_metrics(step=at_step - 1, metrics={"val_bpb": bpb}, run=run)

        # ---- untimed warm-up on real batches (compilation, allocator), then the initial state restored exactly;
        # a resumed run instead restores its last checkpoint (and is never record-eligible)
        if config["resume"]:
            step = resume(out, place, model, sharding, loader, clock, link, identity(config, plan))
        else:
            with clock.phase("warmup", steps=config["warmup_steps"]):
                initial = {  # in host memory: a GPU copy would hold a second model for the whole run
                    "model": cpu_copy(model.state_dict()),
                    "optimizer": cpu_copy(optimizer.state_dict()),
                    "loader": loader.state_dict(),
                    "rng": rng_state(place.device),
                }
                before = state_digest([initial["model"], initial["optimizer"]])
                first_loss = None
                for warm in range(min(config["warmup_steps"], plan.num_steps)):
                    loss, _ = one_step(warm)
                    if warm == 0:
                        check_first_loss(submission, loss)
                    first_loss = mean_over_ranks(loss.item(), place) if warm == 0 else first_loss
                model.load_state_dict(initial["model"])
                optimizer.load_state_dict(initial["optimizer"])
                loader.load_state_dict(initial["loader"])
                set_rng_state(initial["rng"], place.device)
                if state_digest([model.state_dict(), optimizer.state_dict()]) != before:
                    raise RuntimeError(
                        "the model or optimizer state after warm-up differs from the initial state; "
                        "an optimizer keeps state outside state_dict(), which the contract forbids"
                    )
            link.send("warmup", first_loss=first_loss, state_digest=before)

        # ---- timed training: only the steps count (harness/clock.py); a non-finite loss stops every rank at once.
        # A stop signal takes effect at the next step boundary, the same one on every rank.
        last_finite = None
        link.send("loop_start", step=step, num_steps=plan.num_steps)
        freeze_gc()  # the reference measured ~500 ms collector pauses; everything built so far is long-lived
        with stop.deferred():
            while step < plan.num_steps:
                with clock.timed_step(step):
                    loss, settings = one_step(step)
                    loss_value = loss.item()
                with clock.untimed("log"):
                    mean_loss = mean_over_ranks(loss_value, place)  # non-finite if any rank's is
                    if not math.isfinite(mean_loss):
                        raise RunDiverged(step, mean_loss, last_finite)
                    last_finite = mean_loss
                    step += 1
                    metrics = {"loss": mean_loss, **settings}
                    link.send("metrics", step=step - 1, **metrics)
                    submission.hook.log_metrics(step=step - 1, metrics=metrics, run=run)
                if config["eval_every"] and step % config["eval_every"] == 0 and step < plan.num_steps:
                    evaluate_monitor(step)
                if config["checkpoint_every"] and step % config["checkpoint_every"] == 0 and step < plan.num_steps:
                    save_checkpoint(clock, out, step, model, sharding, loader, place, link, identity(config, plan))
                with clock.untimed("log"):
                    stop.raise_if_stopping(lambda flag: max_over_ranks(float(flag), place) > 0)
        thaw_gc()
        link.send("loop_stop", step=step)

        # ---- what training did, agreed over ranks: the slowest rank's time counts; one proof of data for all
        cuda = place.device.type == "cuda"
        summary = {
            "training_time_s": max_over_ranks(clock.training_time_s, place),
            "train_steps": clock.train_steps,
            "steps_completed": step,
            "stream_digest": combined_stream_digest(loader.stream_digest, place),
            "peak_memory_gb": torch.cuda.max_memory_allocated(place.device) / 1e9 if cuda else None,
            "attention_backend": getattr(model, "attention_backend", None),
            "compiled": getattr(model, "use_compile", None),
        }
        evaluate_monitor(plan.num_steps)

        # ---- the final model as a program the referee evaluates without any submission code
        with clock.phase("export"):
            if place.master:
                model.eval()
                path = export_program(submission, model, run, out / checkpoint.MODEL_DIR)
                link.send("exported", path=str(path), sha256=sha256_file(path))
        link.send("summary", **summary, phases=dict(clock.phases), imported=imported_repo_files())
        link.send("done")
        return 0
    except RunDiverged as exc:
        link.send("error", status="diverged", message=str(exc), traceback=traceback.format_exc(), step=exc.step,
                  last_finite_loss=exc.last_finite)  # fmt: skip
    except (RunInterrupted, KeyboardInterrupt) as exc:
        saved = None
        if sharding is not None and step > 0 and (place.world_size == 1 or getattr(exc, "agreed", False)):
            # With several ranks only an agreed stop (every rank at the same boundary) can save one checkpoint.
            saved = save_checkpoint(clock, out, step, model, sharding, loader, place, link, identity(config, plan))
        link.send("error", status="interrupted", message=f"{type(exc).__name__}: {exc}", traceback="",
                  checkpoint=str(saved) if saved else None, step=step)  # fmt: skip
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a hook too: every ending is reported
        message = str(exc) if isinstance(exc, SubmissionError) else f"{type(exc).__name__}: {exc}"
        link.send("error", status="failed", message=message or type(exc).__name__, traceback=traceback.format_exc(),
                  step=step)  # fmt: skip
    finally:
        thaw_gc()
        stop.uninstall()
        link.send("phases", phases=dict(clock.phases))
        link.close()
        if place.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return 1


# ------------------------------------------------------------------------------------------------
# Stop signals


class StopSignal(StopSignals):
    """Stop signals in the worker: at once outside training, at a step boundary inside it.

    While ``deferred()`` is active (the training loop), a signal is only noted; the loop calls ``raise_if_stopping``
    after each step is complete and recorded, and with several ranks all of them agree on the answer, so they
    stop at the same step and can save one checkpoint together.
    """

    def raise_if_stopping(self, agree) -> None:
        """At a step boundary: raise RunInterrupted (agreed) when any rank received a signal.

        ``agree(flag) -> bool`` combines this rank's flag with every other rank's (any of them); every rank must
        call this at the same boundary.
        """
        if agree(bool(self.received)):
            why = f"received {self.received[0]}" if self.received else "another rank received a stop signal"
            exc = RunInterrupted(why)
            exc.agreed = True
            raise exc


# ------------------------------------------------------------------------------------------------
# Setup


def init_distributed(device_type: str) -> Place:
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device_type == "cuda":
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
        init_process_group(device)  # a long timeout: rank 0's referee may train a tokenizer while the others wait
    return Place(rank, local_rank, world_size, device)


def compute_dtype(device: torch.device) -> str:
    """bf16 on GPUs that support it, fp32 on CPU; SPEEDRUN_DTYPE overrides (checked by the referee)."""
    override = os.environ.get("SPEEDRUN_DTYPE")
    if override:
        return override
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def make_run(config: dict, place: Place) -> Run:
    return Run(
        **config["run"],
        device=str(place.device),
        dtype=compute_dtype(place.device),
        rank=place.rank,
        local_rank=place.local_rank,
        world_size=place.world_size,
    )


def load_tokenizer(config: dict) -> Tokenizer:
    tokenizer = Tokenizer.load(config["tokenizer"])
    if tokenizer.digest != config["tokenizer_digest"]:
        raise RuntimeError(f"{config['tokenizer']} is not the tokenizer the referee prepared; it changed on disk")
    return tokenizer


def load_monitor_rows(config: dict) -> torch.Tensor | None:
    """The held-out rows of the in-training val_bpb (disjoint from the final validation rows, which the worker
    never sees)."""
    path = config.get("monitor_rows")
    return None if path is None else torch.load(path, weights_only=True)


def broadcast(value, world_size: int):
    if world_size == 1:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def max_over_ranks(value: float, place: Place) -> float:
    if place.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=place.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t.item()


def mean_over_ranks(value: float, place: Place) -> float:
    if place.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=place.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t.item() / place.world_size


def combined_stream_digest(local: str, place: Place) -> str:
    """One proof of data for all ranks: sha256 over the ranks' running digests, in rank order."""
    if place.world_size == 1:
        return local
    digests = [None] * place.world_size
    torch_dist.all_gather_object(digests, local)
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def imported_repo_files() -> list[str]:
    """The repository's Python files this process imported, relative to the repository root. The installed
    packages are not among them, even in a virtual environment inside the checkout (the README's .venv): the
    referee's installation check covers those."""
    root = Path(__file__).resolve().parents[1]
    installed = library_roots()
    # Thousands of modules share a few hundred folders: resolving each folder once (and only a file that is itself
    # a link) takes a second less on a slow disk than resolving every path in full.
    real_folder = functools.cache(lambda folder: Path(folder).resolve())
    found = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.isabs(path):  # no file of its own (torch._classes says "_classes.py")
            continue
        real = Path(path).resolve() if os.path.islink(path) else real_folder(os.path.dirname(path)) / Path(path).name
        if real.is_relative_to(root) and not any(real.is_relative_to(lib) for lib in installed):
            found.add(real.relative_to(root).as_posix())
    return sorted(found)


# ------------------------------------------------------------------------------------------------
# Checks on what the submission's hooks returned: fail early, naming the hook and the fix


def check_outputs(submission: Submission, model, plan, optimizer, schedule, run: Run) -> int:
    """Check what the hooks returned, naming the file that answered; return the gradient accumulation steps."""

    def fail(hook: str, problem: str):
        raise SubmissionError(f"{hook_file(submission, hook)}: {hook} {problem}")

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


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About what one checkpoint takes: the weights and two optimizer moments, plus room for the rest."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * weights + (64 << 20)


def preflight(submission: Submission, model: torch.nn.Module, run: Run) -> None:
    """The contract's eval call before any training: ``model(inputs)`` gives float32 (B, T, V) logits on run.device,
    at a short length and at run.seq_len. (``model(inputs, targets)`` is checked by the first warm-up step, where
    a compiled model compiles it anyway.)"""
    where = hook_file(submission, "build_model")
    ids = torch.Generator().manual_seed(0)  # its own generator: the run's seeded RNG is not touched
    for length in (8, run.seq_len):
        inputs = torch.randint(0, run.vocab_size, (2, length), generator=ids).to(run.device)
        call = f"model(inputs) with inputs of shape (2, {length})"
        try:
            with torch.no_grad():
                logits = model(inputs)
        except Exception as exc:  # noqa: BLE001 - any failure here is the model's, reported with the call
            raise SubmissionError(f"{where}: build_model's model fails the contract: {call} raised "
                                  f"{type(exc).__name__}: {exc}. Fix the model's forward.") from exc  # fmt: skip
        expected = (2, length, run.vocab_size)
        problems = []
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            problems.append(f"model(inputs) returned {_describe(logits)}, not logits of shape {expected}")
        elif logits.dtype != torch.float32 or logits.device != torch.device(run.device):
            problems.append(f"model(inputs) returned {logits.dtype} logits on {logits.device}, not float32 on "
                            f"{run.device}")  # fmt: skip
        if problems:
            raise SubmissionError(f"{where}: build_model's model fails the contract at length {length}: "
                                  f"{'; '.join(problems)} (harness/hookspecs.py, build_model)")  # fmt: skip


def check_first_loss(submission: Submission, loss) -> None:
    """The first step's loss, before anything is timed: a finite scalar tensor, as train_step's contract says."""
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise SubmissionError(f"{hook_file(submission, 'train_step')}: train_step returned {_describe(loss)}, not the "
                              f"mean loss as a scalar tensor (harness/hookspecs.py, train_step)")  # fmt: skip
    if not torch.isfinite(loss):
        where = hook_file(submission, "build_model")
        raise SubmissionError(f"{where}: the very first loss is {loss.item()}: the model's forward or its "
                              f"initialisation is broken (a parameter left uninitialised?)")  # fmt: skip


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}" + ("" if value.dim() else f" ({value.item()})")
    return f"a {type(value).__name__}"


def check_exportable(submission: Submission, model: torch.nn.Module, run: Run) -> None:
    """The model must export (torch.export) for the evals; a model that cannot fails here, before training."""
    try:
        export_model(model, None, min(run.seq_len, 64), run.vocab_size, run.device)
    except ExportError as exc:
        raise SubmissionError(f"{hook_file(submission, 'build_model')}: build_model returned a model that "
                              f"cannot be evaluated: {exc}") from None  # fmt: skip


def export_program(submission: Submission, model: torch.nn.Module, run: Run, folder: Path) -> Path:
    try:
        return checkpoint.save_program(folder, lambda path: export_model(model, path, run.seq_len, run.vocab_size,
                                                                         run.device))  # fmt: skip
    except ExportError as exc:
        raise SubmissionError(f"{hook_file(submission, 'build_model')}: the trained model cannot be exported for "
                              f"the evals: {exc}") from None  # fmt: skip


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


# ------------------------------------------------------------------------------------------------
# Checkpoints and resume


def identity(config: dict, plan: Plan) -> dict:
    """What a checkpoint says of its run (the referee's identity, and the plan), for a resume to be checked."""
    return {**config["identity"], "plan": dataclasses.asdict(plan)}


def save_checkpoint(clock, out, step, model, sharding, loader, place: Place, link: Link, ident: dict) -> Path | None:
    """A resumable checkpoint with every rank's loader position and RNG (every rank calls this: the optimizer's
    shards and the positions are gathered); the two newest are kept. Returns its path on rank 0."""
    with clock.phase("checkpoint", step=step):
        optimizer_state = sharding.optimizer_state_dict()  # a collective: the whole state on rank 0
        loaders, rngs = [None] * place.world_size, [None] * place.world_size
        if place.world_size > 1:
            torch_dist.all_gather_object(loaders, loader.state_dict())
            torch_dist.all_gather_object(rngs, rng_state(place.device))
        else:
            loaders, rngs = [loader.state_dict()], [rng_state(place.device)]
        if not place.master:
            return None
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer_state,
            "loader": loaders,
            "training_time_s": clock.training_time_s,
            "train_steps": clock.train_steps,
            "rng": rngs,
        }
        path = checkpoint.save_training_state(out, step, state, ident, keep=2)
    link.send("checkpoint", step=step, path=str(path))
    return path


def resume(out: Path, place: Place, model, sharding, loader, clock: Clock, link: Link, ident: dict) -> int:
    meta = checkpoint.latest_meta(out)
    differ = [f"{key}: the checkpoint has {meta.get(key)!r}, this run {value!r}" for key, value in ident.items()
              if key != "argv" and meta.get(key) != value]  # fmt: skip
    if differ:  # before any weight is loaded: another submission, seed, depth or plan would train another run
        raise RuntimeError(f"--resume: the checkpoint at step {meta['step']} belongs to another run: "
                           f"{'; '.join(differ)}. Resume with the submission and arguments that wrote it.")  # fmt: skip
    step, saved = checkpoint.latest_training_state(out)
    model.load_state_dict(saved["model"])
    sharding.load_optimizer_state_dict(saved["optimizer"])
    loader.load_state_dict(saved["loader"][place.rank])
    set_rng_state(saved["rng"][place.rank], place.device)
    clock.phases["train"] = saved["training_time_s"]
    clock.train_steps = saved["train_steps"]
    link.send("resumed", step=step, training_time_s=saved["training_time_s"])
    return step


if __name__ == "__main__":
    code = main()
    # Every file the worker writes is closed by now (the program, checkpoints: atomic writes) and the referee has
    # its report: skip the interpreter's teardown of torch, about a second the run would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
