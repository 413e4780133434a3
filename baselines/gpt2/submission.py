"""The 2019 GPT-2 recipe as a complete speedrun submission: proof that the contract serves other architectures.

Implements all five planning hooks, so nothing falls through to the nanochat baseline except train_step
(the harness's default). Run it like any submission, e.g. ``--submission baselines/gpt2``; the package
``baselines.gpt2`` re-exports these hooks for the ``speedrun.submissions`` entry point.

Recipe: GPT-2 architecture (``model.py``), AdamW with betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
matrices only, linear warmup then cosine decay to 10% (GPT-3 paper, Brown et al. 2020, appendix B), about 20
tokens per parameter (Chinchilla, Hoffmann et al. 2022), 2^19 tokens per step (GPT-3 small's 0.5M).
"""

from __future__ import annotations

import math

import torch

from baselines.gpt2.model import GPT2
from baselines.nanochat.submission import fit_plan
from harness import hookimpl
from harness.hookspecs import Plan, Run

DATASET = "fineweb-edu"
DEPTH = 12  # GPT-2 small
TOKENS_PER_PARAM = 20  # Chinchilla's compute-optimal ratio
TOTAL_BATCH_TOKENS = 2**19
BASE_LR = 6e-4  # GPT-3 small (125M, width 768); scaled by 768/width elsewhere (muP's 1/width rule for Adam)
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
WARMUP_FRACTION = 0.02  # GPT-3 warms up over 375M of 300B tokens; 2% suits short runs better
FINAL_LR_FRACTION = 0.1
MAX_LENGTH_FACTOR = 4  # learned positions for up to 4 * seq_len tokens (evals may be longer than training rows)


@hookimpl
def select_dataset() -> str:
    return DATASET


@hookimpl
def build_model(run: Run) -> torch.nn.Module:
    model = GPT2(run.depth or DEPTH, run.vocab_size, MAX_LENGTH_FACTOR * run.seq_len, compute_dtype=run.torch_dtype)
    return model.to(run.device)


@hookimpl
def plan_training(model: torch.nn.Module, run: Run) -> Plan:
    params = sum(p.numel() for p in model.parameters())
    tokens = TOKENS_PER_PARAM * params
    notes = [f"GPT-2 d{model.depth}: {params:,} params x {TOKENS_PER_PARAM} = {tokens:,} tokens"]
    return fit_plan(tokens, TOTAL_BATCH_TOKENS, run, model.flops_per_token(run.seq_len), notes)


@hookimpl
def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    lr = BASE_LR * 768 / model.width  # gives 2.25e-4 at width 2048, near GPT-3 XL's 2.0e-4
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]  # biases and LayerNorm gains: no decay
    groups = [
        dict(params=matrices, weight_decay=WEIGHT_DECAY, initial_lr=lr),
        dict(params=others, weight_decay=0.0, initial_lr=lr),
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS)


def lr_multiplier(step: int, num_steps: int) -> float:
    warmup = max(1, round(WARMUP_FRACTION * num_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, num_steps - warmup)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


@hookimpl
def build_schedule(optimizer: torch.optim.Optimizer, plan: Plan):
    def schedule(step: int) -> dict[str, float]:
        mult = lr_multiplier(step, plan.num_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * mult
        return {"lr_mult": mult}

    return schedule
