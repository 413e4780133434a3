"""The rules by which harness.replay compares a record with its replay (what ``leaderboard verify`` applies), on
sample records: no run needed.

    pytest tests/test_replay_rules.py
"""

from __future__ import annotations

import copy

import pytest
from helpers_leaderboard import sample_record

from harness.record import Record
from harness.replay import CALIBRATION_BOUNDS, CORE_ATOL, LOSS_RTOL, TIME_TOLERANCE, compare, replay_command, sci
from leaderboard.store import PACKAGE_DIR


def failed(old: dict, new: dict) -> dict[str, dict]:
    return {row["what"]: row for row in compare(Record.from_json(old), Record.from_json(new)) if not row["ok"]}


def test_a_record_compared_with_itself_passes_every_rule():
    record = sample_record(1)
    assert failed(record, copy.deepcopy(record)) == {}


def test_a_record_claiming_less_time_than_its_replay_fails_and_a_slower_one_does_not():
    record = sample_record(1, training_time_s=5940.0)
    replay = copy.deepcopy(record)
    replay["training_time_s"] = 5940.0 / (1 - TIME_TOLERANCE["8xh100"]) + 10  # just past the tolerance
    row = failed(record, replay)["training time"]
    assert "calibration factor 1.000" in row["rule"] and set(failed(record, replay)) == {"training time"}
    replay["training_time_s"] = 5000.0  # the replay was faster: the record is merely slow
    assert failed(record, replay) == {}


def test_the_time_is_normalised_by_calibration_and_no_node_is_credited_beyond_its_bounds():
    record = sample_record(1, training_time_s=5000.0)
    replay = copy.deepcopy(record)
    replay["training_time_s"] = 6000.0  # 20% slower here ...
    replay["calibration"]["matmul_tflops"] = (
        record["calibration"]["matmul_tflops"] * 5000 / 6000
    )  # ... on a slower node
    assert failed(record, replay) == {}
    record["calibration"]["matmul_tflops"] *= 100  # a record that claims a node 100x faster is credited 1.25x at most
    replay["calibration"]["matmul_tflops"] = record["calibration"]["matmul_tflops"] / 100
    replay["training_time_s"] = 5000.0 * 1.25 / (1 - TIME_TOLERANCE["8xh100"]) + 10
    assert "calibration factor 0.800" in failed(record, replay)["training time"]["rule"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_loss_curve_must_agree_at_every_step_within_the_devices_tolerance(device):
    record = sample_record(1)
    record["run"]["device"] = device
    replay = copy.deepcopy(record)
    step, loss = replay["loss_curve"][3]
    replay["loss_curve"][3] = [step, loss * (1 + LOSS_RTOL[device] / 2)]
    assert failed(record, replay) == {}
    replay["loss_curve"][3] = [step, loss * (1 + LOSS_RTOL[device] * 2)]
    assert set(failed(record, replay)) == {"loss curve"}
    assert f"worst at step {step}" in failed(record, replay)["loss curve"]["replayed"]


def test_core_must_agree_within_its_tolerance_or_be_absent_from_both():
    record = sample_record(1, core=0.26)
    replay = copy.deepcopy(record)
    replay["metrics"]["core"] = 0.26 - CORE_ATOL / 2
    assert failed(record, replay) == {}
    replay["metrics"]["core"] = None
    assert set(failed(record, replay)) == {"CORE"}


def test_the_stream_digest_must_be_identical():
    record = sample_record(1)
    replay = copy.deepcopy(record)
    replay["data"]["stream_digest"] = "0" * 64
    assert set(failed(record, replay)) == {"data stream digest"}


def test_the_replay_command_leaves_out_the_recording_machines_paths(tmp_path):
    record = sample_record(1)
    local = ["--data-dir", "/a/data", "--eval-bundle=/a/bundle", "--wandb", "proj"]
    record["command"] = ["python", "-m", "harness.run", "submissions/x", "--profile", "cpu", *local, "--seed", "1",
                         "--out", "/a/run", "--resume"]  # fmt: skip
    record["run"]["world_size"] = 1
    cmd = replay_command(Record.from_json(record), tmp_path / "sub", tmp_path / "out")
    assert cmd[1:] == ["-m", "harness.run", str(tmp_path / "sub"), "--profile", "cpu", "--seed", "1", "--out",
                       str(tmp_path / "out")]  # fmt: skip


def test_the_readme_states_the_tolerances_the_code_applies():
    text = " ".join((PACKAGE_DIR / "README.md").read_text().split())
    assert f"within {sci(LOSS_RTOL['cpu'])} relative of the replay's on CPU" in text
    assert f"and {sci(LOSS_RTOL['cuda'])} on GPUs" in text
    assert f"CORE**: within {CORE_ATOL} absolute" in text
    assert "counted between {:g} and {:g}".format(*CALIBRATION_BOUNDS) in text
    for profile, rel in TIME_TOLERANCE.items():
        assert f"{rel:.0%}" in text and f"`{profile}`" in text
