"""harness.ci: time to a val_bpb target, the reference and the candidate interleaved, the verdict by a paired test.

    pytest tests/test_ci_regression.py              # seconds: the rule and the arithmetic, a missing baseline
    pytest tests/test_ci_regression.py -m slow      # real checks: the tiny proxy (3 min), the CPU proxy (30+ min)

The rule and the time-to-target arithmetic are tested on hand-made numbers, and a missing or old baseline is
refused (CI's tier). The slow tier runs real `python -m harness.ci` subprocesses, first on a tiny proxy (d2,
6-step plan, target at step 3, one stored repetition): the baseline stores the reference's sources, target and
times; a check stops each run at the target; a copy 3x slower per step that plans fewer steps fails; a target
the reference no longer reaches is an error, drift against other hardware a report. Then the full CPU check
(d2, 30-step plan, 4 pairs) against the committed leaderboard/ci/cpu.json: the issue's acceptance, measured
figures in docs/ci.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_ci import variant

from harness.ci import CAP, regression_verdict, run_curves, time_to_target

REPO = Path(__file__).resolve().parents[1]
TINY = ["--profile", "cpu", "--steps", "6", "--fraction", "0.5", "--eval-every", "1", "--depth", "2"]


def ci(args: list[str], env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.ci", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def env(session_cache) -> dict:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_")}
    return {**inherited, "SPEEDRUN_CACHE": str(session_cache), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------------
# Time to target and the rule, on hand-made numbers


def test_time_to_target_interpolates_between_the_evaluations_around_the_crossing():
    evals = [(2, 4.0), (4, 3.0), (6, 2.0)]
    steps = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]  # 2 s after step 2, 6 s after step 4, 12 s after step 6
    assert time_to_target(evals, steps, 0, 2.5) == pytest.approx((9.0, 5.0))  # half way from step 4 to step 6
    assert time_to_target(evals, steps, 0, 3.0) == pytest.approx((6.0, 4.0))  # reached exactly at an evaluation
    assert time_to_target(evals, steps, 0, 1.9) is None  # never reached
    assert time_to_target(evals, steps, 0, 4.5) == pytest.approx((2.0, 2.0))  # the first evaluation counts in full
    assert time_to_target([(3, 5.0), (4, 2.0)], [1.0, 1.0], 2, 3.5) == pytest.approx((1.5, 3.5))  # from step 2 on


def test_a_run_slower_than_the_tolerance_with_significance_fails_and_a_noisy_one_gets_more_pairs():
    slower = regression_verdict([(10.0, 12.1), (12.0, 14.3), (9.0, 11.0)], floor=0.10)
    assert slower.outcome == "slower" and slower.failed
    assert slower.ratio == pytest.approx(
        math.exp(sum(math.log(b / a) for a, b in [(10, 12.1), (12, 14.3), (9, 11)]) / 3)
    )
    assert slower.p_slower < 0.05 and slower.sentence.startswith("is slower by 20.8%")
    noisy = regression_verdict([(10.0, 14.0), (12.0, 11.0), (9.0, 12.0)], floor=0.10)  # +20% on average, pairs disagree
    assert noisy.outcome == "inconclusive" and not noisy.failed and noisy.p_slower > 0.05


def test_the_tolerance_is_one_runs_noise_or_the_floor_whichever_is_larger():
    logs = [math.log(1.12), math.log(1.14), math.log(1.13)]  # 13% slower, very consistently
    small = regression_verdict([(1.0, math.exp(x)) for x in logs], floor=0.15)
    assert small.tolerance == 0.15 and small.outcome == "within tolerance" and not small.failed
    spread = regression_verdict([(1.0, 1.30), (1.0, 1.00), (1.0, 1.15)], floor=0.02)
    sd = math.sqrt(sum((math.log(r) - sum(map(math.log, (1.3, 1.0, 1.15))) / 3) ** 2 for r in (1.3, 1.0, 1.15)) / 2)
    assert spread.noise == pytest.approx(sd / math.sqrt(2)) and spread.tolerance == spread.noise


def test_a_faster_candidate_passes_and_is_reported_faster():
    faster = regression_verdict([(10.0, 8.0), (12.0, 9.8), (9.0, 7.1)], floor=0.10)
    assert faster.outcome == "faster" and not faster.failed and faster.ratio < 0.85 and faster.p_faster < 0.05
    assert faster.sentence.startswith("is faster by 19.8%")


def test_a_candidate_run_that_missed_the_target_fails_whatever_the_other_runs_say():
    missed = regression_verdict([(10.0, 9.0), (10.0, 9.5)], floor=0.10, unreached=1)
    assert missed.outcome == "not reached" and missed.failed
    assert f"within the cap ({CAP:g}x the slowest reference run's time) in 1 run" in missed.sentence


# ------------------------------------------------------------------------------------------------
# Real runs on a tiny proxy


@pytest.fixture(scope="module")
def tiny_baseline(tmp_path_factory, env) -> Path:
    """One stored repetition of climbmix on the tiny proxy, as --update-baseline writes it."""
    work = tmp_path_factory.mktemp("ci-baseline")
    path = work / "cpu.json"
    proc = ci(["submissions/climbmix", *TINY, "--update-baseline", "--repeats", "1", "--baseline", str(path),
               "--out", str(work / "out")], env)  # fmt: skip
    assert proc.returncode == 0, output(proc)
    return path


@pytest.mark.slow
def test_baseline_stores_the_reference_sources_its_target_and_its_time_to_it(tiny_baseline):
    data = json.loads(tiny_baseline.read_text())
    assert data["reference"]["name"] == "climbmix"
    assert data["reference"]["sources"]["submission.py"] == (REPO / "submissions/climbmix/submission.py").read_text()
    assert data["proxy"] | {"floor": None} == {"steps": 6, "fraction": 0.5, "eval_every": 1, "floor": None,
                                               "depth": 2, "capped": True, "threads": 1, "nproc": 1}  # fmt: skip
    assert data["machine"]["profile"] == "cpu" and data["machine"]["device_count"] == os.cpu_count()
    (rep,) = data["repetitions"]
    run_dir = tiny_baseline.parent / "out" / "runs" / "d2_A_seed0"
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "finished" and record["plan"]["num_steps"] == 6  # the whole proxy run
    # One repetition: the target is its own val_bpb at step 3, on the monitor rows, reached exactly there.
    evals, seconds, first = run_curves(run_dir)
    assert data["target"]["val_bpb"] == dict(evals)[3] == rep["val_bpb_at_target_step"]
    assert data["target"] | {"val_bpb": None} == {"val_bpb": None, "rows": "monitor", "step": 3, "proxy_steps": 6,
                                                  "repetitions": 1}  # fmt: skip
    assert first == 0 and rep["steps_to_target"] == 3.0 and rep["time_to_target_s"] == pytest.approx(sum(seconds[:3]))


@pytest.mark.slow
def test_copy_three_times_slower_per_step_that_plans_fewer_steps_fails(tiny_baseline, env, tmp_path):
    slow = variant(tmp_path, "slower_3x_fewer_steps")
    out = tmp_path / "ci"
    proc = ci([str(slow), "--profile", "cpu", "--baseline", str(tiny_baseline), "--pairs", "2", "--out", str(out)], env)
    assert proc.returncode == 1, output(proc)
    assert "slower_3x_fewer_steps on cpu: FAIL" in proc.stdout
    result = json.loads((out / "ci.json").read_text())
    assert result["verdict"] == "fail" and result["outcome"]["outcome"] in ("not reached", "slower")
    runs = result["runs"]
    assert [(r["side"], r["seed"]) for r in runs[:2]] == [("A", 0), ("B", 0)]  # the reference goes first
    # The reference ran from the stored sources and was stopped at the target, not at the end of its plan.
    assert (out / "reference" / "climbmix" / "submission.py").read_text() == json.loads(tiny_baseline.read_text())[
        "reference"]["sources"]["submission.py"]  # fmt: skip
    reference = json.loads((Path(runs[0]["run_dir"]) / "record.json").read_text())
    assert runs[0]["stopped"] == "target" and reference["status"] == "interrupted"
    assert 3 <= reference["steps_completed"] < 6 and runs[0]["steps_to_target"] == pytest.approx(3.0, abs=0.5)
    # The candidate planned fewer steps (the old projection called that faster) and took about 3x per step.
    candidate = json.loads((Path(runs[1]["run_dir"]) / "record.json").read_text())
    assert candidate["plan"]["num_steps"] == 4
    assert runs[1]["step_time_median_s"] > 2 * runs[0]["step_time_median_s"]
    if result["outcome"]["outcome"] == "not reached":
        assert runs[-1]["stopped"] == "cap" and runs[-1]["time_to_target_s"] is None
        assert "did not reach the target within the cap" in proc.stdout


@pytest.mark.slow
def test_a_target_the_reference_no_longer_reaches_is_an_error_that_says_to_measure_again(tiny_baseline, env, tmp_path):
    data = json.loads(tiny_baseline.read_text())
    data["target"]["val_bpb"] = 0.5  # far below anything a 6-step run reaches
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(data))
    proc = ci(["submissions/climbmix", "--profile", "cpu", "--baseline", str(stale), "--out", str(tmp_path / "o")], env)
    assert proc.returncode == 2, output(proc)
    assert "the reference did not reach the baseline's target val_bpb 0.5000 within 6 steps" in proc.stderr
    assert "--update-baseline" in proc.stderr


@pytest.mark.slow
def test_drift_against_a_baseline_from_other_hardware_is_reported_and_not_compared(tiny_baseline, env, tmp_path):
    data = json.loads(tiny_baseline.read_text())
    data["machine"]["device"] = "Some Other CPU"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    proc = ci(["--drift", "--profile", "cpu", "--baseline", str(other), "--out", str(tmp_path / "o")], env)
    assert proc.returncode == 3, output(proc)
    assert "device: baseline 'Some Other CPU', here" in proc.stdout
    assert not (tmp_path / "o" / "runs").exists()  # no run was made
    assert json.loads((tmp_path / "o" / "ci.json").read_text())["verdict"] == "mismatch"


def test_a_missing_or_old_baseline_names_the_command_that_measures_one(env, tmp_path):
    proc = ci(["submissions/climbmix", "--profile", "cpu", "--baseline", str(tmp_path / "none.json")], env)
    assert proc.returncode == 2 and "no baseline at" in proc.stderr and "--update-baseline" in proc.stderr
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": 1, "machine": {"profile": "cpu"}}))
    proc = ci(["submissions/climbmix", "--profile", "cpu", "--baseline", str(old)], env)
    assert proc.returncode == 2 and "schema 1" in proc.stderr and "--update-baseline" in proc.stderr
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"schema": ')  # cut short
    proc = ci(["submissions/climbmix", "--profile", "cpu", "--baseline", str(damaged)], env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "damaged.json is not UTF-8 JSON" in proc.stderr and "--update-baseline" in proc.stderr


# ------------------------------------------------------------------------------------------------
# The acceptance: the full CPU check against the committed baseline (run with -m slow; docs/ci.md)


def full_check(name: str, env: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    folder = variant(tmp_path, name)
    out = tmp_path / "ci"
    proc = ci([str(folder), "--profile", "cpu", "--out", str(out)], env)
    assert (out / "ci.json").is_file(), output(proc)
    return proc, json.loads((out / "ci.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_unmodified_submission_passes_the_full_check(attempt, env, tmp_path):
    proc, result = full_check("unmodified", env, tmp_path)
    assert proc.returncode == 0 and result["verdict"] == "pass", output(proc)
    assert result["elapsed_s"] < 600, "the CPU check must take at most 10 minutes"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slower_3x_fewer_steps", "sleep_20pct"])
def test_slower_copies_fail_the_full_check(name, env, tmp_path):
    proc, result = full_check(name, env, tmp_path)
    assert proc.returncode == 1 and result["verdict"] == "fail", output(proc)
    assert result["outcome"]["outcome"] in ("slower", "not reached")


@pytest.mark.slow
def test_a_higher_stable_learning_rate_passes_and_is_reported_faster(env, tmp_path):
    proc, result = full_check("higher_muon_lr", env, tmp_path)
    assert proc.returncode == 0 and result["verdict"] == "pass", output(proc)
    assert result["outcome"]["ratio"] < 1 and "faster by" in result["outcome"]["sentence"]
    steps = {(r["side"], r["seed"]): r["steps_to_target"] for r in result["runs"]}
    assert all(steps["B", seed] < steps["A", seed] for side, seed in steps if side == "A")  # fewer steps, each seed
