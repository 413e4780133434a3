"""Checkpoints: the final model (for evaluation in a fresh process) and periodic training states (--resume).

A checkpoint is a directory written under a temporary name and renamed into place; its ``meta.json``
lists the sha256 of every file, and loading verifies them, so a checkpoint cut short by ``kill -9`` is
never trusted.

    save_model(run_dir / "model", model, tokenizer, run, submission)
    model, tokenizer, meta = load_for_eval(run_dir, device="cpu")     # rebuilds the model via its submission
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch

from harness.fileio import atomic_write_json, sha256_file
from harness.hookspecs import Run
from harness.tokenizer import Tokenizer

MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"


class CheckpointError(Exception):
    pass


def _write_dir(final: Path, write_files) -> Path:
    """Write files into a temporary sibling directory, add meta.json with their digests, rename into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        meta = write_files(tmp)
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
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{meta_path} is not UTF-8 JSON ({exc}): the checkpoint is damaged") from None
    files = meta.get("files") if isinstance(meta, dict) else None
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


def save_model(path: Path, model: torch.nn.Module, tokenizer: Tokenizer, run: Run, submission) -> Path:
    def write(tmp: Path) -> dict:
        torch.save(model.state_dict(), tmp / "model.pt")
        tokenizer.save(tmp / "tokenizer.json")
        return {
            "kind": "model",
            "run": dataclasses.asdict(run),
            "submission": {
                "name": submission.name,
                "path": str(submission.path),
                "source_digest": submission.source_digest,
            },
            "tokenizer_digest": tokenizer.digest,
        }

    return _write_dir(Path(path), write)


def load_for_eval(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Tokenizer, dict]:
    """Rebuild a saved model through its submission's ``build_model`` and load the weights; eval mode.

    ``path`` is a run directory or its ``model/`` directory. Refuses a submission whose files changed since.
    """
    from harness.plugins import SubmissionError, load_submission

    path = Path(path)
    with contextlib.suppress(OSError):  # an unusable path is reported by _read_dir
        if (path / MODEL_DIR).is_dir():
            path = path / MODEL_DIR
    meta = _read_dir(path)
    recorded = meta.get("submission")
    if not (
        meta.get("kind") == "model"
        and isinstance(meta.get("run"), dict)
        and isinstance(meta.get("tokenizer_digest"), str)
        and isinstance(recorded, dict)
        and all(isinstance(recorded.get(key), str) for key in ("path", "source_digest"))
    ):
        raise CheckpointError(
            f"{path / 'meta.json'} is not a model checkpoint's (it needs kind 'model', run, tokenizer_digest and "
            "submission.path/source_digest); pass the run directory or its model/ folder"
        )
    try:
        submission = load_submission(recorded["path"])
    except SubmissionError as exc:
        raise CheckpointError(
            f"the submission {recorded['path']} recorded in {path / 'meta.json'} cannot be loaded: {exc}"
        ) from None
    if submission.source_digest != meta["submission"]["source_digest"]:
        raise CheckpointError(
            f"submission {submission.path} changed since the checkpoint was written "
            f"(digest {submission.source_digest[:12]} != {meta['submission']['source_digest'][:12]}); "
            f"check out the submission as it was"
        )
    try:
        run = dataclasses.replace(Run(**meta["run"]), device=device, rank=0, local_rank=0, world_size=1)
    except TypeError as exc:  # fields added or removed since the checkpoint was written
        raise CheckpointError(f"{path / 'meta.json'}: its 'run' does not fit this harness's Run ({exc})") from None
    model = submission.hook.build_model(run=run)
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    model.eval()
    try:
        tokenizer = Tokenizer.load(path / "tokenizer.json")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if tokenizer.digest != meta["tokenizer_digest"]:
        raise CheckpointError(f"{path / 'tokenizer.json'} does not match the recorded tokenizer digest")
    return model, tokenizer, meta


def save_training_state(run_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    """A periodic checkpoint: ``state`` holds model, optimizer, loader and clock states. Only the ``keep`` newest
    intact checkpoints are kept, so long runs do not fill the disk."""

    def write(tmp: Path) -> dict:
        torch.save(state, tmp / "state.pt")
        return {"kind": "training", "step": step}

    path = _write_dir(Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:06d}", write)
    for old in sorted(path.parent.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


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
