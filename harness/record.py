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

from harness.fileio import atomic_write_json, sha256_file

SCHEMA_PATH = Path(__file__).with_name("record.schema.json")
SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
# The code that decides a result: a change here must show up as a different harness digest.
HARNESS_PACKAGES = ("harness", "evals")
LIBRARIES = ("torch", "tiktoken", "rustbpe", "pyarrow", "pandas", "pluggy", "numpy", "triton", "datasets", "wandb")


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_record(record: dict) -> list[str]:
    """Every way ``record`` breaks the schema, as readable strings; empty when it is valid."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]


def write_record(run_dir: Path, record: dict) -> Path:
    errors = validate_record(record)
    if errors:
        raise ValueError("refusing to write a record that breaks harness/record.schema.json:\n  " + "\n  ".join(errors))
    path = Path(run_dir) / "record.json"
    atomic_write_json(path, record)
    return path


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def harness_digest() -> str:
    """sha256 over the harness and eval code files, so a record pins the referee even outside git."""
    digest = hashlib.sha256()
    for package in HARNESS_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(REPO_ROOT).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def harness_provenance() -> dict:
    """Version, git commit and dirty flag (uncommitted changes to tracked harness or eval files)."""
    try:
        version = importlib.metadata.version("speedrun")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *HARNESS_PACKAGES)
    return {
        "version": version,
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "source_digest": harness_digest(),
    }


def environment() -> dict:
    env = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    import torch

    env["torch"] = torch.__version__
    env["cuda"] = torch.version.cuda
    return env
