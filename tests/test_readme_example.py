"""The README's submission example is real code: it loads, overrides exactly one hook, and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.hookspecs import Run
from harness.plugins import load_submission

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Writing a submission", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_submission_example_halves_the_token_embedding_learning_rate(tmp_path):
    folder = tmp_path / "half_embedding_lr"
    folder.mkdir()
    (folder / "submission.py").write_text(readme_example())
    example = load_submission(str(folder))
    baseline = load_submission("baselines/nanochat")
    assert example.overrides == ["build_optimizer"]
    run = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0,
              vocab_size=512, bos_token_id=503, seq_len=64, depth=2, max_steps=4, max_batch_tokens=512)  # fmt: skip

    def embedding_lr(sub) -> float:
        model = sub.hook.build_model(run=run)
        plan = sub.hook.plan_training(model=model, run=run)
        optimizer = sub.hook.build_optimizer(model=model, plan=plan, run=run)
        schedule = sub.hook.build_schedule(optimizer=optimizer, plan=plan, run=run)
        schedule(plan.num_steps // 2)
        return next(g["lr"] for g in optimizer.param_groups if g["name"] == "token_embedding")

    assert embedding_lr(example) == pytest.approx(0.5 * embedding_lr(baseline))
