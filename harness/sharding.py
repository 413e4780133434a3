"""The harness's data-parallel optimizer sharding (ZeRO-2, as the reference): every rank holds the whole model,
the gradients are reduce-scattered so that each rank receives the averaged gradients of the parameters it owns,
the submission's optimizer updates only those, and the updated weights are all-gathered.

    sharding = Sharding(model, optimizer, world_size, rank)   # after build_optimizer; world_size 1: no-op
    for step in ...:
        sharding.zero_grad()                 # instead of model.zero_grad(): attach the flat gradient buffers
        loss = train_step(model, batches)    # the bare model (no DDP); backward accumulates locally
        schedule(step)
        sharding.step()                      # reduce_gradients(), optimizer.step(), gather_parameters()
    sharding.optimizer_state_dict()          # the full state on rank 0 (checkpoints); None on the others
    sharding.load_optimizer_state_dict(sd)   # every rank keeps the state of the parameters it owns

The contract with a submission's optimizer is unchanged: it is one ``torch.optim.Optimizer`` that sees averaged
gradients. Ownership is by whole parameter, so it needs no change: on each rank ``.grad`` is the averaged
gradient for the parameters this rank owns and ``None`` for the others, which every torch optimizer skips. Its
state then exists only for the owned parameters, which is the memory ZeRO saves (at d24 the AdamW moments of
the embeddings and head alone are 2.8-5.6 GB unsharded), and each rank runs 1/world of the Muon iterations.

Ownership (``partition``) balances every parameter group over the ranks (the reference's Muon stacks give each
rank 1/world of every shape group), breaking ties by the fewest elements owned overall. Gradients live in one
flat buffer per (device, dtype), laid out rank by rank, so one reduce-scatter and one all-gather per dtype move
everything; the gather writes into the gradient buffer, which is free by then, so sharding costs no memory
beyond the 1/world shard. Correctness does not rest on the optimizer skipping: the gather overwrites every
parameter with its owner's copy.

Collectives are ``torch.distributed``'s (NCCL on GPUs, gloo on CPU); the tests run two real gloo processes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist

# torch 2.13 renamed the tensor collectives; the old names still work there and are the only ones before.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def partition(groups: list[list[torch.Tensor]], world_size: int) -> list[list[int]]:
    """The owner rank of every parameter, group by group: each parameter (largest first) goes to the rank that
    owns the fewest elements of its group so far, then the fewest overall, then the lowest rank. A pure function
    of the shapes, so every rank computes the same answer."""
    total = [0] * world_size
    owners = []
    for params in groups:
        in_group = [0] * world_size
        group_owners = [0] * len(params)
        for i in sorted(range(len(params)), key=lambda i: -params[i].numel()):
            rank = min(range(world_size), key=lambda r: (in_group[r], total[r], r))
            group_owners[i] = rank
            in_group[rank] += params[i].numel()
            total[rank] += params[i].numel()
        owners.append(group_owners)
    return owners


@dataclass
class _Bucket:
    """The parameters of one (device, dtype), laid out rank by rank in a flat buffer of world_size * shard."""

    params: list[torch.Tensor]  # in layout order
    offsets: list[int]  # start of each parameter in the flat buffer
    shard: int  # elements per rank (the largest rank's share; the others are padded to it)
    flat: torch.Tensor  # world_size * shard: the local gradients, then the gathered weights
    owned: torch.Tensor  # shard: this rank's averaged gradients, then its updated weights


class Sharding:
    """ZeRO-2 over ``torch.distributed`` for ``optimizer``'s parameters; see the module docstring."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, world_size: int, rank: int):
        self.model, self.optimizer = model, optimizer
        self.world_size, self.rank = world_size, rank
        groups = [[p for p in g["params"] if p.requires_grad] for g in optimizer.param_groups]
        self.params = [p for params in groups for p in params]  # the optimizer's order: its state_dict indices
        owners = [r for group in partition(groups, world_size) for r in group]
        self.owner = {id(p): r for p, r in zip(self.params, owners, strict=True)}
        self.buckets: list[_Bucket] = []
        if world_size > 1:
            self._build_buckets()

    def _build_buckets(self) -> None:
        by_kind = defaultdict(list)
        for p in self.params:
            by_kind[(p.device, p.dtype)].append(p)
        for (device, dtype), params in by_kind.items():
            per_rank = [[p for p in params if self.owner[id(p)] == r] for r in range(self.world_size)]
            shard = max(sum(p.numel() for p in ps) for ps in per_rank)
            layout, offsets = [], []
            for r, ps in enumerate(per_rank):
                start = r * shard
                for p in ps:
                    layout.append(p)
                    offsets.append(start)
                    start += p.numel()
            flat = torch.zeros(self.world_size * shard, dtype=dtype, device=device)
            owned = torch.zeros(shard, dtype=dtype, device=device)
            self.buckets.append(_Bucket(layout, offsets, shard, flat, owned))

    def owns(self, p: torch.Tensor) -> bool:
        return self.owner[id(p)] == self.rank

    @staticmethod
    def _view(buffer: torch.Tensor, offset: int, p: torch.Tensor) -> torch.Tensor:
        return buffer[offset : offset + p.numel()].view_as(p)

    # -- the step ------------------------------------------------------------------------------------------

    def zero_grad(self) -> None:
        """Zero the gradients before a step's first backward: each ``.grad`` becomes a view into the flat buffer,
        so backward accumulates straight into it (with one rank: ``model.zero_grad(set_to_none=True)``)."""
        if self.world_size == 1:
            self.model.zero_grad(set_to_none=True)
            return
        if not self.buckets:  # released
            self._build_buckets()
        for bucket in self.buckets:
            bucket.flat.zero_()
            for p, offset in zip(bucket.params, bucket.offsets, strict=True):
                p.grad = self._view(bucket.flat, offset, p)

    def reduce_gradients(self) -> None:
        """Reduce-scatter: the averaged gradient on the parameters this rank owns, ``.grad = None`` on the others."""
        if self.world_size == 1:
            return
        nccl = dist.get_backend() == "nccl"
        for bucket in self.buckets:
            for p, offset in zip(bucket.params, bucket.offsets, strict=True):
                view = self._view(bucket.flat, offset, p)
                if p.grad is None:  # a parameter the loss did not reach: its gradient is zero
                    view.zero_()
                elif p.grad.data_ptr() != view.data_ptr():  # a train_step that replaced .grad: take its value
                    view.copy_(p.grad)
            _reduce_scatter(bucket.owned, bucket.flat, op=dist.ReduceOp.AVG if nccl else dist.ReduceOp.SUM)
            if not nccl:  # gloo has no AVG
                bucket.owned.div_(self.world_size)
            for p, offset in zip(bucket.params, bucket.offsets, strict=True):
                owned = self.owns(p)
                p.grad = self._view(bucket.owned, offset - self.rank * bucket.shard, p) if owned else None

    def gather_parameters(self) -> None:
        """All-gather: every rank's parameters become their owners' updated values."""
        if self.world_size == 1:
            return
        for bucket in self.buckets:
            layout = zip(bucket.params, bucket.offsets, strict=True)
            mine = [(p, o - self.rank * bucket.shard) for p, o in layout if self.owns(p)]
            if mine:
                torch._foreach_copy_([self._view(bucket.owned, o, p) for p, o in mine], [p.detach() for p, _ in mine])
            _all_gather(bucket.flat, bucket.owned)
            with torch.no_grad():
                views = [self._view(bucket.flat, o, p) for p, o in zip(bucket.params, bucket.offsets, strict=True)]
                torch._foreach_copy_([p.detach() for p in bucket.params], views)
        for p in self.params:
            p.grad = None  # the views point at weights now; zero_grad attaches fresh ones

    def step(self) -> None:
        """One optimizer step of the whole data-parallel group: reduce, the optimizer's step, gather."""
        self.reduce_gradients()
        self.optimizer.step()
        self.gather_parameters()

    def release(self) -> None:
        """Free the flat buffers (after training: the evals need the memory). Stepping again rebuilds them."""
        for p in self.params:
            p.grad = None
        self.buckets = []

    # -- optimizer state --------------------------------------------------------------------------------------

    def optimizer_state_dict(self) -> dict | None:
        """The optimizer's full state dict, as one unsharded optimizer would have it, on rank 0 (None elsewhere).

        Every rank must call it. Tensors come back on the CPU. With one rank: ``optimizer.state_dict()``.
        """
        local = self.optimizer.state_dict()
        if self.world_size == 1:
            return local
        mine = {i: _to_cpu(s) for i, s in local["state"].items()}
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0:
            return None
        state = {}
        for part in gathered:
            state.update(part)
        return {"state": dict(sorted(state.items())), "param_groups": local["param_groups"]}

    def load_optimizer_state_dict(self, state_dict: dict) -> None:
        """Load a full (or this rank's) optimizer state dict, keeping the state of the owned parameters only."""
        if self.world_size > 1:
            owned = {i for i, p in enumerate(self.params) if self.owns(p)}
            kept = {i: s for i, s in state_dict["state"].items() if int(i) in owned}
            state_dict = {"state": kept, "param_groups": state_dict["param_groups"]}
        self.optimizer.load_state_dict(state_dict)


def _to_cpu(state):
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_to_cpu(v) for v in state)
    return state
