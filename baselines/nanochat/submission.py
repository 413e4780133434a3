"""The nanochat baseline as a speedrun plugin: the reference recipe before the ClimbMix record.

The harness loads this file and registers it last, as the fallback for every hook a submission leaves out;
its hooks are also marked ``trylast`` so that any submission's answer wins whatever the registration order.
Defaults are rows 1-3 of the reference leaderboard: FineWeb-Edu, d24, data:param ratio 12, bf16, no fp8.
A submission changes them by calling the helpers below with other arguments (see submissions/climbmix):

    make_model(run, fp8=True)         make_plan(model, run, ratio=8)

Everything is derived from --depth (``run.depth``) in ``depth.py``; see README.md for the whole recipe.
"""

from __future__ import annotations

import torch

from baselines.nanochat import depth, optim, schedule
from baselines.nanochat.model import GPT
from harness import hookimpl
from harness.device import use_compile
from harness.hookspecs import Plan, Run

DATASET = "fineweb-edu"
DEPTH = 24
RATIO = depth.DEFAULT_RATIO  # tokens per scaling parameter
FP8 = False
DEVICE_BATCH = 16  # sequences per rank per micro-step (reference, at T = 2048 on an 80 GB H100)


# ----------------------------------------------------------------------------------------------------------
# Helpers a submission may call with different arguments


def make_model(run: Run, fp8: bool = FP8) -> GPT:
    """The GPT for ``run.depth`` (default 24) on ``run.device``, its training forward compiled where the harness
    says compiling pays (``harness.device.use_compile``: on CUDA; on CPU when SPEEDRUN_COMPILE=1)."""
    dims = depth.model_dims(run.depth or DEPTH, run.vocab_size)
    model = GPT(dims, seq_len=run.seq_len, compute_dtype=run.torch_dtype, device=run.device)
    if fp8:
        model.enable_fp8()  # warns and keeps bf16 where the GPU has no fp8 matmuls
    model.maybe_compile(run.device != "meta" and use_compile(run.device))
    return model


def make_plan(model: GPT, run: Run, ratio: float = RATIO) -> Plan:
    """Steps and batch from the depth rule (``depth.horizon``), then the run's caps, then a device batch that
    divides the per-rank sequences exactly."""
    h = depth.horizon(model.dims.depth, model.dims.vocab_size, ratio)
    n = depth.scaling_params(model.dims)
    notes = [
        f"d{model.dims.depth}: {n:,} scaling params x ratio {ratio} = {h.tokens:,} tokens",
        f"batch = 2^round(log2(2^19 * (tokens/D_ref)^0.383)) = {h.total_batch_tokens:,} (D_ref {h.reference_tokens:,})",
    ]
    return fit_plan(h.tokens, h.total_batch_tokens, run, model.flops_per_token(run.seq_len), notes)


def fit_plan(tokens: int, total_batch_tokens: int, run: Run, flops_per_token: float, notes: list[str]) -> Plan:
    """Apply the run's caps, take a device batch of at most DEVICE_BATCH sequences, round the batch down to whole
    micro-batches on every rank, and take steps = tokens // batch (then the step cap)."""
    batch = total_batch_tokens
    if run.max_batch_tokens is not None and run.max_batch_tokens < batch:
        batch = run.max_batch_tokens
        notes.append(f"capped to max_batch_tokens = {batch:,}")
    tokens_per_sequence_slot = run.seq_len * run.world_size
    sequences_per_rank = batch // tokens_per_sequence_slot
    if sequences_per_rank < 1:
        raise ValueError(
            f"a step of {batch} tokens cannot give each of {run.world_size} ranks one sequence of {run.seq_len} "
            f"tokens; raise max_batch_tokens to at least {tokens_per_sequence_slot} or lower seq_len"
        )
    device_batch = min(DEVICE_BATCH, sequences_per_rank)
    sequences_per_rank -= sequences_per_rank % device_batch  # whole micro-batches only
    if sequences_per_rank * tokens_per_sequence_slot != batch:
        batch = sequences_per_rank * tokens_per_sequence_slot
        notes.append(f"rounded down to whole micro-batches of {device_batch} sequences per rank: {batch:,} tokens")
    num_steps = max(1, tokens // batch)
    notes.append(f"steps = tokens // batch = {num_steps:,}")
    if run.max_steps is not None and run.max_steps < num_steps:
        num_steps = run.max_steps
        notes.append(f"capped to max_steps = {num_steps:,}")
    return Plan(
        num_steps=num_steps,
        total_batch_tokens=batch,
        device_batch=device_batch,
        seq_len=run.seq_len,
        flops_per_token=flops_per_token,
        notes="; ".join(notes),
    )


# ----------------------------------------------------------------------------------------------------------
# Hooks


@hookimpl(trylast=True)
def select_dataset() -> str:
    return DATASET


@hookimpl(trylast=True)
def build_model(run: Run) -> torch.nn.Module:
    return make_model(run)


@hookimpl(trylast=True)
def plan_training(model: torch.nn.Module, run: Run) -> Plan:
    return make_plan(model, run)


@hookimpl(trylast=True)
def build_optimizer(model: torch.nn.Module, plan: Plan) -> torch.optim.Optimizer:
    dims = model.dims
    weight_decay = depth.muon_weight_decay(dims.depth, dims.vocab_size, plan.total_batch_tokens)
    backend = "inductor" if getattr(model, "use_compile", False) else None  # the update math follows the model
    return optim.build_optimizer(model, plan.total_batch_tokens, muon_weight_decay=weight_decay,
                                 compile_backend=backend)  # fmt: skip


@hookimpl(trylast=True)
def build_schedule(optimizer: torch.optim.Optimizer, plan: Plan):
    return schedule.make_schedule(optimizer, plan.num_steps)
