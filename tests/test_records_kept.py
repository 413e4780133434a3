"""Nothing lost: every way a run can end leaves a record, and a record once written is never replaced.

Each test is a real `python -m harness.run` on the CPU smoke profile (depth 2, a few steps), ended the way a user
or a submission ends it: a resume of a finished run, a resume that contradicts the run, signals during the final
evals, the eval process killed, a hook that exits the process, a model whose logits are NaN, a full disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_submissions import write_submission

from harness.clock import EventLog
from harness.record import record_digest_problem, record_files, validate_record
from harness.run import save_record

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--profile", "cpu", "--depth", "2", "--max-steps", "4"]


def harness(args: list[str], env: dict, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)  # fmt: skip


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def records(out: Path) -> list[dict]:
    found = [json.loads(path.read_text()) for path in record_files(out)]
    assert all(validate_record(record) == [] for record in found)
    return found


def wait_for_event(out: Path, event: str, key: str | None, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    path = out / "events.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and any(f'"event": "{event}"' in line and (key is None or f'"key": "{key}"' in line)
                                 for line in path.read_text().splitlines()):  # fmt: skip
            return
        time.sleep(0.05)
    raise AssertionError(f"no {event} {key} event in {path}")


def eval_process(referee: int) -> int:
    """The referee's isolated eval process (python -I -S ... harness.evaluate)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == referee and b"-I" in cmdline:
                return int(entry)
    raise AssertionError("no eval process")


# ---- a finished record is never replaced, and a resume continues the run it names


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints", [False, True])
def test_resuming_a_finished_run_is_refused_and_its_record_is_untouched(checkpoints, tmp_path, harness_env):
    out = tmp_path / "out"
    extra = ["--checkpoint-every", "2"] if checkpoints else []
    assert (
        harness(["submissions/climbmix", "--out", str(out), *QUICK, "--no-core", *extra], harness_env).returncode == 0
    )
    before = (out / "record.json").read_bytes()
    again = harness(["submissions/climbmix", "--out", str(out), "--resume"], harness_env)
    assert again.returncode == 2
    assert f"{out / 'record.json'} is a finished run, and a finished record is never replaced" in again.stderr
    assert (out / "record.json").read_bytes() == before and record_files(out) == [out / "record.json"]


def test_resuming_a_run_whose_record_is_damaged_is_refused_naming_the_file_and_the_fix(tmp_path, harness_env):
    out = tmp_path / "out"
    out.mkdir()
    (out / "record.json").write_text('{"status": "interr')  # cut short, or edited by hand
    again = harness(["submissions/climbmix", "--out", str(out), "--resume"], harness_env, timeout=120)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"{out / 'record.json'} is not UTF-8 JSON" in again.stderr
    assert "the record is damaged; start a new run with another --out" in again.stderr
    assert (out / "record.json").read_text() == '{"status": "interr'  # left as it was, for the user to look at


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, harness_env) -> Path:
    """A run stopped by SIGTERM after a checkpoint: the start of every resume below (copied per test)."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    proc = start(["submissions/climbmix", "--out", str(out), *QUICK[:-1], "40", "--no-core",
                  "--checkpoint-every", "2"], harness_env)  # fmt: skip
    wait_for_event(out, "checkpoint", None, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert records(out)[-1]["status"] == "interrupted"
    return out


def copy_run(run: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", str(run), str(to)], check=True)
    return to


@pytest.mark.parametrize(
    ("change", "named"),
    [(["--depth", "3"], "--depth 3 (the run used 2)"), (["--seed", "7"], "--seed 7 (the run used 0)")],
)
def test_a_resume_that_contradicts_the_run_is_refused_naming_each_difference(
    change, named, interrupted_run, tmp_path, harness_env
):
    out = copy_run(interrupted_run, tmp_path / "out")
    before = (out / "record.json").read_bytes()
    proc = harness(["submissions/climbmix", "--out", str(out), "--resume", *change], harness_env)
    assert proc.returncode == 2 and named in proc.stderr and "Drop them" in proc.stderr
    assert (out / "record.json").read_bytes() == before and len(record_files(out)) == 1


@pytest.mark.slow
def test_a_resume_with_another_submission_is_refused_naming_it(interrupted_run, tmp_path, harness_env):
    out = copy_run(interrupted_run, tmp_path / "out")
    proc = harness(["baselines/nanochat", "--out", str(out), "--resume"], harness_env)
    assert proc.returncode == 2 and "submission baselines/nanochat (the run used submissions/climbmix)" in proc.stderr


@pytest.mark.slow
def test_a_resume_with_only_out_continues_with_the_runs_own_arguments_beside_the_old_record(
    interrupted_run, tmp_path, harness_env
):
    out = copy_run(interrupted_run, tmp_path / "out")
    before = (out / "record.json").read_bytes()
    proc = harness(["submissions/climbmix", "--out", str(out), "--resume"], harness_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, resumed = records(out)
    assert (out / "record.json").read_bytes() == before  # the interrupted record is kept as it was
    assert resumed["status"] == "finished" and resumed["resumed"] is True
    assert resumed["steps_completed"] == resumed["plan"]["num_steps"] == 40  # --max-steps 40 kept, not the default
    assert resumed["config"]["depth"] == 2 and resumed["config"]["core"] is False
    assert resumed["loss_curve"][0][0] == 0  # the curve spans both sessions
    assert record_digest_problem(out, "record.resume-1.json") is None


# ---- the final evals: signals, a killed eval process, and the resume that re-runs only them


@pytest.mark.slow
def test_two_sigterms_during_the_final_evals_leave_a_record_and_a_resume_runs_only_the_evals(tmp_path, harness_env):
    out = tmp_path / "out"
    proc = start(["submissions/climbmix", "--out", str(out), *QUICK, "--max-per-task", "2"], harness_env)
    wait_for_event(out, "phase_start", "eval", proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-2000:]
    (stopped,) = records(out)
    assert stopped["status"] == "interrupted" and "during the final evals" in stopped["error"]["message"]
    assert stopped["steps_completed"] == 4 and stopped["data"]["tokens_consumed"] > 0
    assert Path(stopped["program"]["path"]).is_file()  # the trained model is kept for the evals

    resumed_proc = harness(["submissions/climbmix", "--out", str(out), "--resume"], harness_env)
    assert resumed_proc.returncode == 0, resumed_proc.stderr[-2000:]
    assert "training finished at step 4; evaluating the exported model again" in resumed_proc.stdout
    _, resumed = records(out)
    assert resumed["status"] == "finished" and resumed["resumed"] is True
    for kept in ("steps_completed", "training_time_s", "loss_curve", "plan"):
        assert resumed[kept] == stopped[kept], kept
    assert resumed["data"]["stream_digest"] == stopped["data"]["stream_digest"] is not None
    assert resumed["metrics"]["val_bpb"] > 0 and resumed["metrics"]["core_partial"] is not None


@pytest.mark.slow
def test_a_killed_eval_process_is_named_and_the_evals_can_be_run_again(tmp_path, harness_env):
    out = tmp_path / "out"
    proc = start(["submissions/climbmix", "--out", str(out), *QUICK, "--max-per-task", "2"], harness_env)
    wait_for_event(out, "phase_start", "eval", proc)
    time.sleep(0.5)
    os.kill(eval_process(proc.pid), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == 1
    (failed,) = records(out)
    assert failed["status"] == "failed"
    assert "the referee's eval process was killed by SIGKILL" in failed["error"]["message"]
    assert "exported model is kept" in failed["error"]["message"]
    again = harness(["submissions/climbmix", "--out", str(out), "--resume"], harness_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert records(out)[-1]["status"] == "finished"


# ---- submission code that ends the process


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ("sys.exit(0)", "hook build_model called sys.exit(0); a submission must not end the process"),
        ("os._exit(0)", "the worker exited with code 0 in the build phase at step 0 without reporting why"),
    ],
)
def test_a_hook_that_exits_the_process_fails_the_run_with_a_record_naming_it(call, named, tmp_path, harness_env):
    folder = write_submission(
        tmp_path / "exits",
        f"""
        import os, sys
        from harness import hookimpl

        @hookimpl
        def build_model(run):
            {call}
        """,
    )
    out = tmp_path / "out"
    proc = harness([str(folder), "--out", str(out), *QUICK, "--no-core"], harness_env)
    assert proc.returncode == 1
    (record,) = records(out)
    assert record["status"] == "failed" and named in record["error"]["message"] and named in proc.stderr


# ---- numbers that are not numbers, and a disk that is full


@pytest.mark.slow
def test_a_model_whose_logits_are_nan_gives_strict_json_with_null_and_a_note(tmp_path, harness_env):
    folder = write_submission(
        tmp_path / "nan_eval",
        """
        from harness import hookimpl
        from baselines.nanochat import submission as baseline

        @hookimpl
        def build_model(run):
            model = baseline.make_model(run)
            forward = model.forward

            def nan_in_evals(idx, targets=None):
                out = forward(idx, targets)
                return out if targets is not None else out * float("nan")

            model.forward = nan_in_evals
            return model
        """,
    )
    out = tmp_path / "out"
    proc = harness([str(folder), "--out", str(out), *QUICK, "--no-core"], harness_env)
    text = (out / "record.json").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"record.json holds {name}: not JSON"))
    assert proc.returncode == 0 and record["metrics"]["val_bpb"] is None
    assert record["non_finite"]["metrics.val_bpb"] == "NaN"
    for line in (out / "events.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"events.jsonl holds {name}"))


@pytest.mark.skipif(subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0,
                    reason="needs unprivileged user and mount namespaces for a small tmpfs")  # fmt: skip
@pytest.mark.slow
def test_a_full_disk_ends_with_the_record_written_elsewhere_and_the_space_it_needed(tmp_path, harness_env):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    folder = write_submission(
        tmp_path / "fills_the_disk",
        f"""
        from harness import hookimpl

        @hookimpl
        def log_metrics(step):
            if step == 1:
                try:  # the disk fills during training, as a long run's checkpoints would fill it
                    with open({str(disk / "ballast")!r}, "wb") as ballast:
                        while True:
                            ballast.write(bytes(1 << 20))
                except OSError:
                    pass
        """,
    )
    command = " ".join([sys.executable, "-m", "harness.run", str(folder), "--out", str(out), *QUICK, "--no-core"])
    script = f"mount -t tmpfs -o size=100M tmpfs {disk} && mkdir {out} && {command}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=harness_env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "No space left on device" in proc.stderr
    assert "the record needs" in proc.stderr and "writing it to" in proc.stderr
    elsewhere = Path(proc.stderr.split("writing it to ", 1)[1].split(" instead", 1)[0])
    record = json.loads(elsewhere.read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]["message"]
    assert record["steps_completed"] >= 2 and "events_error" in record  # what training did is kept
    elsewhere.unlink()


def test_a_record_the_referee_built_wrong_is_kept_aside_with_the_schemas_reasons(tmp_path, capsys):
    """A harness bug that makes the record break its schema must not lose the run: the record is written beside
    the reserved file, named as invalid, and the error says what is wrong and that it is the harness's bug."""
    events = EventLog(tmp_path / "events.jsonl")
    broken = {"status": "finished", "phases": {"worker_start": -0.0007}}
    kept = save_record(tmp_path / "record.json", broken, events)
    events.close()
    assert kept == tmp_path / "record.invalid.json" and json.loads(kept.read_text()) == broken
    assert record_files(tmp_path) == []  # not taken for the run's record by anything that reads records
    err = capsys.readouterr().err
    assert "refusing to write a record that breaks harness/record.schema.json" in err and "bug in the harness" in err
