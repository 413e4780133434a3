"""Sample runs and an empty board, for the leaderboard's tests and for trying the commands by hand.

    root = new_board(tmp)                                    # README.md, dev/README.md, track.json (sample pins)
    run = write_run(tmp / "s1", sample_record(seed=1))      # record.json + events.jsonl as the harness writes
    resign(run)                                              # record_written for an edited record.json
    mark_verified(entry.path)                                # a passing verification.json, for render's tests
    python -m leaderboard --root ROOT add RUN_DIR...

The records follow harness/record.schema.json (a test checks them with ``harness.record.validate_record``);
their numbers are made up and marked so: the submission is called "sample". They are consistent the way a
referee's record is, so that ``leaderboard add`` believes them: the harness commit is this repository's HEAD,
the phases tile the wall time, the events.jsonl written beside them holds each step's time and, last, the
record's sha256. The sample board's track.json pins the samples' data, tokenizer and bundle (the committed
track.json pins the real ones, which no sample matches: ``new_board(root, committed=True)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from functools import cache
from pathlib import Path

from harness.fileio import atomic_write_json, atomic_write_text, sha256_file
from harness.record import Record
from harness.referee import judge
from leaderboard.pins import bundle_digest, data_digest
from leaderboard.store import PACKAGE_DIR, append_verification

REPO = Path(__file__).resolve().parents[1]

# The 22 CORE labels (docs/spec/core.md, Tasks); per-task values are spread around the run's CORE so that they
# average to it.
CORE_LABELS = [
    "hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_easy", "arc_challenge", "copa", "commonsense_qa",
    "piqa", "openbook_qa", "lambada_openai", "hellaswag", "winograd", "winogrande", "bigbench_dyck_languages",
    "agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_operators", "bigbench_repeat_copy_logic", "squad",
    "coqa", "boolq", "bigbench_language_identification",
]  # fmt: skip


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def head_commit() -> str:
    """This repository's HEAD: a commit ``leaderboard add`` finds in the history."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


# The sample track: three climbmix-named shards (the last is the validation shard), a tokenizer digest and the
# bundle's files, pinned by the sample board's track.json.
VAL_SHARD = 6542
SHARDS = {f"shard_{i:05d}.parquet": _digest(f"shard {i}") for i in (0, 1, VAL_SHARD)}
DATA_DIGEST = data_digest("climbmix", SHARDS, f"shard_{VAL_SHARD:05d}.parquet")
TOKENIZER_DIGEST = _digest("tokenizer")
BUNDLE_FILES = {"core.yaml": _digest("core.yaml"), "eval_meta_data.csv": _digest("csv")} | {
    f"eval_data/{label}.jsonl": _digest(label) for label in CORE_LABELS
}
EVAL_BUNDLE_DIGEST = bundle_digest(BUNDLE_FILES)


def sample_record(
    seed: int = 1,
    *,
    training_time_s: float = 5940.0,
    core: float | None = 0.262,
    val_bpb: float | None = 0.718,
    profile: str = "8xh100",
    eligible: bool = True,
    status: str = "finished",
    resumed: bool = False,
    missing_labels: tuple[str, ...] = (),
    source: str = "# sample submission\n",
    readme: str | None = "# Sample change\n\nMade-up runs for tests.\n",
    eval_bundle_digest: str = EVAL_BUNDLE_DIGEST,
    commit: str | None = None,
    harness_digest: str = _digest("harness"),
    started_at: str = "2026-04-01T10:00:00+00:00",
    name: str = "sample",
) -> dict:
    """A finished-run record with the given numbers; a partial bundle gets core None and core_partial. ``commit``
    defaults to this repository's HEAD."""
    sources = {"submission.py": source} | ({"README.md": readme} if readme is not None else {})
    files = {path: _digest(text) for path, text in sorted(sources.items())}
    labels = [label for label in CORE_LABELS if label not in missing_labels]
    mean = core if core is not None else 0.2
    # Offsets that sum to zero, so the per-task centered values average exactly to the run's score.
    offsets = [0.05 * math.sin(i + seed) for i in range(len(labels))]
    shift = sum(offsets) / len(offsets)
    tasks = {
        label: {"accuracy": 0.5, "centered": mean + off - shift, "evaluated": 100, "correct": 50}
        for label, off in zip(labels, offsets, strict=True)
    }
    partial = bool(missing_labels)
    steps = 200
    return judged(
        {
            "schema_version": 1,
            "status": status,
            "submission": {
                "name": name,
                "path": f"submissions/{name}",
                "source_digest": _digest("".join(f"{p}\0{d}\n" for p, d in sorted(files.items()))),
                "overrides": ["build_model"],
                "files": files,
                "sources": sources,
            },
            "harness": {
                "version": "0.1.0",
                "commit": commit or head_commit(),
                "dirty": False,
                "source_digest": harness_digest,
            },
            "command": ["python", "-m", "harness.run", "--seed", str(seed)],
            "started_at": started_at,
            "finished_at": started_at.replace("T10:", "T12:"),
            "environment": {"python": "3.11.7", "torch": "2.5.1"},
            "profile": profile,
            "fingerprint": {
                "python": "3.11.7",
                "torch": "2.5.1",
                "cpu_model": "sample",
                "gpu_count": 8,
                "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6}] * 8,
            },  # fmt: skip
            # An H100 node's calibration, or one under the 8xh100 floor when the run must not be eligible.
            "calibration": {"matmul_tflops": 720.0 if eligible else 500.0, "memory_gbps": 2800.0},
            "eligibility": {"eligible": False, "reasons": []},  # judged below, as the referee does
            "resumed": resumed,
            "run": {"seed": seed, "world_size": 8, "dtype": "bfloat16", "depth": 24, "device": "cuda"},
            "plan": {
                "num_steps": steps,
                "total_batch_tokens": 1 << 20,
                "device_batch": 16,
                "seq_len": 2048,
                "grad_accum": 4,
                "flops_per_token": 4.9e9,
                "notes": "sample",
            },  # fmt: skip
            "data": {
                "dataset": "climbmix",
                "digest": DATA_DIGEST,
                "pinned": True,
                "shards": dict(SHARDS),
                "stream_digest": _digest(str(seed)),
                "tokens_consumed": steps << 20,
            },  # fmt: skip
            "tokenizer": {"digest": TOKENIZER_DIGEST, "vocab_size": 32768},
            "eval_bundle": {
                "path": "eval_bundle",
                "digest": eval_bundle_digest,
                "missing_labels": list(missing_labels),
            },
            "training_time_s": training_time_s,
            "training_time_observed_s": training_time_s,
            "wall_time_s": training_time_s + 600.0,
            "phases": {"setup": 100.0, "train": training_time_s, "eval": 500.0},  # they tile the wall time
            "steps_completed": steps,
            "metrics": {
                "final_loss": 2.5,
                "val_bpb": val_bpb,
                "core": None if partial else core,
                "core_partial": mean,
                "core_label": "core_partial" if partial else "CORE",
                "core_tasks": tasks,
            },
            "loss_curve": [[s, _loss(s, seed)] for s in range(0, steps, 20)],
            "error": None,
        }
    )


def judged(record: dict) -> dict:
    """The record with the referee's verdict on it, as harness.run writes it."""
    return {**record, "eligibility": judge(Record.from_json(record)).to_json()}


def _loss(step: int, seed: int) -> float:
    return round(2.5 + 8.0 / (1 + step / 10) + 0.01 * math.sin(step * 0.7 + seed), 6)


def write_run(run_dir: str | Path, record: dict, *, killed: bool = False, digest: bool = True) -> Path:
    """Write record.json and an events.jsonl as the referee does: a train_loss event every 5 steps, the steps'
    times, the run's stop and (``digest``) the record's sha256. ``killed`` leaves a half-written last line, as a run
    killed mid-write does."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "record.json", record)
    seed, steps = (record["run"] or {}).get("seed", 0), record["steps_completed"]
    events = [{"time": 1.0e9, "t": 0.0, "event": "run_start", "key": None, "value": None}]
    events += [
        {"time": 1.0e9 + s, "t": float(s), "event": "train_loss", "key": s, "value": {"loss": _loss(s, seed)}}
        for s in range(0, steps, 5)
    ]
    end = {"time": 1.0e9 + steps, "t": float(steps)}
    if steps:
        step_s = record["training_time_s"] / steps  # every step equally long: the training time the record states
        events.append({**end, "event": "step_times", "key": 0, "value": [step_s] * steps})
    events.append({**end, "event": "run_stop", "key": None, "value": record["status"]})
    if digest:
        written = {"sha256": sha256_file(run_dir / "record.json")}
        events.append({**end, "event": "record_written", "key": None, "value": written})
    text = "".join(json.dumps(e) + "\n" for e in events)
    atomic_write_text(run_dir / "events.jsonl", text + ('{"time": 1.0e9, "ev' if killed else ""))
    return run_dir


def resign(run_dir: Path) -> None:
    """Append a record_written line for the record.json now in ``run_dir``: what a forger who edits a record
    and its event log consistently would do."""
    line = {"time": 2.0e9, "t": 1.0, "event": "record_written", "key": None,
            "value": {"sha256": sha256_file(Path(run_dir) / "record.json")}}  # fmt: skip
    with open(Path(run_dir) / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def sample_pins() -> dict:
    """The committed pins with the samples' data, tokenizer digest and bundle files in place of the real ones."""
    pins = json.loads((PACKAGE_DIR / "track.json").read_text(encoding="utf-8"))["record"]["pins"]
    pins["data"]["digests"] = dict(SHARDS)
    pins["tokenizer"]["digest"] = TOKENIZER_DIGEST
    pins["eval_bundle"]["files"] = dict(BUNDLE_FILES)
    return pins


def new_board(root: str | Path, *, committed: bool = False) -> Path:
    """An empty leaderboard at ``root``: the committed READMEs (with their markers) and track.json, whose pins are
    the samples' unless ``committed``."""
    root = Path(root)
    (root / "dev").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGE_DIR / "README.md", root / "README.md")
    shutil.copyfile(PACKAGE_DIR / "dev" / "README.md", root / "dev" / "README.md")
    track = json.loads((PACKAGE_DIR / "track.json").read_text(encoding="utf-8"))
    if not committed:
        track["record"]["pins"] = sample_pins()
    atomic_write_json(root / "track.json", track)
    return root


def mark_verified(entry_path: Path, ok: bool = True) -> None:
    """Add to a filed entry the outcome ``python -m leaderboard verify`` writes when every run it re-ran
    reproduced its record (``ok``), or when the training time did not: the board's tests need verified entries
    without re-running made-up records."""
    meta = json.loads((Path(entry_path) / "entry.json").read_text(encoding="utf-8"))
    row = {"what": "training time", "recorded": 1.0, "replayed": "1.0", "rule": "sample", "ok": ok}
    runs = [{"seed": r["seed"], "ok": ok, "rows": [row], "record_sha256": r["files"]["record.json"]}
            for r in meta["runs"]]  # fmt: skip
    append_verification(
        Path(entry_path), {"verified": ok, "date": "2026-04-10T00:00:00+00:00", "runs": runs, "differences": []}
    )
