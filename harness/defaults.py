"""The harness's own hook implementations, registered behind the baseline: defaults are plugins too.

Only ``train_step`` lives here: it is the mechanics of gradient accumulation, which every recipe shares and few
want to change. Gradients are averaged over ranks afterwards, once per step, by the harness's sharding
(``harness/sharding.py``), not inside train_step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from harness import hookimpl
from harness.hookspecs import Batch, Plan, Run


@hookimpl
def train_step(model: torch.nn.Module, batches: Iterable[Batch], plan: Plan, run: Run) -> torch.Tensor:
    """Forward and backward over the step's micro-batches; each gradient is scaled by 1/accum, so that the sum
    the micro-steps accumulate is the mean over this rank's batch."""
    accum = plan.grad_accum_steps(run.world_size)
    total = torch.zeros((), device=run.device)
    for inputs, targets in batches:
        loss = model(inputs, targets)
        (loss / accum).backward()
        total += loss.detach()
    return total / accum
