"""The reference schedule: learning-rate multiplier, Muon momentum and Muon weight decay as functions of the step.

    schedule = make_schedule(optimizer, num_steps=5568)
    schedule(step)   # sets every group's lr, the Muon momentum and weight decay; returns what it set

From docs/spec/reference-recipe.md, Schedule: linear warmup over 40 steps, constant, then a linear
warmdown over the last 65% of steps to 5% of the peak; Muon momentum 0.85 -> 0.97 over the first 400 steps,
0.97, then down to 0.90 during the warmdown; Muon weight decay cosine-decayed from its peak to 0.
"""

from __future__ import annotations

import math

import torch

WARMUP_STEPS = 40
WARMUP_MAX_FRACTION = 0.1  # short (smoke) runs warm up over at most 10% of their steps; 40 << 10% of 5,568
WARMDOWN_FRACTION = 0.65
FINAL_LR_FRACTION = 0.05
MOMENTUM_START, MOMENTUM_PEAK, MOMENTUM_END = 0.85, 0.97, 0.90
MOMENTUM_WARMUP_STEPS = 400


def lr_multiplier(step: int, num_steps: int) -> float:
    warmup = max(1, min(WARMUP_STEPS, int(WARMUP_MAX_FRACTION * num_steps)))
    warmdown = round(WARMDOWN_FRACTION * num_steps)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_steps - warmdown:
        return 1.0
    progress = (num_steps - step) / warmdown  # 1 at the start of the warmdown, 0 after the last step
    return progress + (1 - progress) * FINAL_LR_FRACTION


def muon_momentum(step: int, num_steps: int) -> float:
    warmdown_start = num_steps - round(WARMDOWN_FRACTION * num_steps)

    def warming(s: int) -> float:
        return MOMENTUM_START + min(s / MOMENTUM_WARMUP_STEPS, 1.0) * (MOMENTUM_PEAK - MOMENTUM_START)

    if step <= warmdown_start:
        return warming(step)
    # During the warmdown, slide from wherever the warmup got to (0.97 in long runs) down to 0.90.
    start = warming(warmdown_start)
    frac = (step - warmdown_start) / max(1, num_steps - warmdown_start)
    return start + frac * (MOMENTUM_END - start)


def weight_decay_multiplier(step: int, num_steps: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / num_steps))


def make_schedule(optimizer: torch.optim.Optimizer, num_steps: int):
    """Return ``schedule(step) -> dict`` for a ``MuonAdamW`` optimizer, or any optimizer for the learning rate.

    Each group's peak learning rate is its ``initial_lr``, taken from its ``lr`` when the group has none, so a
    submission that only swaps the optimizer (say, a plain ``torch.optim.AdamW``) keeps the reference schedule.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be at least 1")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])

    def schedule(step: int) -> dict[str, float]:
        mult = lr_multiplier(step, num_steps)
        momentum = muon_momentum(step, num_steps)
        wd_mult = weight_decay_multiplier(step, num_steps)
        muon_wd = 0.0
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * mult
            if group.get("kind") == "muon":
                group["momentum"] = momentum
                group["weight_decay"] = muon_wd = group["initial_weight_decay"] * wd_mult
        return {"lr_mult": mult, "muon_momentum": momentum, "muon_wd": muon_wd}

    return schedule
