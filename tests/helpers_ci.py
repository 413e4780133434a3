"""Copies of ClimbMix changed the ways a contributor might change it, for the harness.ci tests and acceptance runs.

    from helpers_ci import variant
    folder = variant(tmp_path, "slower_3x_fewer_steps")   # tmp_path/slower_3x_fewer_steps/submission.py

    python tests/helpers_ci.py OUT_DIR                      # writes every variant under OUT_DIR (for manual checks)

Each variant is climbmix's own submission.py with hooks appended (a later definition replaces climbmix's of the
same name). The slowdowns time the step they slow and sleep in proportion to it, so a variant is 3x or 1.2x the
step time whatever the machine's speed or load.
"""

from __future__ import annotations

import sys
from pathlib import Path

CLIMBMIX = Path(__file__).resolve().parents[1] / "submissions" / "climbmix"

SLOWER = """

import time as _time

from harness import defaults as _defaults

SLEEP_SHARE = {share}  # sleep this share of each step's own time: the step takes {factor}x as long


@hookimpl
def train_step(model, batches, plan, run):
    started = _time.perf_counter()
    loss = _defaults.train_step(model=model, batches=batches, plan=plan, run=run)
    _time.sleep(SLEEP_SHARE * (_time.perf_counter() - started))  # CPU: the step's work is done by now
    return loss
"""

FEWER_STEPS = """

import dataclasses as _dataclasses


@hookimpl
def plan_training(model, run):
    plan = baseline.make_plan(model, run, ratio=RATIO)
    return _dataclasses.replace(plan, num_steps=max(1, plan.num_steps * 2 // 3))  # a third fewer steps
"""

HIGHER_MUON_LR = """

MUON_LR_SCALE = 6  # stable on the smoke profile at d2: reaches the CI target in about a fifth fewer steps


@hookimpl
def build_schedule(optimizer, plan):
    from baselines.nanochat import schedule as _schedule

    reference = _schedule.make_schedule(optimizer, plan.num_steps)

    def scaled(step):
        settings = reference(step)
        for group in optimizer.param_groups:
            if group["kind"] == "muon":
                group["lr"] *= MUON_LR_SCALE
        return settings

    return scaled
"""

FROZEN = """


@hookimpl
def build_schedule(optimizer):
    def frozen(step):
        for group in optimizer.param_groups:
            group["lr"] = 0.0  # the model never changes: its loss stays at the initial one
        return {"lr_mult": 0.0}

    return frozen
"""

VARIANTS = {
    "unmodified": "",
    "slower_3x_fewer_steps": SLOWER.format(share=2.0, factor=3) + FEWER_STEPS,  # the contributor
    "sleep_20pct": SLOWER.format(share=0.2, factor=1.2),
    "higher_muon_lr": HIGHER_MUON_LR,
    "frozen": FROZEN,
}


def variant(folder: Path, name: str) -> Path:
    """climbmix's files with the variant's hooks appended, in ``folder/name``."""
    target = folder / name
    target.mkdir(parents=True)
    (target / "submission.py").write_text((CLIMBMIX / "submission.py").read_text() + VARIANTS[name])
    (target / "README.md").write_text(f"ClimbMix, changed for the harness.ci tests: {name}.\n")
    return target


if __name__ == "__main__":
    for name in VARIANTS:
        print(variant(Path(sys.argv[1]), name))
