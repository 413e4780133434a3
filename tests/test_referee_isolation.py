"""Adversarial submissions against the referee: each attack is caught by name, or leaves the reported numbers as an
honest run's.

Every test is a real `python -m harness.run` of a submission written to cheat (CPU smoke profile, depth 2, a few
steps). What catches each attack is named in the test: the referee's own clock (phases cross-checked against the
worker's), the budgets of untimed phases, the warm-up proof (the first timed step repeats the first warm-up step),
the file watch (the evaluation data and the Python installation), the evals of the exported program in an
isolated process, the record's digest in events.jsonl, and provenance. docs/rules.md states the threat model.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers_submissions import write_submission

from harness.profiles import PROFILES
from harness.record import record_digest_problem, validate_record

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--profile", "cpu", "--depth", "2", "--max-steps", "3", "--no-core"]
TIMED = ["--profile", "cpu", "--max-steps", "12", "--no-core"]  # d4: about 16 s of training, well over the 2 s floor


def harness_run(args: list[str], env: dict, cwd: Path = REPO, timeout: int = 600) -> tuple[dict, str]:
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.run([sys.executable, "-m", "harness.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert (out / "record.json").is_file(), proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert validate_record(record) == []
    assert proc.returncode == (0 if record["status"] == "finished" else 1)
    return record, proc.stderr


def referee_evals(out: Path, env: dict, bundle: Path, max_per_task: int) -> dict:
    """The referee's evals re-run by hand on the run's exported program."""
    val_file = next(Path(env["SPEEDRUN_CACHE"]).rglob("smoke/shard_00008.parquet"))
    cpu = PROFILES["cpu"]
    result = out / "again.json"
    cmd = [sys.executable, "-m", "harness.evaluate", str(out), "--val-file", str(val_file), "--val-tokens",
           str(cpu.val_tokens), "--seq-len", str(cpu.seq_len), "--bundle", str(bundle), "--max-per-task",
           str(max_per_task), "--json", str(result)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory, harness_env) -> Path:
    out = tmp_path_factory.mktemp("honest") / "run"
    record, stderr = harness_run(["submissions/climbmix", "--out", str(out), *QUICK], harness_env)
    assert record["status"] == "finished", stderr[-2000:]
    return out


# ---- the referee's own process, its evals and its record are out of the submission's reach


@pytest.fixture(scope="module")
def forger_run(tmp_path_factory, harness_env, honest_run, eval_bundle_dir) -> tuple[Path, dict]:
    """One submission that tries, at import and in run_finished, everything that used to change a record."""
    tmp = tmp_path_factory.mktemp("forger")
    out = tmp / "out"
    folder = write_submission(
        tmp / "forger",
        f"""
        import json, sys, time
        from pathlib import Path

        import torch

        import evals.bpb, evals.core, harness.record
        from harness import hookimpl

        class Perfect:
            core, core_partial, per_task = 1.0, 1.0, {{}}
            def to_dict(self):
                return {{"core": 1.0, "core_partial": 1.0, "per_task": {{}}}}
            def table(self):
                return "perfect"

        # The process that imports this file: were it the referee (python -m harness.run runs as __main__), these
        # would write a forged record; were it an eval process, these would fake the evals.
        main = sys.modules["__main__"]
        main.write_record = lambda *args, **kwargs: None
        main.eligibility = lambda *args, **kwargs: {{"eligible": True, "reasons": []}}
        harness.record.write_record = lambda *args, **kwargs: None
        evals.core.evaluate_core = lambda *args, **kwargs: Perfect()
        evals.bpb.evaluate_bpb = lambda *args, **kwargs: 0.123
        # The clocks a referee might use.
        time.monotonic = lambda: 0.0
        torch.cuda.synchronize = lambda *args, **kwargs: None
        # A daemon, detached from the worker, to outlive it.
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)

        @hookimpl
        def run_finished(record):
            forged = {{**record, "profile": "8xh100", "eligibility": {{"eligible": True, "reasons": []}}}}
            Path({str(out / "record.json")!r}).write_text(json.dumps(forged))
            other = Path({str(honest_run / "record.json")!r})
            victim = json.loads(other.read_text())
            victim["training_time_s"] = 1.0
            other.write_text(json.dumps(victim))
        """,
    )
    record, stderr = harness_run([str(folder), "--out", str(out), "--profile", "cpu", "--depth", "2",
                                  "--max-steps", "3", "--max-per-task", "2"], harness_env)  # fmt: skip
    return out, record


def test_patching_the_referees_functions_at_import_changes_nothing_the_referee_writes(forger_run):
    out, record = forger_run
    assert record["status"] == "finished" and record["profile"] == "cpu"
    assert record["eligibility"]["eligible"] is False
    assert any("not the record profile" in reason for reason in record["eligibility"]["reasons"])
    assert record["training_time_s"] == pytest.approx(record["training_time_observed_s"], rel=0.02, abs=2.0)


def test_patching_the_evaluators_in_every_process_the_submission_reaches_leaves_val_bpb_and_core_as_computed(
    forger_run, harness_env, eval_bundle_dir
):
    out, record = forger_run
    metrics = record["metrics"]
    assert metrics["val_bpb"] != 0.123 and metrics["core_partial"] != 1.0
    again = referee_evals(out, harness_env, eval_bundle_dir, max_per_task=2)
    assert metrics["val_bpb"] == again["val_bpb"] > 1.0
    assert metrics["core_tasks"] == again["core"]["per_task"]


def test_a_process_left_behind_by_the_worker_is_ended_and_the_run_is_not_eligible(forger_run):
    out, record = forger_run
    assert record["watch"]["left_behind"] >= 1
    assert any("left" in reason and "processes running" in reason for reason in record["eligibility"]["reasons"])


def test_run_finished_sees_a_copy_and_the_record_on_disk_is_the_referees(forger_run):
    out, record = forger_run
    assert record_digest_problem(out) is None  # record.json is byte for byte what the referee wrote after run_finished
    assert record["profile"] == "cpu" and record["submission"]["overrides"] == ["run_finished"]


def test_run_finished_rewriting_another_runs_record_is_caught_by_its_digest(forger_run, honest_run):
    problem = record_digest_problem(honest_run)
    assert problem is not None and "not the record the referee wrote" in problem


# ---- the clock: the worker's timings against the referee's own observation


CLOCK_ATTACKS = {
    "perf_counter": """
        import time
        real = time.perf_counter
        time.perf_counter = lambda: real() * 0.1  # every duration the worker measures is 10x too short
        """,
    "training_time_property": """
        import harness.clock
        harness.clock.Clock.training_time_s = property(lambda self: self.phases["train"] / 100)
        """,
}


# One attack in the fast tier; the other (the same check, another way in) with the slow tests.
@pytest.mark.parametrize("attack", ["perf_counter", pytest.param("training_time_property", marks=pytest.mark.slow)])
def test_a_tampered_worker_clock_fails_the_run_by_the_referees_observation(attack, tmp_path, harness_env):
    folder = write_submission(tmp_path / attack, textwrap.dedent(CLOCK_ATTACKS[attack]))
    record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), *TIMED], harness_env)
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert "the worker reported train" in message and "clock was tampered with" in message
    if attack == "perf_counter":  # every duration 10x short: the referee's observation of the steps tells
        assert "the referee observed" in message
    else:  # the total alone is forged: rank 0's own step times tell
        assert "its own steps add up to" in message


@pytest.mark.slow
def test_patching_monotonic_and_synchronize_in_the_worker_changes_no_reported_time(tmp_path, harness_env):
    folder = write_submission(
        tmp_path / "clocks",
        """
        import time
        import torch
        from harness import hookimpl

        time.monotonic = lambda: 0.0  # the referee's clock lives in another process
        torch.cuda.synchronize = lambda *args, **kwargs: None  # a no-op on CPU anyway
        """,
    )
    record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), *TIMED], harness_env)
    assert record["status"] == "finished"
    assert record["training_time_s"] == pytest.approx(record["training_time_observed_s"], rel=0.02, abs=2.0)


# ---- untimed work is bounded


@pytest.mark.slow
def test_training_inside_build_model_and_log_metrics_is_over_budget_and_not_eligible(tmp_path, harness_env):
    folder = write_submission(
        tmp_path / "untimed",
        """
        import time
        import torch
        from harness import hookimpl
        from baselines.nanochat import submission as baseline

        STATE = {}

        def train(model, steps=None, seconds=None):
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
            began, done = time.time(), 0
            while (steps is not None and done < steps) or (seconds is not None and time.time() - began < seconds):
                x = torch.randint(0, 4096, (8, 128))
                model(x, x).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                done += 1

        @hookimpl
        def build_model(run):
            model = baseline.make_model(run)
            train(model, seconds=25)  # untimed "pre-training" before the clock can start
            STATE["model"] = model
            return model

        @hookimpl
        def log_metrics(step, metrics):
            if "loss" in metrics:
                train(STATE["model"], steps=15)  # extra optimizer steps between timed steps
        """,
    )
    record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), *QUICK], harness_env)
    assert record["status"] == "finished"
    reasons = record["eligibility"]["reasons"]
    build, log = record["budgets"]["build"], record["budgets"]["log"]
    assert build["seconds"] > 25 > build["budget"] and log["seconds"] > log["budget"]
    assert f"untimed phase build took {build['seconds']:.1f} s, over its budget of {build['budget']:.1f} s" in reasons
    assert f"untimed phase log took {log['seconds']:.1f} s, over its budget of {log['budget']:.1f} s" in reasons


# ---- the warm-up proof: state smuggled past the restore shows in the first timed step's loss


def test_weights_trained_during_warmup_and_loaded_at_step_zero_fail_the_warmup_proof(tmp_path, harness_env):
    folder = write_submission(
        tmp_path / "smuggler",
        """
        import copy
        import torch
        from harness import hookimpl
        from harness import defaults

        STASH = {"calls": 0}

        @hookimpl
        def train_step(model, batches, plan, run):
            STASH["calls"] += 1
            batches = list(batches)
            if STASH["calls"] == 1:  # the untimed warm-up step: train 10 steps, keep the weights in a global
                shadow = copy.deepcopy(model)
                optimizer = torch.optim.AdamW(shadow.parameters(), lr=3e-3)
                for _ in range(10):
                    for inputs, targets in batches:
                        shadow(inputs, targets).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                STASH["weights"] = shadow.state_dict()
            elif STASH["calls"] == 2:  # the first timed step: start from the smuggled weights
                model.load_state_dict(STASH["weights"])
            return defaults.train_step(model, iter(batches), plan, run)
        """,
    )
    record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), *QUICK], harness_env)
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert "the first timed step's loss" in message and "survived the warm-up restore" in message
    assert record["warmup"]["first_step_loss"] < record["warmup"]["first_loss"] - 0.5


@pytest.mark.slow
def test_a_background_thread_training_the_model_fails_the_warmup_proof(tmp_path, harness_env):
    # The thread trains the live model from build on. Between the warm-up restore and the first timed step its
    # updates change the weights, which the restore check or the first step's loss shows; after that, it could
    # only gain during untimed in-loop phases, which are bounded (test above).
    folder = write_submission(
        tmp_path / "thread",
        """
        import threading
        import torch
        from harness import hookimpl
        from baselines.nanochat import submission as baseline

        def keep_training(model):
            while True:
                x = torch.randint(0, 4096, (2, 32))
                loss = model(x, x)
                grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                            allow_unused=True)
                for p, g in zip([p for p in model.parameters() if p.requires_grad], grads):
                    if g is not None:
                        p.data.sub_(1e-2 * g)  # .data: unseen by autograd, so the main thread's steps run on

        @hookimpl
        def build_model(run):
            model = baseline.make_model(run)
            threading.Thread(target=keep_training, args=(model,), daemon=True).start()
            return model
        """,
    )
    record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), *QUICK], harness_env)
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert ("survived the warm-up restore" in message) or ("after warm-up differs from the initial state" in message)


# ---- the files the referee relies on: the evaluation data is never read, the installation never changed


@pytest.mark.slow
def test_reading_the_evaluation_data_or_planting_a_startup_hook_fails_the_run(tmp_path, harness_env, eval_bundle_dir):
    planted = Path(site.getsitepackages()[0]) / f"zz_speedrun_isolation_{os.getpid()}.pth"
    folder = write_submission(
        tmp_path / "reader",
        f"""
        from pathlib import Path
        from harness import hookimpl

        @hookimpl
        def build_model(run):
            from baselines.nanochat import submission as baseline
            # The worker is not told where the bundle or the validation shard are; it looks anyway.
            (Path({str(eval_bundle_dir)!r}) / "core.yaml").read_text()
            next(Path({harness_env["SPEEDRUN_CACHE"]!r}).rglob("smoke/shard_00008.parquet")).read_bytes()
            Path({str(planted)!r}).write_text("import os\\n")  # a startup hook for every later Python process
            return baseline.make_model(run)
        """,
    )
    try:
        record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), "--profile", "cpu", "--depth", "2",
                                 "--max-steps", "3", "--max-per-task", "2"], harness_env)  # fmt: skip
    finally:
        planted.unlink(missing_ok=True)
    assert record["status"] == "failed"
    touched = record["watch"]["touched"]
    assert str(eval_bundle_dir / "core.yaml") in touched and any(p.endswith("shard_00008.parquet") for p in touched)
    assert str(planted) in record["watch"]["libraries_changed"]
    message = record["error"]["message"]
    assert "the worker opened files it must not read" in message and planted.name in message
    assert record["metrics"]["core"] is None and record["metrics"]["val_bpb"] is None


@pytest.mark.slow
def test_reading_the_evaluation_data_while_choosing_the_dataset_fails_the_run(tmp_path, harness_env):
    """The probe runs submission code before the data is prepared: the evaluation files already on the machine
    (every catalog dataset's validation shard, every bundle location) are watched while it runs."""
    val_shard = next(Path(harness_env["SPEEDRUN_CACHE"]).rglob("smoke/shard_00008.parquet"))
    folder = write_submission(
        tmp_path / "early_reader",
        f"""
        from pathlib import Path
        from harness import hookimpl

        @hookimpl
        def select_dataset(run):
            Path({str(val_shard)!r}).read_bytes()  # to train on later, from a file of its own
            return "smoke"
        """,
    )
    record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), *QUICK], harness_env)
    assert record["status"] == "failed" and record["plan"] is None  # stopped before any training
    message = record["error"]["message"]
    assert "opened files it must not read while it chose its dataset (select_dataset)" in message
    assert str(val_shard.resolve()) in message


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["select_dataset", "run_finished"])
def test_a_startup_hook_planted_by_the_probe_or_an_observer_fails_the_run(hook, tmp_path, harness_env):
    """The probe (select_dataset, before the data is prepared) and the observers (run_finished, after the evals) run
    submission code too: a .pth file planted there would run in every later Python process, the next run's referee
    included. The installation check covers every worker's life, not only the training worker's."""
    planted = Path(site.getsitepackages()[0]) / f"zz_speedrun_{hook}_{os.getpid()}.pth"
    signature = "run" if hook == "select_dataset" else "record"
    answer = '    return "smoke"' if hook == "select_dataset" else ""
    folder = write_submission(
        tmp_path / "planter",
        f"""
        from pathlib import Path
        from harness import hookimpl

        @hookimpl  # the other hooks are the baseline's
        def {hook}({signature}):
            Path({str(planted)!r}).write_text("import os\\n")
        {answer}
        """,
    )
    try:
        record, _ = harness_run([str(folder), "--out", str(tmp_path / "out"), *QUICK], harness_env)
    finally:
        planted.unlink(missing_ok=True)
    assert record["status"] == "failed"
    assert str(planted) in record["watch"]["libraries_changed"]
    message = record["error"]["message"]
    assert "files of the Python installation changed while" in message and planted.name in message


# ---- provenance: what ran is what the record says


@pytest.mark.slow
def test_an_uncommitted_baseline_edit_makes_the_run_ineligible_and_is_embedded(tmp_path, harness_env):
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    repo = tmp_path / "repo"
    for rel in listed:
        if (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    edited = repo / "baselines" / "nanochat" / "submission.py"
    edited.write_text(edited.read_text() + "\n# an uncommitted change\n")
    record, stderr = harness_run(["submissions/climbmix", "--out", str(tmp_path / "out"), *QUICK], harness_env,
                                 cwd=repo)  # fmt: skip
    assert record["status"] == "finished", stderr[-2000:]
    assert record["harness"]["dirty"] is True
    assert "uncommitted changes in baselines/nanochat/submission.py" in record["eligibility"]["reasons"]
    assert record["harness"]["changed_sources"]["baselines/nanochat/submission.py"].endswith(
        "# an uncommitted change\n"
    )


@pytest.mark.parametrize("bad", ["symlink", "binary"])
def test_a_symlink_or_a_non_utf8_file_in_a_submission_is_refused_by_name(bad, tmp_path, harness_env):
    folder = write_submission(tmp_path / "sub", "from harness import hookimpl\n")
    if bad == "symlink":
        (folder / "notes.txt").symlink_to("/etc/hostname")
    else:
        (folder / "weights.bin").write_bytes(bytes(range(256)))
    record, stderr = harness_run([str(folder), "--out", str(tmp_path / "out"), *QUICK], harness_env)
    assert record["status"] == "failed" and record["steps_completed"] == 0
    name = "notes.txt" if bad == "symlink" else "weights.bin"
    assert name in record["error"]["message"] and name in stderr
    assert ("is a symlink" if bad == "symlink" else "is not UTF-8 text") in record["error"]["message"]
