"""Checkpoints: the final model as an exported program (for the referee's evals) and periodic training states.

A checkpoint is a directory written under a temporary name and renamed into place; its ``meta.json``
lists the sha256 of every file, and loading verifies them, so a checkpoint cut short by ``kill -9`` is
never trusted.

    save_program(run_dir / "model", lambda path: export_model(model, path, ...))   # run_dir/model/model.pt2
    save_training_state(run_dir, step, state); latest_training_state(run_dir)      # --checkpoint-every, --resume
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import torch

from harness.fileio import atomic_write_json, read_json, sha256_file, temp_dir

MODEL_DIR = "model"
PROGRAM_FILE = "model.pt2"
CHECKPOINTS_DIR = "checkpoints"
FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: the disk was full


class CheckpointError(Exception):
    pass


def _write_dir(final: Path, write_files) -> Path:
    """Write files into a temporary sibling directory, add meta.json with their digests, rename into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final.parent, prefix=f".{final.name}.")
    try:
        try:
            meta = write_files(tmp)
        except Exception as exc:  # torch's writers report a full disk as a bare RuntimeError: say what it is
            if shutil.disk_usage(final.parent).free < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, f"No space left on device while writing {final} ({exc}); free some "
                                            f"space or pass --out DIR on a larger disk") from exc  # fmt: skip
            raise
        meta["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _read_dir(path: Path) -> dict:
    meta_path = path / "meta.json"
    try:
        folder, present = path.is_dir(), meta_path.is_file()
    except OSError as exc:  # a name too long for the file system, for example
        raise CheckpointError(f"{path} is not a checkpoint folder ({exc.strerror})") from None
    if not folder:
        raise CheckpointError(f"no checkpoint folder at {path}; pass a run directory or its model/ folder")
    if not present:
        raise CheckpointError(f"{path} is not a complete checkpoint (no meta.json): it was cut short; ignore it")
    meta = read_json(meta_path, "the checkpoint is damaged", CheckpointError)
    files = meta.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..") and isinstance(digest, str)
        for name, digest in files.items()
    ):
        raise CheckpointError(
            f"{meta_path} has no 'files' object mapping each file name to its sha256: the checkpoint is damaged"
        )
    for name, digest in files.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise CheckpointError(f"{path / name} does not match the digest in {meta_path}: the checkpoint is damaged")
    return meta


def save_program(folder: Path, export) -> Path:
    """The final model as an exported program (``export(path)`` writes it), in a checkpoint folder with
    meta.json. Returns the program's path."""

    def write(tmp: Path) -> dict:
        export(tmp / PROGRAM_FILE)
        return {"kind": "program"}

    return _write_dir(Path(folder), write) / PROGRAM_FILE


def save_training_state(run_dir: Path, step: int, state: dict, identity: dict, keep: int = 2) -> Path:
    """A periodic checkpoint: ``state`` holds model, optimizer, loader and clock states; ``identity`` (JSON: the
    run's arguments, the submission's digest, the plan) goes into meta.json, so that a resume can be checked
    against it without unpickling anything. Only the ``keep`` newest intact checkpoints are kept."""

    def write(tmp: Path) -> dict:
        torch.save(state, tmp / "state.pt")
        return {"kind": "training", "step": step, **identity}

    path = _write_dir(Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:06d}", write)
    for old in sorted(path.parent.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_meta(run_dir: Path) -> dict | None:
    """The meta.json of the newest intact periodic checkpoint (its step and identity), without loading it."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    for path in sorted(root.glob("step_*"), reverse=True) if root.is_dir() else []:
        try:
            return _read_dir(path)
        except CheckpointError:
            continue
    return None


def latest_training_state(run_dir: Path) -> tuple[int, dict] | None:
    """The newest intact periodic checkpoint under ``run_dir``; damaged or partial ones are skipped."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    for path in sorted(root.glob("step_*"), reverse=True) if root.is_dir() else []:
        try:
            meta = _read_dir(path)
        except (CheckpointError, json.JSONDecodeError, KeyError):
            continue
        return meta["step"], torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    return None
