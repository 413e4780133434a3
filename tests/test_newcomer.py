"""A newcomer's first hour: every recipe in the repository runs through CORE, a model written from scratch by the
contract trains and is evaluated, and a model that breaks the contract is stopped before any training."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.record import validate_record

REPO = Path(__file__).resolve().parents[1]
TINY = ["--profile", "cpu", "--depth", "2", "--max-steps", "3", "--max-per-task", "2"]


def run(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.run([sys.executable, "-m", "harness.run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    record = json.loads((out / "record.json").read_text())
    assert validate_record(record) == []
    return proc, record


@pytest.mark.parametrize(
    "recipe",
    [
        pytest.param("baselines/nanochat", marks=pytest.mark.slow),
        "gpt2",
        pytest.param("submissions/climbmix", marks=pytest.mark.slow),
    ],
)
def test_every_recipe_in_the_repository_trains_and_is_evaluated_through_core(recipe, tmp_path, harness_env):
    proc, record = run([recipe, "--out", str(tmp_path / "out"), *TINY], harness_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record["status"] == "finished" and record["metrics"]["core_partial"] is not None
    assert len(record["metrics"]["core_tasks"]) == 18  # every task of the shared bundle, long prompts included


@pytest.mark.slow
def test_the_contract_docs_from_scratch_submission_trains_and_is_evaluated(tmp_path, harness_env):
    text = (REPO / "docs" / "contract.md").read_text()
    code = re.search(r"## A complete submission that uses no baseline code.*?```python\n(.*?)```", text, re.S)
    folder = tmp_path / "tiny_gpt"
    folder.mkdir()
    (folder / "submission.py").write_text(code.group(1))
    proc, record = run([str(folder), "--out", str(tmp_path / "out"), *TINY], harness_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record["submission"]["overrides"] == ["build_model", "build_optimizer", "build_schedule", "plan_training"]
    assert record["metrics"]["val_bpb"] > 0 and record["metrics"]["core_partial"] is not None
    assert record["program"]["max_len"] in (None, 4096)


def test_a_model_with_logits_of_the_wrong_shape_is_stopped_before_any_training(tmp_path, harness_env):
    folder = tmp_path / "wrong_logits"
    folder.mkdir()
    (folder / "submission.py").write_text(
        textwrap.dedent(
            """
            from harness import hookimpl
            from baselines.nanochat import submission as baseline

            @hookimpl
            def build_model(run):
                model = baseline.make_model(run)
                forward = model.forward

                def drops_a_token(idx, targets=None):
                    out = forward(idx, targets)
                    return out if targets is not None else out[..., :-1]  # one vocabulary entry short

                model.forward = drops_a_token
                return model
            """
        )
    )
    proc, record = run([str(folder), "--out", str(tmp_path / "out"), *TINY], harness_env)
    assert proc.returncode == 1 and record["status"] == "failed" and record["steps_completed"] == 0
    message = record["error"]["message"]
    assert message.startswith(str(folder / "submission.py"))
    assert "build_model's model fails the contract at length 8" in message
    assert "model(inputs) returned a torch.float32 tensor of shape (2, 8, 4095), not logits of shape (2, 8, 4096)" in (
        message
    )
    assert "warmup" not in record["phases"] and "train" not in record["phases"]
