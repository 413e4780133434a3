"""Every failure a user can cause or suffer ends in a clear message, a saved state and a record that says so.

Broken submissions, divergence, interruption (SIGTERM, kill -9, --resume), storage problems and tampering,
each through a real `python -m harness.run` subprocess on the CPU smoke profile with a few steps.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_submissions import write_submission

from harness import checkpoint
from harness.record import validate_record

REPO = Path(__file__).resolve().parents[1]
FAST = ["--profile", "cpu", "--depth", "2", "--max-steps", "6", "--no-core"]
LONG = ["--profile", "cpu", "--depth", "2", "--no-core"]  # with --max-steps: runs to interrupt


def start(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness.run", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run(args: list[str], env: dict, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.run", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def record_of(out: Path) -> dict:
    record = json.loads((out / "record.json").read_text())
    assert validate_record(record) == []
    return record


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def steps_logged(out: Path) -> int:
    path = out / "events.jsonl"
    if not path.exists():
        return 0
    return sum('"train_loss"' in line for line in path.read_text().splitlines())


# ---- broken submissions: an error naming the file, the hook and the fix, and a `failed` record


BROKEN = {
    "import_error": ("import no_such_package_here\n", "no_such_package_here", None),
    "hook_raises": (
        """
        from harness import hookimpl

        @hookimpl
        def build_model(run):
            raise ValueError("width must be even")
        """,
        "hook build_model raised ValueError: width must be even",
        "build_model",
    ),
    "model_not_a_module": (
        """
        from harness import hookimpl

        @hookimpl
        def build_model(run):
            return "a model"
        """,
        "build_model returned str, not a torch.nn.modules.module.Module",
        None,
    ),
    "optimizer_misses_parameters": (
        """
        import torch
        from harness import hookimpl

        @hookimpl
        def build_optimizer(model):
            first = next(model.parameters())
            return torch.optim.SGD([first], lr=0.1)
        """,
        "build_optimizer left",
        None,
    ),
    "schedule_not_callable": (
        """
        from harness import hookimpl

        @hookimpl
        def build_schedule(optimizer):
            return [0.1, 0.2]
        """,
        "build_schedule returned list, not a callable",
        None,
    ),
    "batch_does_not_divide": (
        """
        import dataclasses
        from harness import hookimpl
        from baselines.nanochat import submission as baseline

        @hookimpl
        def plan_training(model, run):
            plan = baseline.make_plan(model, run)
            return dataclasses.replace(plan, total_batch_tokens=plan.total_batch_tokens + 1)
        """,
        "plan_training planned a batch that does not divide: total_batch_tokens=",
        None,
    ),
    "model_too_big": (
        """
        import torch
        from harness import hookimpl

        @hookimpl
        def build_model(run):
            return torch.nn.Linear(10**7, 10**7)  # 400 TB of float32 weights
        """,
        "does not fit in memory",
        "build_model",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_submission_fails_with_file_hook_and_fix_and_a_failed_record(case, tmp_path, harness_env):
    body, expected, hook = BROKEN[case]
    folder = write_submission(tmp_path / case, body)
    out = tmp_path / "out"
    proc = run([str(folder), "--out", str(out), *FAST], harness_env)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "failed"
    assert expected in record["error"]["message"], record["error"]["message"]
    assert str(folder / "submission.py") in record["error"]["message"]
    assert "Traceback" in record["error"]["traceback"]
    assert expected in proc.stderr
    if hook:
        assert f"hook {hook}" in record["error"]["message"] and "Fix:" in record["error"]["message"]
    assert record["steps_completed"] == 0  # it failed before any training


# ---- divergence


def test_nan_loss_stops_the_run_within_one_step_with_status_diverged(tmp_path, harness_env):
    folder = write_submission(
        tmp_path / "nan_at_3",
        """
        import torch
        from harness import hookimpl

        CALLS = {"n": 0}

        @hookimpl
        def train_step(model, batches, plan, run):
            total = 0.0
            for inputs, targets in batches:
                loss = model(inputs, targets)
                loss.backward()
                total += loss.detach()
            CALLS["n"] += 1
            # two warm-up steps are not counted: timed step 3 (0-based) is the 5th call on the cpu profile
            return total * float("nan") if CALLS["n"] >= 5 else total
        """,
    )
    out = tmp_path / "out"
    proc = run([str(folder), "--out", str(out), *FAST], harness_env)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "diverged"
    assert record["error"]["step"] == 3 and record["steps_completed"] == 4
    assert record["error"]["last_finite_loss"] == pytest.approx(record["loss_curve"][-1][1], abs=1e-5)
    assert "nan" in record["error"]["message"]


# ---- a worker that hangs, or cannot export its model


HANGS_AT_STEP_2 = """
    import time
    from harness import hookimpl
    from harness import defaults

    CALLS = {"n": 0}

    @hookimpl
    def train_step(model, batches, plan, run):
        CALLS["n"] += 1
        while CALLS["n"] == 4:  # one warm-up step, then timed steps 0 and 1: step 2 never returns
            time.sleep(1)
        return defaults.train_step(model, batches, plan, run)
    """


@pytest.mark.slow
def test_a_hook_that_never_returns_is_declared_hung_and_the_run_fails_naming_it(tmp_path, harness_env):
    folder = write_submission(tmp_path / "hangs", HANGS_AT_STEP_2)
    out = tmp_path / "out"
    began = time.monotonic()
    proc = run([str(folder), "--out", str(out), *FAST], harness_env)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "failed" and record["steps_completed"] == 2
    assert "hung in train_step at step 2" in record["error"]["message"] and "the worker was killed" in proc.stderr
    assert time.monotonic() - began < 150  # the cpu profile's limit is 30 s without progress


@pytest.mark.slow
def test_a_stop_signal_to_a_hung_run_ends_it_after_the_grace_period_with_a_record(tmp_path, harness_env):
    folder = write_submission(tmp_path / "hangs", HANGS_AT_STEP_2)
    out = tmp_path / "out"
    proc = start([str(folder), "--out", str(out), *FAST], harness_env)
    wait_for(lambda: steps_logged(out) >= 2 or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # a second signal while the first is being honoured changes nothing
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "interrupted" and "did not stop within 20 s and was killed" in record["error"]["message"]


def test_a_model_that_cannot_be_exported_fails_before_any_training(tmp_path, harness_env):
    folder = write_submission(
        tmp_path / "unexportable",
        """
        from harness import hookimpl
        from baselines.nanochat import submission as baseline

        @hookimpl
        def build_model(run):
            model = baseline.make_model(run)
            forward = model.forward

            def branching_forward(idx, targets=None):
                if idx.sum() > 0:  # Python control flow on a tensor's value: torch.export cannot trace it
                    return forward(idx, targets)
                return forward(idx, targets)

            model.forward = branching_forward
            return model
        """,
    )
    out = tmp_path / "out"
    proc = run([str(folder), "--out", str(out), *FAST], harness_env)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "failed" and record["steps_completed"] == 0
    message = record["error"]["message"]
    assert "build_model returned a model that cannot be evaluated" in message and "torch.export" in message
    assert "warmup" not in record["phases"]


# ---- interruption


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_a_checkpoint_and_resume_finishes_the_run(tmp_path, harness_env):
    out = tmp_path / "out"
    args = ["submissions/climbmix", "--out", str(out), *LONG, "--max-steps", "12"]
    proc = start(args, harness_env)
    wait_for(lambda: steps_logged(out) >= 3 or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]["message"]
    assert f"checkpoint: {record['checkpoint']}" in stdout and f"--out {out} --resume" in stdout  # how to go on
    stopped_at = record["steps_completed"]
    assert 0 < stopped_at < 12
    assert record["checkpoint"].endswith(f"step_{stopped_at:06d}")
    assert checkpoint.latest_training_state(out)[0] == stopped_at

    resumed = run([*args, "--resume"], harness_env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {stopped_at} of 12" in resumed.stdout
    assert record_of(out)["status"] == "interrupted"  # the interrupted record is kept; the resumed one is beside it
    record = json.loads((out / "record.resume-1.json").read_text())
    assert record["status"] == "finished" and record["resumed"] is True
    assert record["steps_completed"] == 12
    assert "resumed from a checkpoint" in record["eligibility"]["reasons"]
    assert [step for step, _ in record["loss_curve"]] == list(range(12))  # the curve spans both sessions

    # Interrupted and resumed, the run trains on exactly the batches, and takes exactly the steps, of one that
    # never stopped: no step is lost or repeated at the interruption.
    straight = run(
        ["submissions/climbmix", "--out", str(tmp_path / "straight"), *LONG, "--max-steps", "12"], harness_env
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = record_of(tmp_path / "straight")
    assert record["data"]["stream_digest"] == reference["data"]["stream_digest"]
    assert record["data"]["tokens_consumed"] == reference["data"]["tokens_consumed"]
    # CPU training is reproducible to float noise only (harness.replay's tolerance); a lost or repeated step moves
    # the loss by far more, and the stream digest above pins the batches exactly.
    curve = [loss for _, loss in reference["loss_curve"]]
    assert [loss for _, loss in record["loss_curve"]] == pytest.approx(curve, rel=1e-3)


@pytest.mark.slow
def test_kill_9_leaves_no_record_or_checkpoint_that_later_code_trusts(tmp_path, harness_env):
    out = tmp_path / "out"
    args = ["submissions/climbmix", "--out", str(out), *LONG, "--max-steps", "14"]
    proc = start([*args, "--checkpoint-every", "2"], harness_env)
    wait_for(lambda: checkpoint.latest_training_state(out) is not None or proc.poll() is not None)
    wait_for(lambda: steps_logged(out) >= 5 or proc.poll() is not None)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (out / "record.json").exists()
    # A checkpoint cut short (no meta.json, or a file that no longer matches its digest) is never trusted.
    step, _ = checkpoint.latest_training_state(out)
    forged = out / checkpoint.CHECKPOINTS_DIR / f"step_{step + 50:06d}"
    forged.mkdir()
    (forged / "state.pt").write_bytes(b"half a checkpoint")
    assert checkpoint.latest_training_state(out)[0] == step
    resumed = run([*args, "--resume"], harness_env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert record_of(out)["steps_completed"] == 14


# ---- storage


def test_unwritable_output_directory_is_refused_before_any_work(tmp_path, harness_env):
    proc = run(["submissions/climbmix", "--out", "/dev/null/run", *FAST], harness_env, timeout=60)
    assert proc.returncode == 2
    assert "cannot write to the output directory /dev/null/run" in proc.stderr and "--out DIR" in proc.stderr


def test_full_disk_is_detected_before_training_starts(tmp_path, harness_env):
    def small_disk():  # every file write past 256 KB fails, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    out = tmp_path / "out"
    proc = run(["submissions/climbmix", "--out", str(out), *FAST], harness_env, timeout=60, preexec_fn=small_disk)
    assert proc.returncode == 2
    assert "cannot write to the output directory" in proc.stderr and "free space" in proc.stderr
    assert not (out / "events.jsonl").exists()


@pytest.mark.slow
def test_a_second_run_into_the_same_directory_is_refused_while_the_first_runs(tmp_path, harness_env):
    out = tmp_path / "out"
    first = start(["submissions/climbmix", "--out", str(out), *LONG, "--max-steps", "200"], harness_env)
    wait_for(lambda: steps_logged(out) >= 1 or first.poll() is not None)
    second = run(["submissions/climbmix", "--out", str(out), *FAST], harness_env, timeout=60)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2 and "another run is writing to" in second.stderr
    assert record_of(out)["status"] == "interrupted"  # the first run's record is intact
    again = run(["submissions/climbmix", "--out", str(out), *FAST], harness_env, timeout=60)
    assert again.returncode == 2 and "already holds a record" in again.stderr


# ---- tampering: a submission that modifies the bundle or the data never gets a result (more: test_referee_isolation)


@pytest.mark.slow
def test_editing_the_data_cache_during_a_run_fails_the_run(tmp_path, harness_env, session_cache):
    cache = tmp_path / "cache"
    shutil.copytree(session_cache, cache)  # a private copy: this test damages it
    folder = write_submission(
        tmp_path / "data_editor",
        f"""
        from pathlib import Path
        from harness import hookimpl
        from baselines.nanochat import submission as baseline

        @hookimpl
        def build_model(run):
            shard = sorted(Path({str(cache)!r}).rglob("*.parquet"))[0]
            shard.write_bytes(shard.read_bytes() + b"extra")
            return baseline.make_model(run)
        """,
    )
    out = tmp_path / "out"
    env = {**harness_env, "SPEEDRUN_CACHE": str(cache)}
    proc = run([str(folder), "--out", str(out), *FAST], env)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert "shard" in message and ("changed" in message or "digest" in message)


def test_editing_the_eval_bundle_during_a_run_fails_the_run(tmp_path, harness_env, eval_bundle_dir):
    bundle = tmp_path / "bundle"
    shutil.copytree(eval_bundle_dir, bundle)
    folder = write_submission(
        tmp_path / "bundle_editor",
        f"""
        from pathlib import Path
        from harness import hookimpl
        from baselines.nanochat import submission as baseline

        @hookimpl
        def build_model(run):
            task = Path({str(bundle)!r}) / "eval_data" / "commonsense_reasoning" / "copa.jsonl"
            task.write_text(task.read_text().replace("because", "since", 1))
            return baseline.make_model(run)
        """,
    )
    out = tmp_path / "out"
    args = [str(folder), "--out", str(out), "--eval-bundle", str(bundle), "--profile", "cpu", "--depth", "2"]
    proc = run([*args, "--max-steps", "3", "--max-per-task", "2"], harness_env)
    assert proc.returncode == 1
    record = record_of(out)
    assert record["status"] == "failed" and "copa.jsonl" in record["error"]["message"]


@pytest.mark.slow
def test_every_record_the_harness_writes_validates_against_the_schema(tmp_path, harness_env):
    out = tmp_path / "out"
    os.makedirs(out)
    proc = run(["submissions/climbmix", "--out", str(out / "a"), *FAST], harness_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert validate_record(record_of(out / "a")) == []
