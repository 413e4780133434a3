"""Tests of `python -m leaderboard verify` (leaderboard/verify.py): an entry's runs re-run from the sources in their
records and compared with them.

    pytest tests/test_leaderboard_verify.py

One real run (`python -m harness.run`, CPU profile, depth 2, 3 steps, no CORE) is filed on a development board
twice: as it was written, and forged the way `add` cannot see, every file edited consistently (a tenth of the
training time, a CORE, a lower loss curve) with the record's new sha256 appended to its event log. `verify`
re-runs each (two more real runs) and must pass the first and name every difference of the second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_leaderboard import head_commit, mark_verified, new_board, resign, sample_record, write_run

from harness.fileio import sha256_file
from harness.record import Record
from leaderboard.store import LeaderboardError, add_entry, load_entry
from leaderboard.verify import choose_runs, find_entry, harness_checkout

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--profile", "cpu", "--depth", "2", "--max-steps", "3", "--no-core", "--seed", "1"]


def leaderboard(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leaderboard", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def genuine_run(tmp_path_factory, harness_env) -> Path:
    out = tmp_path_factory.mktemp("genuine") / "run"
    proc = subprocess.run([sys.executable, "-m", "harness.run", "submissions/climbmix", *QUICK, "--out", str(out)],
                          cwd=REPO, env=harness_env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def forge(run: Path, dest: Path) -> Path:
    """A copy of ``run`` whose record claims a tenth of its training time, a CORE it never measured and a loss
    curve 10% lower, with every other file made to agree: the check add makes all pass."""
    shutil.copytree(run, dest)
    record = json.loads((dest / "record.json").read_text())
    saved = record["training_time_s"] * 0.9
    record["training_time_s"] -= saved
    record["training_time_observed_s"] -= saved
    record["phases"]["train"] -= saved
    record["wall_time_s"] -= saved
    record["metrics"]["core"] = 0.3
    record["loss_curve"] = [[step, round(loss * 0.9, 6)] for step, loss in record["loss_curve"]]
    record["metrics"]["final_loss"] = record["loss_curve"][-1][1]
    (dest / "record.json").write_text(json.dumps(record))
    lines = []
    for line in (dest / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "record_written":
            continue
        if event["event"] in ("step_times", "step_times_observed"):
            event["value"] = [t / 10 for t in event["value"]]
        lines.append(json.dumps(event))
    (dest / "events.jsonl").write_text("\n".join(lines) + "\n")
    resign(dest)
    return dest


@pytest.fixture(scope="module")
def board(tmp_path_factory, genuine_run) -> Path:
    tmp = tmp_path_factory.mktemp("verify")
    root = new_board(tmp / "board")
    add_entry([genuine_run], root=root, track="dev", name="genuine")
    # add believes the forgery: it agrees with itself everywhere. Only a re-run can tell.
    add_entry([forge(genuine_run, tmp / "forged")], root=root, track="dev", name="forged")
    return root


@pytest.mark.slow
def test_verify_of_a_genuine_entry_passes_and_the_board_says_verified(board, harness_env):
    proc = leaderboard(["--root", str(board), "verify", "genuine", "--runs", "1"], harness_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verified: seed(s) 1 of genuine reproduce their records" in proc.stdout
    entry = find_entry(board, "genuine")
    result = entry.verification
    assert result["verified"] is True and result["runs_checked"] == 1 and result["differences"] == []
    rows = {row["what"]: row for row in result["runs"][0]["rows"]}
    assert rows["data stream digest"]["recorded"] == rows["data stream digest"]["replayed"]
    assert rows["loss curve"]["ok"] and rows["training time"]["ok"]
    assert "reproduced its record" in (entry.path / "stats.md").read_text()
    assert "development (eligibility); verified |" in (board / "dev" / "README.md").read_text()


@pytest.mark.slow
def test_verify_of_an_entry_whose_record_was_edited_fails_naming_each_difference(board, harness_env):
    proc = leaderboard(["--root", str(board), "verify", "forged"], harness_env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NOT verified: seed(s) 1 of forged differ from their records" in proc.stderr
    differ = {line.split(": ")[1].removesuffix(" differs") for line in proc.stderr.splitlines()
              if line.startswith("  - seed 1: ")}  # fmt: skip
    assert differ == {"training time", "CORE", "loss curve", "final loss"}
    assert "CORE differs: recorded 0.3, replayed None" in proc.stderr
    entry = find_entry(board, "forged")
    assert entry.verification["verified"] is False
    assert "did not reproduce its record" in (entry.path / "stats.md").read_text()
    assert "development (eligibility); verification failed |" in (board / "dev" / "README.md").read_text()


# ---- choosing what to re-run, and with which harness (no run needed)


@pytest.fixture
def sample_board(tmp_path) -> Path:
    root = new_board(tmp_path / "board")
    runs = [write_run(tmp_path / f"s{seed}", sample_record(seed)) for seed in (1, 2, 3)]
    add_entry(runs, root=root, track="dev", name="sample")
    return root


def test_verify_finds_an_entry_by_name_folder_or_path_and_names_what_it_cannot_find(sample_board):
    folder = sample_board / "dev" / "records" / "2026-04-01_sample"
    for ref in ("sample", "2026-04-01_sample", str(folder)):
        assert find_entry(sample_board, ref).path == folder
    with pytest.raises(LeaderboardError, match="no entry named 'nope' in .*records; pass the entry's folder"):
        find_entry(sample_board, "nope")


def test_verify_re_runs_k_distinct_runs_or_the_seeds_asked_for(sample_board):
    entry = find_entry(sample_board, "sample")
    chosen = choose_runs(entry, 2)
    assert len({run.seed for run in chosen}) == 2
    assert [run.seed for run in choose_runs(entry, None, seeds=[3, 1])] == [1, 3]
    with pytest.raises(LeaderboardError, match="--runs 4: 2026-04-01_sample has 3 runs"):
        choose_runs(entry, 4)
    with pytest.raises(LeaderboardError, match="has no run with seed 7"):
        choose_runs(entry, None, seeds=[7])


def test_a_run_whose_harness_is_not_its_commits_cannot_be_verified(tmp_path):
    record = sample_record(1, commit=head_commit(), harness_digest="d" * 64)
    with pytest.raises(LeaderboardError, match="harness has digest .* not the record's dddddddddddd"):
        harness_checkout(Record.from_json(record), tmp_path)
    record["harness"]["dirty"] = True
    with pytest.raises(LeaderboardError, match="had uncommitted changes .* verify from the checkout that ran it"):
        harness_checkout(Record.from_json(record), tmp_path)


def test_the_entry_keeps_every_verification_and_the_latest_counts(sample_board):
    folder = sample_board / "dev" / "records" / "2026-04-01_sample"
    mark_verified(folder)
    mark_verified(folder, ok=False)
    attempts = json.loads((folder / "verification.json").read_text())["attempts"]
    assert [a["verified"] for a in attempts] == [True, False]
    assert load_entry(folder, "dev").verification["verified"] is False
    assert all(
        r["record_sha256"] == sha256_file(folder / f"seed-{r['seed']}" / "record.json") for r in attempts[0]["runs"]
    )
