"""Per-GPU peak memory of a submission's training plan, estimated in seconds on a CPU, and a refusal of a plan that
will not fit, before any data work or GPU time.

    python -m harness.memory submissions/climbmix --profile 8xh100 [--depth 24]
    estimate = check_fits(submission, PROFILES["8xh100"], depth=24)    # raises PlanDoesNotFit; else an Estimate

The submission's own hooks build its model on the meta device (shapes and dtypes, no data), its plan and its
optimizer, with the profile's sequence length, vocabulary, compute dtype and world size. Then, per GPU:

- parameters: every parameter and buffer, in its dtype;
- gradients: one per trainable parameter, in its dtype; with several ranks the harness's sharding
  (``harness/sharding.py``) adds the rank's share of the averaged gradients;
- optimizer state: what one ``optimizer.step()`` creates on the meta device, for the parameters that the most
  loaded rank owns under the sharding;
- activations: what autograd saves for the backward during one micro-step's forward (``device_batch`` x
  ``seq_len`` tokens), each storage counted once, parameters excluded. Two ops are counted as their fused GPU
  kernels save them, not as the decompositions the meta device would otherwise run: SDPA as the flash kernels
  (q, k, v, the output and one float per query row, not the T x T probabilities) and RMSNorm as the fused
  kernel (its input and one float per row, not float32 copies of the input);
- backward workspace: twice the largest saved tensor (the backward's first gradients are allocated while
  everything saved is still alive; for a language model the logits and their gradient).

``allocated`` (the sum) is the figure to hold against ``torch.cuda.max_memory_allocated``. A plan fits when
``allocated * (1 + FRAGMENTATION) + CUDA_RESERVE`` is within the GPU's memory. Not modelled: torch.compile's own
choice of what to save (usually less: it recomputes cheap ops), and the CUDA context and NCCL buffers beyond the
fixed reserve. The numbers for the record's GPUs are only reasoned here until
``baselines.nanochat.gpucheck`` measures them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from harness import profiles
from harness.hookspecs import Plan, Run
from harness.plugins import Submission, SubmissionError, call_hook, load_submission
from harness.sharding import partition

GIB = 2**30
# An H100 80GB HBM3 has 81,559 MiB (nvidia-smi's total); torch reports the same bytes as total_memory.
GPU_MEMORY_GIB = {"8xh100": 81_559 / 1024}
CUDA_RESERVE_GIB = 2.0  # CUDA context (~0.5 GiB), cuBLAS workspaces, NCCL buffers: not in max_memory_allocated
FRAGMENTATION = 0.05  # the caching allocator reserves somewhat more than it hands out


class PlanDoesNotFit(Exception):
    """The estimated peak exceeds the GPU's memory; the message names the numbers and the fix."""


@dataclass(frozen=True)
class Estimate:
    """Per-GPU memory of one training plan, in bytes (see the module docstring for each term)."""

    submission: str
    profile: str
    depth: int | None
    world_size: int
    micro_batch: tuple[int, int]  # (sequences, tokens per sequence) of one micro-step
    parameters: int
    gradients: int
    gradient_shard: int
    optimizer_state: int
    optimizer_state_total: int  # over all ranks
    activations: int
    workspace: int
    capacity: int  # the GPU's memory (the host's for the cpu profile)
    reserve: int  # memory the device needs besides the tensors (the CUDA context and workspaces)
    notes: tuple[str, ...] = ()

    @property
    def allocated(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` should show at the peak of a training step."""
        return (
            self.parameters
            + self.gradients
            + self.gradient_shard
            + self.optimizer_state
            + self.activations
            + self.workspace
        )

    @property
    def required(self) -> int:
        """What the GPU must hold: allocated, the allocator's slack and the CUDA reserve."""
        return int(self.allocated * (1 + FRAGMENTATION)) + self.reserve

    @property
    def fits(self) -> bool:
        return self.required <= self.capacity

    def table(self) -> str:
        def gib(n: int) -> str:
            return f"{n / GIB:.2f} GiB"

        sequences, length = self.micro_batch
        sharded = self.world_size > 1
        shard = f" + {gib(self.gradient_shard)} shard" if sharded else ""
        share = f" (this rank's share of {gib(self.optimizer_state_total)})" if sharded else ""
        verdict = "fits" if self.fits else "DOES NOT FIT"
        rows = [
            ("parameters", gib(self.parameters)),
            ("gradients", gib(self.gradients) + shard),
            ("optimizer state", gib(self.optimizer_state) + share),
            ("activations", gib(self.activations) + " (saved by one micro-step's forward)"),
            ("backward workspace", gib(self.workspace)),
            ("allocated", gib(self.allocated) + " (compare torch.cuda.max_memory_allocated)"),
            ("required", f"{gib(self.required)} (+{FRAGMENTATION:.0%} allocator, +{gib(self.reserve)} reserve)"),
            ("capacity", f"{gib(self.capacity)}: {verdict}"),
        ]
        title = f"{self.submission} d{self.depth} on {self.profile}, per device"
        title += f" ({self.world_size} ranks, ZeRO-2)" if sharded else ""
        lines = [f"{title}, micro-step {sequences} x {length}:"] + [f"  {k:<20}{v}" for k, v in rows]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


# ------------------------------------------------------------------------------------------------
# Saved activations


class _FlashAttentionSaves(torch.autograd.Function):
    """Stands in for SDPA on the meta device: saves what the flash and memory-efficient kernels save."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.size(-1))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # one log-sum-exp per query row
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _FusedRMSNormSaves(torch.autograd.Function):
    """Stands in for RMSNorm on the meta device: saves what the fused GPU kernel saves."""

    @staticmethod
    def forward(ctx, x, weight):
        rstd = x.new_empty(x.shape[:-1], dtype=torch.float32)  # one reciprocal RMS per row
        ctx.save_for_backward(x, rstd) if weight is None else ctx.save_for_backward(x, rstd, weight)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, grad):
        x = ctx.saved_tensors[0]
        weight = ctx.saved_tensors[2] if len(ctx.saved_tensors) > 2 else None
        return torch.empty_like(x), None if weight is None else torch.empty_like(weight)


class _GpuKernels(TorchFunctionMode):
    """Routes SDPA and RMSNorm to the stand-ins above (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return _FlashAttentionSaves.apply(*args[:3])
        if func is F.rms_norm:
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            return _FusedRMSNormSaves.apply(args[0], weight)
        return func(*args, **kwargs)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def saved_activations(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(bytes, largest) of the tensors autograd saves for the backward in ``model(inputs, targets)``, each storage
    once, parameters and buffers excluded. Runs on whatever device the tensors are on (meta: shapes only)."""
    kept = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in kept:
            saved[key] = t  # holding it keeps the storage alive, so its key cannot be reused
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _GpuKernels():
        loss = model(inputs, targets)
    sizes = [t.untyped_storage().nbytes() for t in saved.values()]
    sizes.append(loss.untyped_storage().nbytes())
    return sum(sizes), max(sizes)


# ------------------------------------------------------------------------------------------------
# The estimate


def profile_run(profile: profiles.Profile, depth: int | None, world_size: int | None) -> Run:
    """The Run a rank of ``profile`` would get, on the meta device."""
    return Run(
        profile=profile.name,
        device="meta",
        dtype="bfloat16" if profile.device_type == "cuda" else "float32",
        rank=0,
        local_rank=0,
        world_size=world_size or profile.world_size or 1,
        seed=0,
        vocab_size=profile.vocab_size,
        bos_token_id=0,
        seq_len=profile.seq_len,
        depth=depth or profile.default_depth,
        max_steps=profile.max_steps,
        max_batch_tokens=profile.max_batch_tokens,
    )


def device_capacity(profile: profiles.Profile) -> int:
    """Bytes of one device of ``profile``: the record profile's H100, else the local GPU, else an H100; the host's
    memory for the cpu profile."""
    if profile.device_type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if profile.name in GPU_MEMORY_GIB:
        return int(GPU_MEMORY_GIB[profile.name] * GIB)
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return int(GPU_MEMORY_GIB["8xh100"] * GIB)


def _optimizer_state_bytes(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> tuple[list[int], str]:
    """Bytes of state per parameter after one step on the meta device (tensors shared by several entries counted
    once), or an Adam-like guess (two moments per parameter) when stepping on meta fails."""
    for p in params:
        p.grad = torch.zeros_like(p)
    note = ""
    try:
        optimizer.step()
        per_param = []
        for p in params:
            tensors = [v for v in optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
            per_param.append(sum(t.untyped_storage().nbytes() for t in {_storage_key(t): t for t in tensors}.values()))
    except Exception as exc:  # noqa: BLE001 - any optimizer that cannot step on meta gets the Adam-like guess
        per_param = [2 * p.numel() * p.element_size() for p in params]
        note = f"optimizer state assumed Adam-like (2 moments per parameter): stepping on meta failed ({exc})"
    finally:
        for p in params:
            p.grad = None
        optimizer.state.clear()
    return per_param, note


def estimate(
    submission: Submission | str,
    profile: profiles.Profile | str,
    depth: int | None = None,
    world_size: int | None = None,
    run: Run | None = None,
) -> Estimate:
    """The per-device memory estimate of ``submission``'s plan on ``profile`` (see the module docstring).

    ``run``: the Run to build with instead of the profile's (its device is replaced by "meta"); ``depth`` and
    ``world_size`` then come from it.
    """
    if isinstance(submission, str):
        submission = load_submission(submission)
    if isinstance(profile, str):
        profile = profiles.resolve_profile(profile)
    run = dataclasses.replace(run, device="meta") if run is not None else profile_run(profile, depth, world_size)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a model noting that it would compile or use fp8 on the GPU
        model = call_hook(submission, "build_model", expect=torch.nn.Module, run=run)
        plan = call_hook(submission, "plan_training", expect=Plan, model=model, run=run)
        optimizer = call_hook(
            submission, "build_optimizer", expect=torch.optim.Optimizer, model=model, plan=plan, run=run
        )
    off_meta = [name for name, p in model.named_parameters() if not p.is_meta]
    if off_meta:
        raise SubmissionError(
            f"{submission.name}: build_model put {off_meta[0]} on {model.get_parameter(off_meta[0]).device}, not "
            f"on run.device ({run.device}); create every parameter on run.device"
        )
    # Parameters, gradients and their shard.
    parameters = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    groups = [[p for p in g["params"] if p.requires_grad] for g in optimizer.param_groups]
    params = [p for g in groups for p in g]
    gradients = sum(p.numel() * p.element_size() for p in params)
    owners = [r for g in partition(groups, run.world_size) for r in g]
    owned = [0] * run.world_size
    state_bytes, note = _optimizer_state_bytes(optimizer, params)
    shard_bytes = [0] * run.world_size
    for p, owner, state in zip(params, owners, state_bytes, strict=True):
        owned[owner] += state
        shard_bytes[owner] += p.numel() * p.element_size()
    gradient_shard = max(shard_bytes) if run.world_size > 1 else 0
    # Activations of one micro-step.
    tokens = torch.zeros(plan.device_batch, plan.seq_len, dtype=torch.long, device="meta")
    activations, largest = saved_activations(model, tokens, tokens)
    return Estimate(
        submission=submission.name,
        profile=profile.name,
        depth=run.depth if run.depth is not None else getattr(getattr(model, "dims", None), "depth", None),
        world_size=run.world_size,
        micro_batch=(plan.device_batch, plan.seq_len),
        parameters=parameters,
        gradients=gradients,
        gradient_shard=gradient_shard,
        optimizer_state=max(owned),
        optimizer_state_total=sum(owned),
        activations=activations,
        workspace=2 * largest,
        capacity=device_capacity(profile),
        reserve=int(CUDA_RESERVE_GIB * GIB) if profile.device_type == "cuda" else 0,
        notes=(note,) if note else (),
    )


def check_fits(
    submission: Submission | str, profile: profiles.Profile | str, depth: int | None = None, world_size=None
) -> Estimate:
    """The estimate, or ``PlanDoesNotFit`` naming the numbers and the fix when the plan exceeds the GPU."""
    e = estimate(submission, profile, depth, world_size)
    if not e.fits:
        sequences, length = e.micro_batch
        per_sequence = (e.activations + e.workspace) / sequences  # both grow with the micro-batch
        room = e.capacity - (e.required - int((e.activations + e.workspace) * (1 + FRAGMENTATION)))
        fitting = max(0, int(room / (per_sequence * (1 + FRAGMENTATION))))
        raise PlanDoesNotFit(
            f"{e.submission} d{e.depth} on {e.profile} needs about {e.required / GIB:.1f} GiB per GPU, more than its "
            f"{e.capacity / GIB:.1f} GiB: parameters {e.parameters / GIB:.1f}, gradients "
            f"{(e.gradients + e.gradient_shard) / GIB:.1f}, optimizer state {e.optimizer_state / GIB:.1f}, "
            f"activations {e.activations / GIB:.1f} and workspace {e.workspace / GIB:.1f} ({sequences} sequences of "
            f"{length} tokens per micro-step, {per_sequence / GIB:.2f} GiB each). Fix: lower device_batch in "
            f"plan_training (at most about {fitting} sequences fit; the batch is then reached by more "
            f"accumulation steps) or pass a smaller --depth."
        )
    return e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.memory", description=__doc__.split("\n")[0])
    parser.add_argument("submission", help="submission folder (holding submission.py) or entry-point name")
    parser.add_argument("--profile", default="8xh100", choices=list(profiles.PROFILES), help="hardware profile")
    parser.add_argument("--depth", type=int, help="model depth (default: the profile's, else the submission's)")
    parser.add_argument("--world-size", type=int, help="ranks (default: the profile's, else 1)")
    args = parser.parse_args(argv)
    try:
        e = check_fits(args.submission, args.profile, args.depth, args.world_size)
    except PlanDoesNotFit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SubmissionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(e.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
