"""The submission contract: the hooks a speedrun submission may implement.

A submission is a plain Python module (for example ``submissions/climbmix/submission.py``) with a few
functions decorated by ``harness.hookimpl``. It implements only the hooks it changes; every hook it
leaves out is answered by the reference baseline (``baselines/nanochat``), which is registered as a
plugin too and always runs last. Implementations may take any subset of a hook's arguments, by name.

The harness owns everything else: data, tokenizer, training loop, clock, evals and the record. The
call order in a run is:

    select_dataset -> build_model -> plan_training -> build_optimizer -> build_schedule
    -> (per step) train_step, schedule(step), optimizer.step() -> log_metrics ... -> run_finished

Hooks marked ``firstresult`` return one answer: the first implementation that returns something other
than ``None`` wins, so a submission may also decline (return ``None``) and let the baseline answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy
import torch

hookspec = pluggy.HookspecMarker("speedrun")


@dataclass(frozen=True)
class Run:
    """What the harness tells a submission about this run. Read-only.

    ``depth``, ``seq_len``, ``max_steps`` and ``max_batch_tokens`` come from the hardware profile and
    the command line; a submission's plan must honour the two caps when they are set (the CPU smoke
    profile uses them to finish in minutes).
    """

    profile: str  # "8xh100", "gpu" or "cpu"
    device: str  # "cuda:3", "cpu", ...: where this rank's model must live
    dtype: str  # compute dtype: "bfloat16" or "float32" (master weights stay float32; lookups may use dtype)
    rank: int
    local_rank: int
    world_size: int
    seed: int
    vocab_size: int  # the pinned tokenizer's vocabulary, special tokens included
    bos_token_id: int
    seq_len: int  # the profile's sequence length in tokens (2048 on GPU profiles)
    depth: int | None = None  # --depth; None means the submission's own default
    max_steps: int | None = None  # cap on optimizer steps (smoke profile, --max-steps)
    max_batch_tokens: int | None = None  # cap on total batch tokens per step (smoke profile)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class Plan:
    """How much training a submission asks for. Returned by ``plan_training``.

    ``total_batch_tokens`` is the number of tokens per optimizer step summed over all ranks; it must be a
    multiple of ``device_batch * seq_len * world_size`` (the quotient is the number of gradient
    accumulation micro-steps). ``flops_per_token`` (forward + backward) is used only for MFU.
    """

    num_steps: int
    total_batch_tokens: int
    device_batch: int  # sequences per micro-step on each rank
    seq_len: int
    flops_per_token: float = 0.0
    notes: str = ""  # how the numbers were derived, shown in the record

    def grad_accum_steps(self, world_size: int) -> int:
        per_micro_step = self.device_batch * self.seq_len * world_size
        if self.total_batch_tokens % per_micro_step:
            raise ValueError(
                f"total_batch_tokens={self.total_batch_tokens} is not a multiple of "
                f"device_batch*seq_len*world_size = {self.device_batch}*{self.seq_len}*{world_size} = "
                f"{per_micro_step}; change device_batch or total_batch_tokens in plan_training"
            )
        return self.total_batch_tokens // per_micro_step


Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (device_batch, seq_len) int64
Schedule = Callable[[int], dict[str, float]]


@hookspec(firstresult=True)
def select_dataset(run: Run) -> str:
    """Name the training dataset: one of the pinned catalog (``harness.data.CATALOG``), or, for development
    runs, any Hugging Face dataset as ``"hf:OWNER/NAME[@REVISION][?config=..&split=..&bytes=..]"``, materialised
    on first use and never record-eligible (docs/data.md).

    Called first. The CPU smoke profile trains on ``smoke`` when a catalog name is returned, since the real
    corpora cannot be downloaded there; the record says both.
    """


@hookspec(firstresult=True)
def build_model(run: Run) -> torch.nn.Module:
    """Build the model on ``run.device``, every parameter initialised: float32 master weights (lookup tables such
    as embeddings may be stored in ``run.dtype``, as the reference does).

    The module must support two calls:
      ``model(inputs) -> logits`` of shape (B, T, vocab_size), float32, for the evals;
      ``model(inputs, targets) -> loss``, a scalar mean cross entropy over targets that are not -1.
    Any sequence length up to 4 * run.seq_len must work (CORE prompts can be longer than training rows).
    ``model(inputs)`` must be exportable by ``torch.export`` (plain tensors in, logits out): the referee evaluates
    the exported program, without importing the submission, and checks exportability before training.
    Seed-dependent initialisation must use the global torch RNG, which the harness seeds.
    ``run.device`` may be ``"meta"``: ``harness.memory`` builds the model there, shapes without data, to
    estimate its memory before a run (initialisation may then be skipped).
    """


@hookspec(firstresult=True)
def plan_training(model: torch.nn.Module, run: Run) -> Plan:
    """Decide steps, batch and sequence length, honouring ``run.max_steps`` and ``run.max_batch_tokens``."""


@hookspec(firstresult=True)
def build_optimizer(model: torch.nn.Module, plan: Plan, run: Run) -> torch.optim.Optimizer:
    """Return one optimizer whose parameter groups hold every trainable parameter exactly once.

    ``model`` is the bare module (not wrapped for distribution). Gradients arrive already averaged over
    ranks, so the optimizer needs no communication of its own. With several ranks the harness shards the
    optimizer (ZeRO-2, ``harness/sharding.py``): on each rank only the parameters it owns have a ``.grad`` (the
    others have ``None``), and after ``step()`` the harness copies every parameter from its owner. So the
    optimizer must skip parameters whose ``.grad`` is None (every torch optimizer does), keep its state per
    parameter, and not combine gradients across parameters (a global gradient norm would see one rank's
    share). All of its state must live in ``state_dict()``: the harness restores it after the untimed warm-up
    steps and saves it in checkpoints.
    """


@hookspec(firstresult=True)
def build_schedule(optimizer: torch.optim.Optimizer, plan: Plan, run: Run) -> Schedule:
    """Return ``schedule(step) -> dict`` that sets the optimizer's hyperparameters for ``step``.

    The harness calls it once before every ``optimizer.step()``, with steps 0 .. plan.num_steps-1. It
    returns the values it set (for example ``{"lr_mult": 1.0, "momentum": 0.95}``) for the logs.
    """


@hookspec(firstresult=True)
def train_step(model: torch.nn.Module, batches: Iterable[Batch], plan: Plan, run: Run) -> torch.Tensor:
    """Run forward and backward over one optimizer step's micro-batches; return the mean loss, detached.

    ``batches`` yields ``plan.grad_accum_steps(run.world_size)`` pairs; fetching them is timed.
    ``model`` is the bare module, as ``build_model`` returned it (no DistributedDataParallel wrapper): the
    gradients this rank accumulates stay local, and after train_step returns the harness averages them over
    ranks once (``harness/sharding.py``). Accumulate into ``.grad`` with ``backward()``; do not zero or
    communicate gradients. Must not call the optimizer: the harness does, after the schedule. The harness's
    default implementation is in ``harness/defaults.py``.
    """


@hookspec
def log_metrics(step: int, metrics: dict[str, Any], run: Run) -> None:
    """Observe the metrics the harness logs at ``step`` (the loss, the schedule's values, the in-training val_bpb).

    Every implementation is called, in the training worker, outside the clock but within the profile's budget
    for untimed logging (1% of training time); must not touch the model or optimizer.
    """


@hookspec
def run_finished(record: dict[str, Any], run: Run) -> None:
    """Observe the final record (a plain dict, a copy) in a short process of its own, before the referee writes
    the record file itself. Every implementation is called; nothing it does can change the record."""
