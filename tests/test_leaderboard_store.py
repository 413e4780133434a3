"""Tests of `python -m leaderboard add` (leaderboard/store.py): what it files, what it refuses and why.

    pytest tests/test_leaderboard_store.py

Runs are real directories holding record.json and events.jsonl as the harness writes them
(tests/helpers_leaderboard.py), filed into a fresh board under tmp_path whose track.json pins the samples' data,
tokenizer and bundle (or, where a test says so, the committed pins).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_leaderboard import REPO, new_board, resign, sample_record, write_run

from harness.fileio import file_lock, sha256_file
from harness.record import validate_record
from leaderboard.__main__ import main
from leaderboard.store import LeaderboardError, RejectedRuns, add_entry, load_entries, read_events


def runs(tmp: Path, seeds=(1, 2, 3), prefix: str = "run", **overrides) -> list[Path]:
    return [write_run(tmp / f"{prefix}{s}", sample_record(s, **overrides)) for s in seeds]


def failed(e: RejectedRuns) -> dict[str, dict[str, str]]:
    """run -> {failed check name: reason}"""
    return {run: {c.name: c.reason for c in checks if not c.passed} for run, checks in e.checks.items()}


@pytest.fixture
def board(tmp_path: Path) -> Path:
    return new_board(tmp_path / "board")


def test_sample_records_satisfy_the_harness_schema():
    assert validate_record(sample_record()) == []
    assert validate_record(sample_record(2, profile="cpu", missing_labels=("squad",), eligible=False)) == []


def test_add_files_a_valid_set_byte_for_byte_with_its_metadata_and_pins_nothing(tmp_path, board):
    given = runs(tmp_path)
    track = (board / "track.json").read_bytes()
    entry = add_entry(given, root=board, name="fp8-attn", description="fp8 attention", contributors=["Ada", "Alan"])
    assert entry.path == board / "records" / "2026-04-01_fp8-attn"
    for run_dir, seed in zip(given, (1, 2, 3), strict=True):
        for name in ("record.json", "events.jsonl"):
            assert (entry.path / f"seed-{seed}" / name).read_bytes() == (run_dir / name).read_bytes()
    meta = json.loads((entry.path / "entry.json").read_text())
    assert meta["description"] == "fp8 attention" and meta["contributors"] == ["Ada", "Alan"]
    assert meta["date"] == "2026-04-01" and meta["commit"] == sample_record()["harness"]["commit"]
    assert meta["runs"][0]["files"]["record.json"] == sha256_file(given[0] / "record.json")
    assert (entry.path / "writeup.md").read_text() == sample_record()["submission"]["sources"]["README.md"]
    assert (board / "track.json").read_bytes() == track  # the first entry pins nothing: the pins are committed


def test_add_refuses_a_run_with_a_different_eval_bundle_digest(tmp_path, board):
    given = runs(tmp_path, seeds=(1, 2)) + [write_run(tmp_path / "odd", sample_record(3, eval_bundle_digest="e" * 64))]
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)
    assert reasons[str(given[0])] == {} and reasons[str(given[1])] == {}
    assert set(reasons[str(given[2])]) == {"eval bundle"}
    assert "eval bundle digest eeeeeeeeeeee" in reasons[str(given[2])]["eval bundle"]


def test_add_refuses_runs_whose_eval_bundle_differs_from_the_pinned_track(tmp_path, board):
    add_entry(runs(tmp_path), root=board)
    with pytest.raises(RejectedRuns) as e:
        add_entry(runs(tmp_path, prefix="new", eval_bundle_digest="e" * 64), root=board, name="other")
    for reasons in failed(e.value).values():
        assert set(reasons) == {"eval bundle"} and "track.json" in reasons["eval bundle"]


def test_add_refuses_a_profile_that_cannot_set_records_and_says_where_it_belongs(tmp_path, board):
    given = runs(tmp_path, seeds=(1,), prefix="gpu", profile="gpu") + runs(tmp_path, seeds=(2,), eligible=False)
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)
    gpu, slow = reasons[str(given[0])], reasons[str(given[1])]
    assert set(gpu) == {"eligibility"} and "profile 'gpu' is not the record profile" in gpu["eligibility"]
    assert "--track dev" in gpu["eligibility"]
    assert set(slow) == {"eligibility"}
    assert "matmul calibration 500.0 TFLOP/s is below the 8xh100 floor" in slow["eligibility"]


def test_add_refuses_a_record_whose_eligibility_was_edited_by_hand(tmp_path, board):
    forged = sample_record(2, eligible=False)
    forged["eligibility"] = {"eligible": True, "reasons": []}
    given = runs(tmp_path, seeds=(1,)) + [write_run(tmp_path / "forged", forged)]
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)[str(given[1])]
    assert set(reasons) == {"eligibility", "verdict"} and "it was edited after the run" in reasons["verdict"]


def test_add_refuses_a_repeated_seed(tmp_path, board):
    given = runs(tmp_path, seeds=(1, 2)) + [write_run(tmp_path / "again", sample_record(2))]
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)
    assert set(reasons[str(given[2])]) == {"seed", "stream digest"}
    assert f"seed 2 is also the seed of {given[1]}" in reasons[str(given[2])]["seed"]


def test_add_refuses_two_seeds_that_read_the_same_data_stream(tmp_path, board):
    # A run copied under another seed: the seeds differ, the data the worker read does not.
    copied = sample_record(2)
    copied["data"]["stream_digest"] = sample_record(1)["data"]["stream_digest"]
    given = runs(tmp_path, seeds=(1,)) + [write_run(tmp_path / "copied", copied)]
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)
    assert reasons[str(given[0])] == {} and set(reasons[str(given[1])]) == {"stream digest"}
    assert f"is also {given[0]}'s" in reasons[str(given[1])]["stream digest"]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_add_wants_one_harness_commit_and_one_harness_code_digest_for_every_run(tmp_path, board):
    earlier = git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]  # a real commit, not HEAD
    given = runs(tmp_path, seeds=(1,))
    older = write_run(tmp_path / "older", sample_record(2, commit=earlier))
    changed = write_run(tmp_path / "changed", sample_record(3, harness_digest="d" * 64))
    with pytest.raises(RejectedRuns) as e:
        add_entry([*given, older, changed], root=board)
    reasons = failed(e.value)
    assert reasons[str(given[0])] == {}
    assert set(reasons[str(older)]) == {"harness"}
    assert f"harness commit {earlier[:12]} differs" in reasons[str(older)]["harness"]
    assert set(reasons[str(changed)]) == {"harness"}
    assert "harness code digest dddddddddddd differs" in reasons[str(changed)]["harness"]


def test_add_refuses_the_same_run_directory_given_twice(tmp_path, board):
    given = runs(tmp_path, seeds=(1,))
    with pytest.raises(LeaderboardError, match="given more than once; pass each run directory once"):
        add_entry(given * 2, root=board)


def test_add_refuses_a_changed_submission_source_and_names_the_file(tmp_path, board):
    given = runs(tmp_path, seeds=(1, 2)) + [write_run(tmp_path / "edited", sample_record(3, source="# edited\n"))]
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)
    assert set(reasons[str(given[2])]) == {"submission source"}
    assert "changed: submission.py" in reasons[str(given[2])]["submission source"]


def test_add_reports_every_failed_check_of_every_run_and_files_nothing(tmp_path, board):
    broken = sample_record(1)
    broken["metrics"]["core_label"] = "not a label"
    unfit = sample_record(2, profile="cpu", status="failed", resumed=True, missing_labels=("squad", "coqa"))
    given = [write_run(tmp_path / "broken", broken), write_run(tmp_path / "unfit", unfit), tmp_path / "nowhere"]
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)
    assert set(reasons[str(given[0])]) == {"schema"} and "core_label" in reasons[str(given[0])]["schema"]
    unfit_reasons = reasons[str(given[1])]["eligibility"]
    assert set(reasons[str(given[1])]) == {"eligibility"}
    for why in ("did not finish (status failed)", "profile 'cpu'", "resumed from a checkpoint", "squad, coqa"):
        assert why in unfit_reasons
    assert "missing record.json, events.jsonl" in reasons[str(given[2])]["readable"]
    assert "unfit: rejected" in str(e.value)  # the exception's message lists the reasons too
    assert load_entries(board, "record") == []


def test_the_development_board_takes_other_profiles_and_partial_bundles(tmp_path, board):
    given = runs(tmp_path, seeds=(1, 2), profile="cpu", eligible=False, missing_labels=("squad",), resumed=True)
    entry = add_entry(given, root=board, track="dev", name="smoke")
    assert entry.path == board / "dev" / "records" / "2026-04-01_smoke"
    assert load_entries(board, "record") == []


def test_a_killed_runs_half_written_last_event_is_skipped_but_a_damaged_middle_is_refused(tmp_path):
    run = write_run(tmp_path / "killed", sample_record(), killed=True)
    events = read_events(run / "events.jsonl")
    assert events[-1]["event"] == "record_written"
    lines = (run / "events.jsonl").read_text().splitlines()
    (run / "events.jsonl").write_text("\n".join(lines[:3] + ["{oops"] + lines[3:]) + "\n")
    with pytest.raises(LeaderboardError, match=r"events.jsonl: line 4 is not UTF-8 JSON"):
        read_events(run / "events.jsonl")


def test_a_stored_record_edited_after_filing_is_refused_when_read(tmp_path, board):
    entry = add_entry(runs(tmp_path), root=board)
    record = entry.path / "seed-2" / "record.json"
    record.write_text(record.read_text().replace('"training_time_s": 5940.0', '"training_time_s": 5000.0'))
    with pytest.raises(LeaderboardError, match="changed after it was filed"):
        load_entries(board, "record")


def test_a_second_entry_with_the_same_date_and_name_is_refused(tmp_path, board):
    add_entry(runs(tmp_path), root=board)
    with pytest.raises(LeaderboardError, match="already exists; choose another --name"):
        add_entry(runs(tmp_path, prefix="more", seeds=(4, 5)), root=board)


def test_a_record_entry_needs_a_writeup(tmp_path, board):
    with pytest.raises(LeaderboardError, match="no README.md.*--writeup FILE"):
        add_entry(runs(tmp_path, readme=None), root=board)


# A separate process that files one entry and prints its filing order (the store alone: a quick import).
ADD_IN_ANOTHER_PROCESS = (
    "import sys; from leaderboard.store import add_entry; "
    "print(add_entry(sys.argv[3:], root=sys.argv[1], name=sys.argv[2]).meta['seq'])"
)


def test_concurrent_adds_wait_for_the_lock_and_get_distinct_filing_order(tmp_path, board):
    repo = Path(__file__).resolve().parents[1]
    with file_lock(board / ".add"):  # the lock add takes: while we hold it, nothing may be filed
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    ADD_IN_ANOTHER_PROCESS,
                    str(board),
                    f"e{i}",
                    *map(str, runs(tmp_path, prefix=f"set{i}-", seeds=(1, 2))),
                ],
                cwd=repo,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for i in range(3)
        ]
        time.sleep(1.0)
        assert all(p.poll() is None for p in procs)
        assert not (board / "records").exists()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    seqs = [int(out) for out, _ in outs]
    assert sorted(seqs) == [1, 2, 3]
    assert [e.name for e in load_entries(board, "record")] == [f"e{i}" for i in sorted(range(3), key=seqs.__getitem__)]


def test_the_command_line_prints_each_reason_and_exits_1(tmp_path, board, capsys):
    given = runs(tmp_path, seeds=(1,), prefix="a") + runs(tmp_path, seeds=(1,), prefix="b")
    assert main(["--root", str(board), "add", *map(str, given), "--name", "x"]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "seed: seed 1 is also the seed of" in err


def test_the_command_line_files_and_renders_a_valid_set(tmp_path, board, capsys):
    given = runs(tmp_path)
    assert main(["--root", str(board), "add", *map(str, given), "--contributors", "Ada, Alan"]) == 0
    assert "filed 3 runs" in capsys.readouterr().out
    assert "| Ada, Alan |" in (board / "README.md").read_text()


# ---- hand-made and edited records: each refused by the check that re-derives what was changed


def hand_made(run_dir: Path, *, record_s: float = 4356.0, events_s: float = 9000.0) -> Path:
    """A record typed in by hand, as the issue found one accepted: harness commit ffff..., digests eeee..., and
    an events.jsonl whose step times add up to 9,000 s against the record's 4,356 s, without the referee's
    record_written line."""
    record = sample_record(1, training_time_s=record_s, commit="f" * 40)
    for section in ("data", "tokenizer", "eval_bundle"):
        record[section]["digest"] = "e" * 64
    write_run(run_dir, sample_record(1, training_time_s=events_s), digest=False)
    (run_dir / "record.json").write_text(json.dumps(record))
    return run_dir


def test_hand_made_records_are_refused_by_the_committed_track_naming_every_failed_check(tmp_path, capsys):
    board = new_board(tmp_path / "board", committed=True)
    given = [hand_made(tmp_path / "forged")]
    with pytest.raises(RejectedRuns) as e:
        add_entry(given, root=board)
    reasons = failed(e.value)[str(given[0])]
    assert set(reasons) == {"record digest", "step times", "harness commit", "pinned data", "tokenizer", "eval bundle"}
    assert "has no record_written line" in reasons["record digest"]
    assert "sum to 9000.0 s but training_time_s is 4356.0 s" in reasons["step times"]
    assert "harness commit ffffffffffff is not in this repository's history" in reasons["harness commit"]
    # The committed pins are real but not complete yet: add says what is missing instead of pinning anything.
    assert "pins no climbmix shard digest yet" in reasons["pinned data"]
    assert "the first real tokenizer" in reasons["tokenizer"] and "has not been trained" in reasons["tokenizer"]
    assert "no digest for coqa.jsonl, hellaswag.jsonl, squad.jsonl" in reasons["eval bundle"]
    track = (board / "track.json").read_bytes()
    assert main(["--root", str(board), "add", str(given[0])]) == 1
    err = capsys.readouterr().err
    for name in ("record digest", "step times", "harness commit", "pinned data", "tokenizer", "eval bundle"):
        assert f"  - {name}: " in err
    assert (board / "track.json").read_bytes() == track and not (board / "records").exists()


def test_the_committed_track_refuses_every_record_track_run_until_its_pins_are_complete(tmp_path):
    board = new_board(tmp_path / "board", committed=True)
    with pytest.raises(RejectedRuns) as e:
        add_entry(runs(tmp_path), root=board)
    for reasons in failed(e.value).values():
        assert set(reasons) == {"pinned data", "tokenizer", "eval bundle"}
    # The development board does not use the pins: the same runs are filed there.
    assert add_entry(runs(tmp_path, prefix="dev"), root=board, track="dev").path.is_dir()


def _set_times(record: dict, seconds: float) -> None:
    """training_time_s, the referee's observation and phases changed together, the wall time to match."""
    record["wall_time_s"] += seconds - record["training_time_s"]
    record["training_time_s"] = record["training_time_observed_s"] = record["phases"]["train"] = seconds


def _shard(record: dict) -> None:
    record["data"]["shards"]["shard_00001.parquet"] = "e" * 64


# check name -> (edit applied to the record, whether the event log is written from the edited record). A forger
# who writes the event log from the edited record and appends its sha256 is caught by the check that
# re-derives what was edited; one who edits record.json alone by its digest.
FORGERIES = {
    "record digest": (lambda r: r["metrics"].update(core=0.3), None),
    "training time": (lambda r: r.update(training_time_s=4356.0), True),
    "step times": (lambda r: _set_times(r, 4356.0), False),
    "wall time": (lambda r: r.update(wall_time_s=r["wall_time_s"] - 1000), True),
    "tokens": (lambda r: r["data"].update(tokens_consumed=r["data"]["tokens_consumed"] * 2), True),
    "harness commit": (lambda r: r["harness"].update(commit="f" * 40), True),
    "pinned data": (_shard, True),
    "tokenizer": (lambda r: r["tokenizer"].update(digest="e" * 64), True),
    "eval bundle": (lambda r: r["eval_bundle"].update(digest="e" * 64), True),
}


@pytest.mark.parametrize("check", FORGERIES)
def test_an_edited_record_is_refused_by_the_check_that_re_derives_the_edit(tmp_path, board, check):
    edit, events_from_edit = FORGERIES[check]
    original = sample_record(1)
    edited = copy.deepcopy(original)
    edit(edited)
    run = write_run(tmp_path / "run", edited if events_from_edit else original)
    if not events_from_edit:
        (run / "record.json").write_text(json.dumps(edited))
        if events_from_edit is False:
            resign(run)
    with pytest.raises(RejectedRuns) as e:
        add_entry([run], root=board)
    assert set(failed(e.value)[str(run)]) == {check}


def test_a_resumed_runs_appended_step_times_count_once_per_step(tmp_path, board):
    # Two sessions in one log: steps 0-119, interrupted; resumed from the checkpoint at step 100, steps 100-199.
    # Steps 100-119 of the first session were lost with it: the second session's times replace theirs.
    record = sample_record(1, resumed=True, eligible=False)
    run = write_run(tmp_path / "resumed", record)
    step_s = record["training_time_s"] / 200
    sessions = [(0, [step_s] * 100 + [step_s * 3] * 20), (100, [step_s] * 100)]
    lines = [line for line in (run / "events.jsonl").read_text().splitlines() if '"step_times"' not in line]
    lines[1:1] = [
        json.dumps({"time": 1.0e9, "t": 1.0, "event": "step_times", "key": k, "value": v}) for k, v in sessions
    ]
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert add_entry([run], root=board, track="dev").runs[0].seed == 1
    record = json.loads((run / "record.json").read_text())
    record["steps_completed"] = 250
    record["data"]["tokens_consumed"] = 250 << 20
    (run / "record.json").write_text(json.dumps(record))
    resign(run)
    with pytest.raises(RejectedRuns, match="events.jsonl has no time for step 200 of the 250 steps"):
        add_entry([run], root=board, track="dev", name="more")


def test_a_run_that_stopped_before_training_is_refused_by_name_not_by_a_crash(tmp_path, board):
    record = sample_record(1, status="failed", eligible=False)
    record.pop("training_time_observed_s")
    record.update(run=None, plan=None, data=None, tokenizer=None, eval_bundle=None, steps_completed=0,
                  training_time_s=0.0, wall_time_s=12.0, phases={"setup": 12.0}, loss_curve=[])  # fmt: skip
    run = write_run(tmp_path / "early", record)
    with pytest.raises(RejectedRuns) as e:
        add_entry([run], root=board, track="dev")
    assert failed(e.value)[str(run)] == {"seed": "the record names no seed: the run stopped before training was "
                                                 "planned; there is nothing to file"}  # fmt: skip
