"""Re-run an entry's runs on this machine and compare them with their records: ``python -m leaderboard verify``.

    python -m leaderboard verify 2026-04-01_fp8-attn [--runs K] [--seed S ...] [--keep DIR]

    result = verify_entry(root, "fp8-attn", runs=1)      # re-runs, compares, writes verification.json

K of the entry's runs (chosen at random, so that no run can be prepared for it; or the ones named with --seed)
are replayed by ``harness.replay``: the submission from the sources embedded in the record, the recorded
command, the harness of the record's commit. Each replay is compared with its record by harness.replay's rules
(the data stream digest exactly, the loss curve and metrics within their tolerances, the training time within
the calibration-normalised tolerance of the profile: leaderboard/README.md states them). The outcome is added
to the entry's ``verification.json``; the board shows the entry as verified only while its latest verification
passed and the records it checked are the ones filed. The record track counts an entry as a record only once it
is verified.

The harness that replays is the one the record names: this checkout when its harness, eval and baseline code has
the record's digest, else the record's commit extracted from git (``git archive``) into a temporary folder.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from harness.fileio import file_lock
from harness.record import REPO_ROOT, Record, harness_digest
from harness.replay import ReplayError, compare, replay
from leaderboard.store import (
    PACKAGE_DIR,
    TRACK_DIRS,
    TRACKS,
    Entry,
    LeaderboardError,
    Run,
    append_verification,
    load_entry,
)


def find_entry(root: Path, ref: str) -> Entry:
    """The entry named ``ref``: its folder (a path), its folder name (``2026-04-01_fp8-attn``) or its name."""
    path = Path(ref)
    for track in TRACKS:
        track_dir = (Path(root) / TRACK_DIRS[track]).resolve()
        if path.is_dir() and path.resolve().parent == track_dir:
            return load_entry(path, track)
    found = []
    for track in TRACKS:
        track_dir = Path(root) / TRACK_DIRS[track]
        if track_dir.is_dir():
            named = [p for p in sorted(track_dir.iterdir()) if ref in (p.name, p.name.split("_", 1)[-1])]
            found += [(p, track) for p in named if (p / "entry.json").is_file()]
    if len(found) != 1:
        where = f"{Path(root) / TRACK_DIRS['record']} or {Path(root) / TRACK_DIRS['dev']}"
        what = "no entry" if not found else f"{len(found)} entries ({', '.join(p.name for p, _ in found)})"
        raise LeaderboardError(f"{what} named {ref!r} in {where}; pass the entry's folder")
    return load_entry(*found[0])


def choose_runs(entry: Entry, runs: int | None, seeds: Sequence[int] = ()) -> list[Run]:
    by_seed = {run.seed: run for run in entry.runs}
    if seeds:
        unknown = sorted(set(seeds) - set(by_seed))
        if unknown:
            raise LeaderboardError(f"{entry.path.name} has no run with seed {unknown[0]}; its seeds: {sorted(by_seed)}")
        return [by_seed[s] for s in sorted(set(seeds))]
    k = len(entry.runs) if runs is None else runs
    if not 1 <= k <= len(entry.runs):
        raise LeaderboardError(f"--runs {k}: {entry.path.name} has {len(entry.runs)} runs; choose 1 to that")
    return sorted(random.SystemRandom().sample(entry.runs, k), key=lambda run: run.seed)


def harness_checkout(record: Record, scratch: Path) -> Path:
    """A folder holding the harness the record ran: this checkout when its code has the record's digest, else the
    record's commit extracted from git (refused when the record's harness had uncommitted changes)."""
    harness = record.harness
    if harness.source_digest == harness_digest():
        return REPO_ROOT
    commit = harness.commit
    if harness.dirty is not False or not commit:
        raise LeaderboardError(
            f"the run's harness (digest {str(harness.source_digest)[:12]}) is not this checkout's and had "
            "uncommitted changes (or no commit): it cannot be rebuilt; verify from the checkout that ran it"
        )
    folder = scratch / f"harness-{commit[:12]}"
    if not folder.is_dir():
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO_ROOT, capture_output=True)
        if archive.returncode != 0:
            raise LeaderboardError(f"git archive {commit[:12]} failed: {archive.stderr.decode(errors='replace')}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
    # The commit's own code computes its digest, as its referee did when the run started.
    out = subprocess.run([sys.executable, "-c", "from harness.record import harness_digest; print(harness_digest())"],
                         cwd=folder, capture_output=True, text=True)  # fmt: skip
    if out.stdout.strip() != harness.source_digest:
        raise LeaderboardError(
            f"commit {commit[:12]}'s harness has digest {out.stdout.strip()[:12] or out.stderr[-200:]}, not the "
            f"record's {str(harness.source_digest)[:12]}: the record does not describe that commit"
        )
    return folder


def verify_run(run: Run, scratch: Path, keep: Path | None = None) -> dict:
    """Replay one run and compare; the result names every rule that failed."""
    out = (keep or scratch) / f"seed-{run.seed}"
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"replaying seed {run.seed} of {run.path.parent.name} (output in {log})", flush=True)
    checkout = harness_checkout(run.record, scratch)
    harness = "this checkout" if checkout == REPO_ROOT else f"commit {run.record.harness.commit} (git archive)"
    try:
        new = replay(run.record, out, log=log, cwd=checkout)
    except ReplayError as e:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
        return {"seed": run.seed, "ok": False, "rows": [], "harness": harness, "problem": f"{e}\n{tail}"}
    rows = compare(run.record, new)
    return {
        "seed": run.seed,
        "ok": all(r["ok"] for r in rows),
        "rows": rows,
        "harness": harness,
        "replay": {
            "status": new.status,
            "harness_commit": new.harness.commit,
            "calibration": dict(new.calibration),
            "gpus": [g.get("name") for g in (new.fingerprint or {}).get("gpus", [])],
            "cpu_model": (new.fingerprint or {}).get("cpu_model"),
        },
    }


def differences(result: dict) -> list[str]:
    """One line per failed rule of every replayed run."""
    lines = []
    for run in result["runs"]:
        if run.get("problem"):
            lines.append(f"seed {run['seed']}: {run['problem'].splitlines()[0]}")
        for r in run["rows"]:
            if not r["ok"]:
                lines.append(
                    f"seed {run['seed']}: {r['what']} differs: recorded {r['recorded']}, replayed {r['replayed']} "
                    f"(rule: {r['rule']})"
                )
    return lines


def verify_entry(
    root: str | Path = PACKAGE_DIR,
    ref: str = "",
    *,
    runs: int | None = 1,
    seeds: Sequence[int] = (),
    keep: Path | None = None,
) -> dict:
    """Replay ``runs`` (or ``seeds``) of entry ``ref``, compare, and add the outcome to its verification.json."""
    entry = find_entry(Path(root), ref)
    chosen = choose_runs(entry, runs, seeds)
    with tempfile.TemporaryDirectory(prefix="speedrun-verify-") as tmp:
        results = [verify_run(run, Path(tmp), keep) for run in chosen]
    files = {run["dir"]: run["files"]["record.json"] for run in entry.meta["runs"]}
    by_seed = {run.seed: run for run in entry.runs}
    for result in results:  # the record this verification is about: it stops counting if the file changes
        result["record_sha256"] = files[by_seed[result["seed"]].path.name]
    result = {
        "verified": all(r["ok"] for r in results),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs_checked": len(results),
        "runs_in_entry": len(entry.runs),
        "runs": results,
    }
    result["differences"] = differences(result)
    with file_lock(Path(root) / ".add"):  # the lock add and render take: the board is read whole or not at all
        append_verification(entry.path, result)
    return result


def main(root: Path, ref: str, runs: int | None, seeds: Sequence[int], keep: Path | None) -> int:
    result = verify_entry(root, ref, runs=runs, seeds=seeds, keep=keep)
    seeds_done = ", ".join(str(r["seed"]) for r in result["runs"])
    if result["verified"]:
        print(f"verified: seed(s) {seeds_done} of {ref} reproduce their records")
        return 0
    print(f"NOT verified: seed(s) {seeds_done} of {ref} differ from their records:", file=sys.stderr)
    for line in result["differences"]:
        print(f"  - {line}", file=sys.stderr)
    return 1
