"""The run record: one JSON file per run, validated against the committed schema ``record.schema.json``.

    errors = validate_record(json.loads(Path("runs/x/record.json").read_text()))   # [] when valid
    write_record(run_dir, record)      # validates, then writes record.json atomically

A record holds everything needed to audit or replay a run: the submission's sources and digests, the
harness commit, the command line, library versions, hardware fingerprint and calibration, the plan,
digests of the data, tokenizer and eval bundle, phase times and the metrics.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from functools import cache
from pathlib import Path

import jsonschema

from harness.clock import read_events
from harness.fileio import atomic_write_json, sha256_file

SCHEMA_PATH = Path(__file__).with_name("record.schema.json")
SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
# The code that decides a result, and the baselines every submission runs on: a change here must show up as a
# different harness digest and, uncommitted, as a dirty harness.
HARNESS_PACKAGES = ("harness", "evals", "baselines")
LIBRARIES = ("torch", "tiktoken", "rustbpe", "pyarrow", "pandas", "pluggy", "numpy", "triton", "datasets", "wandb")


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_record(record: dict) -> list[str]:
    """Every way ``record`` breaks the schema, as readable strings; empty when it is valid."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]


RECORD_FILE = "record.json"


def record_files(run_dir: Path) -> list[Path]:
    """The records of a run directory, oldest first: record.json, then record.resume-1.json, -2, ... (a resumed
    run writes its record beside the earlier ones: a record once written is never replaced)."""
    run_dir = Path(run_dir)
    resumed = sorted(run_dir.glob("record.resume-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [p for p in [run_dir / RECORD_FILE, *resumed] if p.is_file()]


def next_record_file(run_dir: Path) -> Path:
    """Where the next record of ``run_dir`` goes: record.json first, then record.resume-N.json."""
    found = record_files(run_dir)
    return Path(run_dir) / (RECORD_FILE if not found else f"record.resume-{len(found)}.json")


def write_record(path: Path, record: dict, reserved: bool = False) -> Path:
    """Validate ``record`` and write it atomically at ``path``; never over an existing record. ``reserved``: the
    referee chose ``path`` when the run started, when nothing was there; whatever is there now is not a record it
    wrote (a submission's file), and is replaced."""
    errors = validate_record(record)
    if errors:
        raise ValueError("refusing to write a record that breaks harness/record.schema.json:\n  " + "\n  ".join(errors))
    if Path(path).exists() and not reserved:
        raise FileExistsError(f"{path} already holds a record; a record once written is never replaced")
    atomic_write_json(path, record)
    return Path(path)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None  # not strip(): porcelain lines start with a space


def harness_digest() -> str:
    """sha256 over the harness and eval code files, so a record pins the referee even outside git."""
    digest = hashlib.sha256()
    for package in HARNESS_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(REPO_ROOT).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def harness_provenance(imported: list[str] = ()) -> dict:
    """Version, git commit, digest, and the dirty flag: uncommitted changes to the harness, eval and baseline
    code or to any other repository file the run imported (``imported``, relative paths), whose text is kept."""
    try:
        version = importlib.metadata.version("speedrun")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=all", "--", *HARNESS_PACKAGES, *imported)
    changed = sorted(line[3:].split(" -> ")[-1] for line in (status or "").splitlines())
    return {
        "version": version,
        "commit": commit,
        "dirty": None if status is None else bool(changed),
        "source_digest": harness_digest(),
        "changed": changed,
        "changed_sources": {path: _text(REPO_ROOT / path) for path in changed if (REPO_ROOT / path).is_file()},
    }


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return f"(not UTF-8: sha256 {sha256_file(path)})"


def record_digest_problem(run_dir: Path, name: str = RECORD_FILE) -> str | None:
    """Whether the record ``name`` in ``run_dir`` is the file the referee wrote: its sha256 against the
    ``record_written`` line the referee appended to events.jsonl after writing it."""
    run_dir = Path(run_dir)
    events = read_events(run_dir / "events.jsonl")
    written = [e["value"] for e in events if e.get("event") == "record_written" and isinstance(e.get("value"), dict)]
    mine = [w for w in written if w.get("file", RECORD_FILE) == name]
    if not mine:
        return f"{run_dir / 'events.jsonl'} has no record_written line for {name}: the referee did not write it"
    if mine[-1].get("sha256") != sha256_file(run_dir / name):
        return f"{run_dir / name} is not the record the referee wrote (its sha256 differs from events.jsonl)"
    return None


def environment() -> dict:
    env = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    import torch  # here: the leaderboard reads records without loading torch

    env["torch"] = torch.__version__
    env["cuda"] = torch.version.cuda
    return env
