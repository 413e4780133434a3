"""The harness's own hook implementations, registered behind the baseline: defaults are plugins too.

Only ``train_step`` lives here: it is the mechanics of gradient accumulation and of synchronising
gradients once per step, which every recipe shares and few want to change.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel

from harness import hookimpl
from harness.hookspecs import Batch, Plan, Run


@hookimpl
def train_step(model: torch.nn.Module, batches: Iterable[Batch], plan: Plan, run: Run) -> torch.Tensor:
    """Forward and backward over the step's micro-batches; gradients are averaged over ranks on the last one."""
    accum = plan.grad_accum_steps(run.world_size)
    total = torch.zeros((), device=run.device)
    for i, (inputs, targets) in enumerate(batches):
        last = i == accum - 1
        # DDP all-reduces during backward unless told not to: only the last micro-step communicates.
        sync = nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync:
            loss = model(inputs, targets)
            (loss / accum).backward()
        total += loss.detach()
    return total / accum
