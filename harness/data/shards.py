"""The shard format every dataset is read in: parquet files with one ``text`` column, written, hashed and read here,
and the tokenizer trained on a dataset's documents.

The real corpora come in this format; the smoke corpus and materialised ``hf:`` datasets are written in it with
fixed writer options, so the same texts and pyarrow version give byte-identical files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness.fileio import atomic_path, sha256_file
from harness.tokenizer import SPLIT_PATTERN, Tokenizer, train_tokenizer_cached

TEXT_COLUMN = "text"
ROW_GROUP_DOCS = 1024  # the real shards' row groups
# The real shards' writer options (zstd, no dictionary, no statistics).
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=False, write_statistics=False)


def write_shard(path: Path, docs: list[str], row_group_docs: int = ROW_GROUP_DOCS) -> None:
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


def hash_files(paths: list[Path], workers: int | None = None) -> list[str]:
    """sha256 of each file, in order."""
    # hashlib releases the GIL on large buffers, so threads hash shards in parallel.
    workers = workers or min(16, os.cpu_count() or 1, max(1, len(paths)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(sha256_file, paths))


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
    dataset,
    vocab_size: int,
    max_chars: int = 2_000_000_000,
    doc_cap: int = 10_000,
    cache: Path | None = None,
) -> Tokenizer:
    """The BPE tokenizer trained on the first ``max_chars`` characters of a Dataset's training shards.

    Cached under ``<cache>/tokenizers`` keyed by (dataset digest, vocab_size, max_chars, doc_cap, split pattern,
    trainer version): the second call loads it without reading any data. Safe to call from many ranks at once.
    """
    key = {"dataset": dataset.digest, "max_chars": max_chars, "doc_cap": doc_cap, "pattern": SPLIT_PATTERN}
    return train_tokenizer_cached(
        lambda: iter_documents(dataset.train_files, max_chars=max_chars, doc_cap=doc_cap), vocab_size, key, cache
    )
