"""Encode throughput of the pinned tokenizer on the smoke corpus: batched (1 and 2 threads) and one text at a time.

    pytest tests/benchmarks/test_bench_tokenizer.py --benchmark-only

The tokenizer is the smoke profile's (4096 ids, trained on the corpus; built once into $SPEEDRUN_CACHE as a harness
run does). Each round encodes the first 2,000 documents of the first training shard (about 1.3 MB of text);
``extra_info["mb_per_s"]`` and ``extra_info["tokens_per_s"]`` are the figures to compare.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from harness.data import get_tokenizer, prepare_dataset

DOCS = 2_000


@pytest.fixture(scope="module")
def setup():
    dataset = prepare_dataset("smoke")
    tokenizer = get_tokenizer(dataset, 4096)
    texts = pq.read_table(dataset.train_files[0], columns=["text"]).column(0).to_pylist()[:DOCS]
    return tokenizer, texts


def report(benchmark, texts: list[str], ids: list[list[int]]) -> None:
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["mb_per_s"] = round(sum(len(t.encode()) for t in texts) / seconds / 1e6, 2)
    benchmark.extra_info["tokens_per_s"] = round(sum(map(len, ids)) / seconds)


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_tokenizer_encode_batch(benchmark, setup, threads):
    tokenizer, texts = setup
    ids = benchmark.pedantic(tokenizer.encode_batch, args=(texts, True, threads), rounds=10, warmup_rounds=1)
    report(benchmark, texts, ids)


def test_bench_tokenizer_encode_one_text_at_a_time(benchmark, setup):
    tokenizer, texts = setup
    ids = benchmark.pedantic(lambda: [tokenizer.encode(t, prepend_bos=True) for t in texts], rounds=10, warmup_rounds=1)
    report(benchmark, texts, ids)
