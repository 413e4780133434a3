"""harness.ci on the CPU smoke profile: a baseline measured here, the unmodified submission passes against it, a copy
made deliberately slower fails with the regression in percent and projected hours, a copy that stops learning fails
the loss check, and a baseline from other hardware is reported instead of compared.

    pytest tests/test_ci_regression.py

Every check is a real `python -m harness.ci` subprocess running the real harness (d1, 10-step proxy runs, no CORE):
about eight harness runs of under 10 s each on a quiet 2-core machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.ci import K_SIGMA, LOSS_FLOOR, compare

REPO = Path(__file__).resolve().parents[1]
CLIMBMIX = REPO / "submissions" / "climbmix"
PROXY = ["--profile", "cpu", "--steps", "10", "--depth", "1"]
SLOWDOWN = 2.0  # the slow copy sleeps this many baseline step times per step: +200% whatever the machine's speed


def ci(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.ci", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def copy_of_climbmix(folder: Path, extra: str) -> Path:
    """climbmix's own files plus ``extra`` hook code appended to its submission.py."""
    folder.mkdir(parents=True)
    (folder / "submission.py").write_text((CLIMBMIX / "submission.py").read_text() + extra)
    (folder / "README.md").write_text((CLIMBMIX / "README.md").read_text())
    return folder


@pytest.fixture(scope="module")
def env(session_cache) -> dict:
    return {**os.environ, "SPEEDRUN_CACHE": str(session_cache), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, env) -> Path:
    """Three repetitions of climbmix measured on this machine, as --update-baseline stores them."""
    work = tmp_path_factory.mktemp("ci-baseline")
    path = work / "cpu.json"
    proc = ci(["submissions/climbmix", *PROXY, "--update-baseline", "--repeats", "3", "--baseline", str(path),
               "--out", str(work / "runs")], env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return path


def test_baseline_stores_each_repetition_and_the_machine_it_was_measured_on(baseline):
    data = json.loads(baseline.read_text())
    assert data["machine"]["profile"] == "cpu" and data["machine"]["device_count"] == os.cpu_count()
    assert data["config"]["seeds"] == [0, 1, 2] and data["config"]["depth"] == 1
    reps = data["repetitions"]
    assert [r["seed"] for r in reps] == [0, 1, 2]
    record = json.loads((baseline.parent / "runs" / "seed0" / "record.json").read_text())
    # The projection uses the plan the harness derives with no step cap (its notes show the derivation).
    uncapped = int(re.search(r"steps = tokens // batch = ([\d,]+)", record["plan"]["notes"])[1].replace(",", ""))
    for r in reps:
        assert r["steps"] == 10 and r["planned_steps"] == uncapped > 10
        assert r["projected_s"] == pytest.approx(r["fixed_cost_s"] + r["step_time_s"] * uncapped)
        assert r["tokens_per_s"] == pytest.approx(record["plan"]["total_batch_tokens"] / r["step_time_s"])
        assert r["peak_host_memory_gb"] > 0.1
        assert set(r["loss_at"]) == {str(s) for s in data["config"]["loss_steps"]}


def test_unmodified_submission_passes_against_a_baseline_measured_here(baseline, env, tmp_path):
    proc = ci(["submissions/climbmix", "--profile", "cpu", "--baseline", str(baseline), "--out", str(tmp_path)], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "climbmix on cpu: PASS" in proc.stdout
    result = json.loads((tmp_path / "ci.json").read_text())
    assert result["verdict"] == "pass" and result["failures"] == []
    assert "| projected time-to-target |" in result["markdown"]


def test_copy_sleeping_in_every_step_fails_with_the_regression_in_percent_and_hours(baseline, env, tmp_path):
    step_s = sum(r["step_time_s"] for r in json.loads(baseline.read_text())["repetitions"]) / 3
    slow = copy_of_climbmix(
        tmp_path / "climbmix_slow",
        f"""

import time as _time

from harness import defaults as _defaults


@hookimpl
def train_step(model, batches, plan, run):
    _time.sleep({SLOWDOWN * step_s:.4f})  # deliberately slower: tests/test_ci_regression.py
    return _defaults.train_step(model, batches, plan, run)
""",
    )
    out = tmp_path / "ci"
    proc = ci([str(slow), "--profile", "cpu", "--baseline", str(baseline), "--out", str(out), "--confirm", "0"], env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    message = re.search(r"FAIL\*\*: projected time-to-target regressed by \+(\d+\.\d)% .*: ([\d.]+) h against the "
                        r"baseline's ([\d.]+) h \(\+([\d.]+) h", proc.stdout)  # fmt: skip
    assert message, proc.stdout
    percent, hours, base_hours, extra_hours = map(float, message.groups())
    assert percent > 100  # about +200%: the sleep is twice a step
    assert extra_hours == pytest.approx(hours - base_hours, abs=0.002)
    assert json.loads((out / "ci.json").read_text())["verdict"] == "fail"


def test_copy_that_stops_learning_fails_the_loss_check(baseline, env, tmp_path):
    frozen = copy_of_climbmix(
        tmp_path / "climbmix_frozen",
        """

@hookimpl
def build_schedule(optimizer):
    def frozen(step):
        for group in optimizer.param_groups:
            group["lr"] = 0.0  # the model never changes: its loss stays at the initial one
        return {"lr_mult": 0.0}

    return frozen
""",
    )
    out = tmp_path / "ci"
    proc = ci([str(frozen), "--profile", "cpu", "--baseline", str(baseline), "--out", str(out), "--confirm", "0"], env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    failures = json.loads((out / "ci.json").read_text())["failures"]
    assert any(re.match(r"loss at step 10 is [\d.]+ against the baseline's [\d.]+ \(\+", f) for f in failures)


def test_baseline_from_other_hardware_is_reported_and_not_compared(baseline, env, tmp_path):
    data = json.loads(baseline.read_text())
    data["machine"]["device"] = "Some Other CPU"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    proc = ci(["submissions/climbmix", "--profile", "cpu", "--baseline", str(other), "--out", str(tmp_path)], env)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "device: baseline 'Some Other CPU', here" in proc.stdout
    assert not (tmp_path / "seed0").exists()  # no proxy run was made
    assert json.loads((tmp_path / "ci.json").read_text())["verdict"] == "mismatch"


def test_missing_baseline_names_the_command_that_measures_one(env, tmp_path):
    proc = ci(["submissions/climbmix", "--profile", "cpu", "--baseline", str(tmp_path / "none.json")], env)
    assert proc.returncode == 2
    assert "no baseline at" in proc.stderr and "--update-baseline" in proc.stderr


def repetition(projected_s: float, loss: float) -> dict:
    return {"projected_s": projected_s, "step_time_s": 1.0, "tokens_per_s": 1.0, "fixed_cost_s": 0.0,
            "planned_steps": 100, "loss_at": {"10": loss}}  # fmt: skip


def test_tolerances_are_three_baseline_sds_or_the_floor_whichever_is_larger():
    config = {"time_floor": 0.05, "loss_steps": [10], "loss_window": 1}
    noisy = {"config": config, "repetitions": [repetition(t, 3.0 + d) for t, d in ((90, 0), (100, 0.1), (110, 0.2))]}
    rows = compare(noisy, [repetition(100, 3.0)])
    assert rows[0]["tolerance"] == pytest.approx(K_SIGMA * 10 / 100)  # sd 10 on a mean of 100
    assert rows[-1]["tolerance"] == pytest.approx(K_SIGMA * 0.1)
    quiet = {"config": config, "repetitions": [repetition(100, 3.0)] * 3}
    rows = compare(quiet, [repetition(104, 3.0 + LOSS_FLOOR * 0.9)])
    assert rows[0]["tolerance"] == 0.05 and rows[0]["ok"] and math.isclose(rows[0]["change"], 0.04)
    assert rows[-1]["tolerance"] == LOSS_FLOOR and rows[-1]["ok"]
    assert not compare(quiet, [repetition(106, 3.0)])[0]["ok"]
    assert not compare(quiet, [repetition(100, 3.0 + LOSS_FLOOR * 1.1)])[-1]["ok"]
