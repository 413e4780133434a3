"""Throughput of the training loader (tokenize + best-fit pack, B=8, T=2048) on the smoke corpus.

    pytest tests/benchmarks/test_bench_data.py --benchmark-only

Each round draws 20 batches (327,680 tokens) from a warmed-up loader; ``extra_info["tokens_per_s"]`` is the figure
to compare. The second benchmark runs a plain transcription of the reference loader (tokenizer batches of 128
documents as Python lists, a linear-scan best fit, rows built as lists) on the same corpus and tokenizer, for a
side-by-side figure on the same machine. The tokenizer is the smoke profile's: 4096 ids trained on the corpus.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from helpers_data import smoke_dataset, smoke_tokenizer

from harness.loader import TrainLoader

B, T, BATCHES = 8, 2048, 20


@pytest.fixture(scope="module")
def setup():
    dataset = smoke_dataset()
    return dataset, smoke_tokenizer(4096, 2_000_000_000)


def reference_loader(files, tokenizer, batch_size, seq_len, buffer_size=1000, threads=4):
    """The reference's tokenizing best-fit loader, transcribed for comparison (CPU, rank 0 of 1, endless)."""

    def document_batches():
        while True:
            for path in files:
                pf = pq.ParquetFile(path)
                for rg in range(pf.num_row_groups):
                    texts = pf.read_row_group(rg, columns=["text"]).column(0).to_pylist()
                    for i in range(0, len(texts), 128):
                        yield texts[i : i + 128]

    batches, buffer, capacity = document_batches(), [], seq_len + 1
    while True:
        rows = []
        for _ in range(batch_size):
            row = []
            while len(row) < capacity:
                while len(buffer) < buffer_size:
                    buffer.extend(tokenizer.encode_batch(next(batches), prepend_bos=True, num_threads=threads))
                remaining = capacity - len(row)
                best, best_len = -1, 0
                for i, doc in enumerate(buffer):
                    if best_len < len(doc) <= remaining:
                        best, best_len = i, len(doc)
                if best >= 0:
                    row.extend(buffer.pop(best))
                else:
                    shortest = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                    row.extend(buffer.pop(shortest)[:remaining])
            rows.append(row[:capacity])
        batch = torch.tensor(rows, dtype=torch.long)
        yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def measure(benchmark, loader) -> float:
    for _ in range(3):  # warm up: thread pool started, first row groups tokenized
        next(loader)

    def draw():
        for _ in range(BATCHES):
            next(loader)

    benchmark.pedantic(draw, rounds=15, iterations=1)
    tokens_per_s = BATCHES * B * T / benchmark.stats.stats.mean
    benchmark.extra_info["tokens_per_s"] = round(tokens_per_s)
    return tokens_per_s


@pytest.mark.parametrize("threads", [2, 4])
def test_bench_train_loader_tokenize_and_pack(benchmark, setup, threads):
    dataset, tokenizer = setup
    with TrainLoader(dataset.train_files, tokenizer, B, T, threads=threads) as loader:
        print(f"\nTrainLoader threads={threads}: {measure(benchmark, loader) / 1e6:.2f}M tokens/s")


def test_bench_reference_loader_transcription(benchmark, setup):
    dataset, tokenizer = setup
    loader = reference_loader(dataset.train_files, tokenizer, B, T)
    print(f"\nreference transcription: {measure(benchmark, loader) / 1e6:.2f}M tokens/s")
