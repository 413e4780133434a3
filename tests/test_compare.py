"""`python -m harness.compare`: interleaved A/B runs of two submissions and their statistics, and CONTRIBUTING.md.

    pytest tests/test_compare.py       # about 2-3 minutes on 2 cores: 18 short harness runs, the rest in seconds

The first tests check the verdicts and the run plan on hand-made samples. The last two run the real command in
real subprocesses on the CPU smoke profile: the CONTRIBUTING.md walkthrough (scaffold a copy of ClimbMix and
compare it with the original, 3 + 3 runs) and a deliberately slower copy (one second of sleep in every training
step) compared at two depths. Runs use one thread (OMP_NUM_THREADS=1): on the shared 2-core machine two OpenMP
threads per run make the timings several times slower and far noisier.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers_leaderboard import sample_record

from harness.compare import (
    BASE_METRICS,
    Metric,
    compare_metric,
    compare_runs,
    eligibility,
    fixed_step_losses,
    main,
    plan_runs,
    transfer_verdict,
)
from harness.record import Metrics, Record
from harness.stats import compare_samples

REPO = Path(__file__).resolve().parents[1]
CLIMBMIX = REPO / "submissions" / "climbmix"
TIME, LOSS = BASE_METRICS[0], BASE_METRICS[4]
THROUGHPUT = BASE_METRICS[1]
SLEEP_S, SLOW_STEPS = 1.0, 5  # the slower copy sleeps 1 s in each of 5 timed steps: 5 s more training time
SLOW_HOOK = f"""

SLEEP_S = {SLEEP_S}  # seconds of sleep added to every training step: a deliberately slower copy


@hookimpl
def train_step(model, batches, plan, run):
    import time

    from harness import defaults

    time.sleep(SLEEP_S)
    return defaults.train_step(model=model, batches=batches, plan=plan, run=run)
"""


@pytest.fixture(scope="module")
def run_env(session_cache) -> dict[str, str]:
    """Environment of the harness subprocesses: the session's cache, one thread per run, no wandb traffic, this
    interpreter's `python` first on PATH and this checkout's code first on the import path. No eval bundle is
    needed: the runs skip CORE."""
    return {
        **os.environ,
        "SPEEDRUN_CACHE": str(session_cache),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def record_at(path: Path) -> dict:
    return json.loads((path / "record.json").read_text())


def row(report: dict, depth_index: int, metric: str) -> dict:
    return next(m for m in report["depths"][depth_index]["metrics"] if m["metric"] == metric)


# ------------------------------------------------------------------------------------------------
# Verdicts on hand-made samples


def test_every_pair_equal_is_reported_identical_not_as_nan():
    varying = compare_metric(LOSS, [8.21, 8.19, 8.20], [8.21, 8.19, 8.20])  # seeds differ, pairs equal
    constant = compare_metric(LOSS, [8.2, 8.2, 8.2], [8.2, 8.2, 8.2])  # zero variance: Welch gives NaN
    for r in (varying, constant):
        assert r.identical and r.effect == 0 and r.verdict == "identical"
    assert math.isnan(constant.comparison.p_value)  # the statistics say nothing; the verdict still does


def test_a_difference_without_noise_is_certain_and_has_no_p_value():
    r = compare_metric(LOSS, [8.2, 8.2, 8.2], [8.1, 8.1, 8.1])
    assert r.effect == 1 and r.verdict == "B better in every run (no run-to-run noise)"


def test_better_means_lower_time_and_higher_throughput():
    slower = compare_metric(TIME, [10.0, 10.2, 9.9], [20.1, 19.8, 20.3])
    faster_tokens = compare_metric(THROUGHPUT, [1000.0, 1010.0, 990.0], [2000.0, 2020.0, 1990.0])
    assert slower.effect == -1 and slower.verdict == "B significantly worse"
    assert slower.comparison.diff == pytest.approx(20.0667 - 10.0333, rel=1e-4)  # B - A
    assert slower.comparison.ratio == pytest.approx(20.0667 / 10.0333, rel=1e-4)  # B / A
    assert faster_tokens.effect == 1 and faster_tokens.verdict == "B significantly better"


def test_overlapping_samples_are_no_significant_difference():
    r = compare_metric(TIME, [10.0, 12.0, 11.0], [11.5, 10.5, 12.5])
    assert r.comparison.p_value > 0.05 and r.effect == 0 and r.verdict == "no significant difference"


def depth_rows(a_b_by_depth: dict[int, tuple[list[float], list[float]]], metric: Metric = TIME) -> dict:
    return {d: compare_metric(metric, a, b) for d, (a, b) in a_b_by_depth.items()}


def test_a_gain_of_the_same_sign_and_size_at_every_depth_holds():
    rows = depth_rows({2: ([10, 10.2, 9.8], [8, 8.1, 7.9]), 4: ([20, 20.4, 19.6], [16, 16.2, 15.8])})
    assert transfer_verdict(rows).verdict == "holds"  # B/A = 0.8 at both depths


def test_a_gain_that_shrinks_beyond_its_intervals_keeps_its_sign_but_not_its_size():
    rows = depth_rows({2: ([10, 10.1, 9.9], [5, 5.05, 4.95]), 4: ([20, 20.2, 19.8], [19, 19.1, 18.9])})
    assert transfer_verdict(rows).verdict == "sign holds, size differs"  # 0.5x at d2, 0.95x at d4


def test_a_gain_at_one_depth_and_a_loss_at_another_does_not_hold():
    rows = depth_rows({2: ([10, 10.1, 9.9], [8, 8.1, 7.9]), 4: ([20, 20.2, 19.8], [24, 24.1, 23.9])})
    assert transfer_verdict(rows).verdict == "does not hold"


def test_a_gain_significant_at_one_depth_only_is_inconclusive():
    rows = depth_rows({2: ([10, 10.1, 9.9], [8, 8.1, 7.9]), 4: ([20, 23, 17], [19, 22, 18])})
    verdict = transfer_verdict(rows)
    assert verdict.verdict == "inconclusive" and "not significant at d4" in verdict.reason


def test_identical_losses_at_every_depth_are_said_so():
    rows = depth_rows({2: ([8.2, 8.3], [8.2, 8.3]), 4: ([7.9, 8.0], [7.9, 8.0])}, metric=LOSS)
    assert transfer_verdict(rows).verdict == "identical at every depth"


# ------------------------------------------------------------------------------------------------
# The run plan and the metrics read from records


def test_pairs_share_a_seed_and_alternate_which_submission_goes_first(tmp_path):
    specs = plan_runs("subA", "subB", [2, 4], runs=3, seed=10, out=tmp_path)
    assert [(s.depth, s.side, s.seed) for s in specs] == [
        (d, side, seed) for d in (2, 4) for seed, order in ((10, "AB"), (11, "BA"), (12, "AB")) for side in order
    ]
    assert len({s.out for s in specs}) == len(specs) == 12  # every run has its own directory
    assert all(s.submission == ("subA" if s.side == "A" else "subB") for s in specs)


def fake_record(steps: int, curve_steps: list[int], loss: float, core: float | None = None) -> Record:
    """A record's fields that the comparison reads (the full records come from the end-to-end tests below)."""
    return Record(
        training_time_s=10.0 + loss,
        steps_completed=steps,
        loss_curve=tuple((s, loss + s / 1000) for s in curve_steps),
        metrics=Metrics(tokens_per_s=100.0 - loss, val_bpb=loss / 2, final_loss=loss, core=None, core_partial=core),
    )


def test_loss_is_compared_at_quarter_points_that_every_run_recorded():
    runs = [fake_record(100, list(range(0, 100, 2)) + [99], 3.0), fake_record(80, list(range(0, 80, 3)) + [79], 3.1)]
    # Quarters of the shortest run (80 steps): 1-based steps 20, 40, 60; common recorded 0-based steps are
    # multiples of 6, so the losses compared are at 0-based 18, 36, 54 (1-based 19, 37, 55).
    assert [m.name for m in fixed_step_losses(runs)] == ["loss at step 19", "loss at step 37", "loss at step 55"]
    assert fixed_step_losses(runs)[0].read(runs[1]) == pytest.approx(3.1 + 18 / 1000)


def test_a_metric_that_some_runs_lack_is_left_out():
    a = [fake_record(8, list(range(8)), 3.0, core=0.1), fake_record(8, list(range(8)), 3.1, core=0.2)]
    b = [fake_record(8, list(range(8)), 3.0, core=None), fake_record(8, list(range(8)), 3.1, core=0.2)]
    names = [r.metric for r in compare_runs(a, b)]
    assert "CORE" not in names and names[:4] == ["training time (s)", "tokens/s", "val_bpb", "final loss"]
    assert "CORE" in [r.metric for r in compare_runs(a, a)]


# ------------------------------------------------------------------------------------------------
# The command refuses bad input before any run


def test_flags_that_the_command_sets_per_run_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(CLIMBMIX), str(CLIMBMIX), "--resume"])
    assert exc.value.code == 2 and "--resume: set by this command for each run" in capsys.readouterr().err


def test_a_flag_the_harness_does_not_know_is_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(CLIMBMIX), str(CLIMBMIX), "--max-stepz", "5", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unrecognized arguments: --max-stepz 5" in err and "pass-through" in err
    assert not (tmp_path / "out").exists()


def test_one_run_per_submission_is_refused_as_no_estimate_of_noise(capsys):
    with pytest.raises(SystemExit):
        main([str(CLIMBMIX), str(CLIMBMIX), "--runs", "1"])
    assert "at least 2 runs of each submission" in capsys.readouterr().err


def test_a_broken_submission_fails_before_any_run(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    hooks = "from harness import hookimpl\n\n\n@hookimpl\ndef build_modle(run):\n    pass\n"
    (broken / "submission.py").write_text(hooks)
    assert main([str(CLIMBMIX), str(broken), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "submission B" in err and "unknown hook 'build_modle'" in err and "build_model" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# End to end: real harness runs in subprocesses


def walkthrough_commands() -> list[str]:
    """The blocks of CONTRIBUTING.md that are marked as run verbatim by this test."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    return re.findall(r"<!-- walkthrough: [^>]*-->\n```bash\n(.*?)\n```", text, re.S)


@pytest.mark.slow
def test_contributing_walkthrough_reaches_a_compared_scaffold_with_identical_losses(tmp_path, run_env):
    # A newcomer's checkout: the record's submission, and the commands of CONTRIBUTING.md run from its root.
    shutil.copytree(CLIMBMIX, tmp_path / "submissions" / "climbmix", ignore=shutil.ignore_patterns("__pycache__"))
    scaffold_cmd, compare_cmd = walkthrough_commands()
    assert scaffold_cmd.startswith("python -m harness.new ") and compare_cmd.startswith("python -m harness.compare ")
    procs = [subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=run_env, capture_output=True, text=True)
             for cmd in (scaffold_cmd, compare_cmd)]  # fmt: skip
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "submissions" / "my_idea").iterdir()) == ["README.md", "submission.py"]

    argv = shlex.split(compare_cmd)
    out = tmp_path / argv[argv.index("--out") + 1]
    report = json.loads((out / "compare.json").read_text())
    assert report["a"]["name"] == "climbmix" and report["b"]["name"] == "my_idea"
    assert (out / "compare.md").read_text() in procs[1].stdout  # the printed report is the written one

    # The runs really alternated which side went first (read from the records, not from the plan).
    records = [record_at(out / "runs" / Path(o["out"]).name) for o in report["order"]]
    started = sorted(zip([r["started_at"] for r in records], [o["side"] for o in report["order"]], strict=True))
    assert "".join(side for _, side in started) == "ABBAAB"

    # An unchanged copy trains exactly the same model: every loss and val_bpb is identical pair by pair.
    depth = report["depths"][0]
    losses = [m for m in depth["metrics"] if "loss" in m["metric"] or m["metric"] == "val_bpb"]
    assert len(losses) == 5 and all(m["verdict"] == "identical" and m["p_value"] == 1.0 for m in losses)

    # The time row is Welch's test of the records' training times, by the leaderboard's statistics module.
    times = {side: [r["training_time_s"] for r, o in zip(records, report["order"], strict=True) if o["side"] == side]
             for side in "AB"}  # fmt: skip
    time_row = row(report, 0, "training time (s)")
    expected = compare_samples(sorted(times["B"]), sorted(times["A"]))
    assert sorted(time_row["a"]) == sorted(times["A"]) and sorted(time_row["b"]) == sorted(times["B"])
    assert time_row["p_value"] == pytest.approx(expected.p_value)
    assert time_row["ratio_b_over_a"] == pytest.approx(expected.ratio)


@pytest.mark.slow
def test_a_deliberately_slower_copy_is_significantly_slower_by_its_delay_at_two_depths(tmp_path, run_env):
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "submission.py").write_text((CLIMBMIX / "submission.py").read_text() + textwrap.dedent(SLOW_HOOK))
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "harness.compare", str(CLIMBMIX), str(slow), "--profile", "cpu", "--depths", "1,2"]
    cmd += ["--runs", "3", "--max-steps", str(SLOW_STEPS), "--no-core", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "compare.json").read_text())
    assert [d["depth"] for d in report["depths"]] == [1, 2]
    delay = SLEEP_S * SLOW_STEPS
    for i in range(2):
        t = row(report, i, "training time (s)")
        assert t["p_value"] < 0.05 and t["effect"] == -1 and t["verdict"] == "B significantly worse"
        assert t["diff_ci"][0] > 0 and 0.5 * delay < t["diff_b_minus_a"] < 1.5 * delay, t  # the size: the delay
        assert row(report, i, "final loss")["verdict"] == "identical"  # sleeping changes no arithmetic
    assert proc.stdout.count("B is significantly slower, by ") == 2
    transfer = {t["metric"]: t["verdict"] for t in report["transfer"]}
    assert transfer["training time (s)"] in ("holds", "sign holds, size differs")  # slower at both depths
    assert transfer["final loss"] == "identical at every depth"


def test_the_report_says_what_the_referee_judges_of_the_compared_runs():
    eligible = [Record.from_json(sample_record(seed)) for seed in (1, 2)]
    assert eligibility(eligible) == "every run is eligible"
    smoke = Record.from_json(sample_record(3, profile="cpu", eligible=False))
    assert eligibility([*eligible, smoke]) == "not eligible: profile 'cpu' is not the record profile (8xh100)"
