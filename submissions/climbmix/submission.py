"""The nanochat record recipe (leaderboard row 6, 1.65 h on 8xH100): the baseline with three changes.

    ClimbMix data instead of FineWeb-Edu; data:param ratio 8 instead of 12; fp8 matmuls in the blocks.

Everything else (d24, Muon + AdamW, the schedule, smear and backout) is the baseline's, reused by calling its
helpers with different arguments. The baseline module is imported as a module, not its functions by name, so
that pluggy does not register the baseline's hooks a second time as this plugin's. See README.md.
"""

from __future__ import annotations

import torch

from baselines.nanochat import submission as baseline
from harness import hookimpl
from harness.hookspecs import Plan, Run

DATASET = "climbmix"
RATIO = 8  # tokens per scaling parameter: d24 trains on 5.84B tokens in 5,568 steps of 2^20
FP8 = True  # only where the GPU supports it (compute capability 8.9+); a warning and bf16 elsewhere


@hookimpl
def select_dataset() -> str:
    return DATASET


@hookimpl
def build_model(run: Run) -> torch.nn.Module:
    return baseline.make_model(run, fp8=FP8)


@hookimpl
def plan_training(model: torch.nn.Module, run: Run) -> Plan:
    return baseline.make_plan(model, run, ratio=RATIO)
