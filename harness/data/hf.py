"""Any Hugging Face dataset, for the development track: ``hf:`` names materialised into shards with ``datasets``.

A submission's ``select_dataset`` may return, instead of a catalog name,

    hf:OWNER/NAME[@REVISION][?config=C&split=S&column=text&bytes=1G&val_bytes=100M]

(``docs=N`` / ``val_docs=N`` count documents instead of UTF-8 bytes; sizes take k, M, G). On first use the
dataset is streamed with ``datasets.load_dataset(..., streaming=True)`` at the commit the revision resolves to:
the first ``val_*`` documents become the validation shard, the next ``bytes``/``docs`` the training shards, all
written in the harness's shard format with a manifest (source, commit, digests) beside them in
``<data dir>/hf/OWNER--NAME/<key>/``. Later uses read that manifest and verify the shards against it, without
the network. Runs on such data are never record-eligible; their record names the dataset, the commit and the
shard digests. See docs/data.md.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
from huggingface_hub import HfApi
from huggingface_hub.errors import GatedRepoError, HTTPError, RepositoryNotFoundError, RevisionNotFoundError

from harness.data.catalog import DataError, DatasetSpec, MissingShardError, write_lock
from harness.data.download import hub_endpoint, with_retries
from harness.data.shards import write_shard
from harness.fileio import atomic_write_json, sha256_file

log = logging.getLogger("harness.data")

PREFIX = "hf:"
MANIFEST = "manifest.json"
SHARD = "shard_{index:05d}.parquet"
SHARD_BYTES = 100_000_000  # UTF-8 text per training shard
DEFAULTS = {"split": "train", "column": "text", "bytes": 1_000_000_000, "val_bytes": 100_000_000}
SIZE_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9}
SYNTAX = "hf:OWNER/NAME[@REVISION][?config=C&split=S&column=text&bytes=1G|docs=N&val_bytes=100M|val_docs=N]"


@dataclass(frozen=True)
class HfSource:
    """What an ``hf:`` name asks for. Exactly one of docs/bytes and one of val_docs/val_bytes is set."""

    repo_id: str
    revision: str | None  # as asked; None: the default branch
    config: str | None
    split: str
    column: str
    docs: int | None
    bytes: int | None
    val_docs: int | None
    val_bytes: int | None

    @property
    def name(self) -> str:
        """The canonical name: options in a fixed order, defaults left out (two spellings, one dataset)."""
        options = [
            (key, value)
            for key in ("config", "split", "column", "docs", "bytes", "val_docs", "val_bytes")
            if (value := getattr(self, key)) is not None and value != DEFAULTS.get(key)
        ]
        query = "&".join(f"{key}={_format_size(value) if isinstance(value, int) else value}" for key, value in options)
        revision = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{revision}" + (f"?{query}" if query else "")

    @property
    def folder(self) -> str:
        """Where it is materialised, under the data dir: one folder per canonical name."""
        key = hashlib.sha256(self.name.encode()).hexdigest()[:16]
        return f"hf/{self.repo_id.replace('/', '--')}/{key}"


def _size(key: str, text: str) -> int:
    match = re.fullmatch(r"([0-9]+)([kMG]?)", text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"{key}={text!r}: expected a positive whole number, optionally with k, M or G (like 200M)")
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def _format_size(n: int) -> str:
    """1000000 -> '1M', 1500 -> '1500': the largest unit that divides it exactly."""
    unit = max((u for u, factor in SIZE_UNITS.items() if n % factor == 0), key=SIZE_UNITS.get)
    return f"{n // SIZE_UNITS[unit]}{unit}"


def parse_hf_name(text: str) -> HfSource:
    """Parse an ``hf:`` name; raises ValueError naming what is wrong and the syntax."""
    if not text.startswith(PREFIX):
        raise ValueError(f"{text!r} is not an hf: name ({SYNTAX})")
    head, _, query = text[len(PREFIX) :].partition("?")
    repo_id, _, revision = head.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", repo_id) or ".." in repo_id:
        raise ValueError(f"{text!r}: {repo_id!r} is not a Hugging Face dataset id like OWNER/NAME ({SYNTAX})")
    if "@" in head and not re.fullmatch(r"[\w.\-/]+", revision):
        raise ValueError(f"{text!r}: {revision!r} is not a branch, tag or commit ({SYNTAX})")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if key not in ("config", "split", "column", "docs", "bytes", "val_docs", "val_bytes") or not eq or not value:
            raise ValueError(f"{text!r}: unknown or empty option {part!r} ({SYNTAX})")
        if key in options:
            raise ValueError(f"{text!r}: option {key} given twice")
        options[key] = value
    for a, b in (("docs", "bytes"), ("val_docs", "val_bytes")):
        if a in options and b in options:
            raise ValueError(f"{text!r}: give {a} or {b}, not both")
    sizes = {k: _size(k, v) for k, v in options.items() if k in ("docs", "bytes", "val_docs", "val_bytes")}
    return HfSource(
        repo_id=repo_id,
        revision=revision or None,
        config=options.get("config"),
        split=options.get("split", DEFAULTS["split"]),
        column=options.get("column", DEFAULTS["column"]),
        docs=sizes.get("docs"),
        bytes=sizes.get("bytes", None if "docs" in sizes else DEFAULTS["bytes"]),
        val_docs=sizes.get("val_docs"),
        val_bytes=sizes.get("val_bytes", None if "val_docs" in sizes else DEFAULTS["val_bytes"]),
    )


# ------------------------------------------------------------------------------------------------
# Materialising


def _fixes(source: HfSource, root: Path) -> str:
    return (
        f"Fix: run `python -m harness.data download '{source.name}' --data-dir DIR` where the Hub (or a mirror named "
        f"by HF_ENDPOINT) is reachable and copy DIR/{source.folder} to {root / source.folder}, or point --data-dir / "
        f"SPEEDRUN_DATA_DIR at a directory that already holds {source.folder}."
    )


def _resolve_commit(source: HfSource, root: Path) -> str:
    """The commit the asked revision points to now; a clear DataError when the dataset or revision is unknown."""
    asked = source.revision or "main"
    try:
        info = with_retries(
            source.name,
            lambda: HfApi(endpoint=hub_endpoint()).dataset_info(source.repo_id, revision=asked),
            retries=3,
            backoff=1.0,
        )
    except RevisionNotFoundError:
        raise DataError(
            f"{source.name}: dataset {source.repo_id} on {hub_endpoint()} has no revision {asked!r}. Fix: name an "
            "existing branch, tag or commit after '@' (or none, for the default branch)."
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise DataError(
            f"{source.name}: there is no dataset {source.repo_id!r} on {hub_endpoint()} that this machine may read. "
            "Fix: check the name select_dataset returns (hf:OWNER/NAME, as on huggingface.co/datasets/OWNER/NAME); "
            "for a gated or private dataset, log in (`hf auth login`, or set HF_TOKEN)."
        ) from None
    except (HTTPError, ConnectionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{source.name} is not materialised in {root / source.folder} and the Hugging Face Hub at "
            f"{hub_endpoint()} cannot be reached ({first}). " + _fixes(source, root)
        ) from None
    return info.sha


def _documents(source: HfSource, commit: str):
    """The dataset's documents in stream order, at ``commit``."""
    # Imported here: datasets takes seconds to import and reads HF_ENDPOINT when imported.
    import datasets

    try:
        stream = datasets.load_dataset(
            source.repo_id, name=source.config, split=source.split, streaming=True, revision=commit
        )
        columns = stream.column_names
    except (datasets.exceptions.DatasetNotFoundError, ValueError, FileNotFoundError) as exc:
        raise DataError(
            f"{source.name}: `datasets` cannot open config {source.config!r}, split {source.split!r} of "
            f"{source.repo_id}@{commit[:12]} ({str(exc).splitlines()[0]:.300}). "
            "Fix: choose them with ?config=...&split=..."
        ) from None
    if columns is not None and source.column not in columns:
        raise DataError(
            f"{source.name}: split {source.split!r} has no column {source.column!r}; its columns are "
            f"{', '.join(columns)}. Fix: name the text column with ?column=NAME."
        )
    for row in stream:
        text = row.get(source.column)
        if isinstance(text, str) and text:
            yield text
        elif text is not None and not isinstance(text, str):
            raise DataError(f"{source.name}: column {source.column!r} holds {type(text).__name__}, not text")


def _take(docs, max_docs: int | None, max_bytes: int | None) -> list[str]:
    """The next documents of the stream up to ``max_docs``, or until their UTF-8 size reaches ``max_bytes``."""
    out, size = [], 0
    for text in docs:
        out.append(text)
        size += len(text.encode("utf-8"))
        if (max_docs is not None and len(out) >= max_docs) or (max_bytes is not None and size >= max_bytes):
            break
    return out


def _training_shards(docs, source: HfSource):
    """The training documents (those after validation) in shards of up to SHARD_BYTES of text, until the asked
    number of documents or bytes is reached or the split ends."""
    docs_left, bytes_left = source.docs, source.bytes
    while (docs_left is None or docs_left > 0) and (bytes_left is None or bytes_left > 0):
        shard = _take(docs, docs_left, SHARD_BYTES if bytes_left is None else min(SHARD_BYTES, bytes_left))
        if not shard:
            return
        yield shard
        docs_left = None if docs_left is None else docs_left - len(shard)
        bytes_left = None if bytes_left is None else bytes_left - sum(len(t.encode("utf-8")) for t in shard)


def _build(source: HfSource, root: Path) -> None:
    folder = root / source.folder
    commit = _resolve_commit(source, root)
    for old in folder.glob("shard_*.parquet"):  # leftovers of an interrupted build
        old.unlink()
    docs = _documents(source, commit)
    val = _take(docs, source.val_docs, source.val_bytes)
    names, train_docs = [], 0
    for shard in _training_shards(docs, source):
        names.append(SHARD.format(index=len(names)))
        write_shard(folder / names[-1], shard)
        train_docs += len(shard)
        log.info("%s: training shard %d written (%d documents so far)", source.name, len(names), train_docs)
    if not val or not names:
        raise DataError(
            f"{source.name}: the split holds {len(val) + train_docs} documents, too few for a validation shard and "
            "a training shard. Fix: ask for less validation text (val_docs= or val_bytes=) or use a larger split."
        )
    names.append(SHARD.format(index=len(names)))
    write_shard(folder / names[-1], val)
    asked = {k: getattr(source, k) for k in ("config", "docs", "bytes", "val_docs", "val_bytes") if getattr(source, k)}
    manifest = {
        "name": source.name,
        "description": f"{source.repo_id} materialised by `datasets` on first use (development track)",
        "source": {
            "type": "hf-datasets",
            "repo_id": source.repo_id,
            "revision": commit,
            "asked_revision": source.revision or "main",
            "split": source.split,
            "column": source.column,
            **asked,
        },  # fmt: skip
        "filename": SHARD,
        "num_shards": len(names),
        "val_shard": len(names) - 1,
        "digests": {name: sha256_file(folder / name) for name in names},
        "built_with": {"pyarrow": pa.__version__, "datasets": version("datasets")},
        "documents": {"train": train_docs, "val": len(val)},
    }
    atomic_write_json(folder / MANIFEST, manifest)  # written last: its presence means the shards are complete
    log.info("%s: %d training shards + validation, commit %s, in %s", source.name, len(names) - 1, commit, folder)


def materialize(name: str, root: Path, build: bool = True) -> DatasetSpec:
    """The manifest of an ``hf:`` dataset in ``root``, streamed and written first if it is not there (or, if not
    ``build``, a MissingShardError saying how to materialise it)."""
    source = parse_hf_name(name)
    folder = root / source.folder
    if not (folder / MANIFEST).exists() and not build:
        raise MissingShardError(f"{source.name} is not materialised in {folder}. " + _fixes(source, root))
    if not (folder / MANIFEST).exists():
        with write_lock(folder / "materialize", f"materialise {source.name}"):
            if not (folder / MANIFEST).exists():
                _build(source, root)
    return DatasetSpec.load(folder / MANIFEST, folder=source.folder)
