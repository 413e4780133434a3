"""Tests of validation bits per byte (evals/bpb.py): hand-computed values, special tokens, gloo ranks.

pytest tests/test_bpb.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers_evals import free_port

from evals.bpb import evaluate_bpb
from harness.tokenizer import train_tokenizer

TEXT = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Bits per byte divide the loss in nats by ln 2 and by the number of bytes the targets spell.",
    "Sphinx of black quartz, judge my vow! How vexingly quick daft zebras jump.",
]


class Uniform(torch.nn.Module):
    """All-zero logits: every target costs exactly ln(V) nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


class Bigram(torch.nn.Module):
    """A random table of next-token logits: different loss for every target."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))

    def forward(self, ids):
        return self.table[ids]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT * 4, vocab_size=300)


def rows_of(tok, width: int = 17) -> torch.Tensor:
    """Documents joined with BOS between them, cut into (N, width) rows."""
    ids = [t for text in TEXT for t in tok.encode(text, prepend_bos=True)]
    n = len(ids) // width
    return torch.tensor(ids[: n * width]).view(n, width)


def test_uniform_model_gives_ln_vocab_nats_per_counted_target_by_hand(tok):
    rows = rows_of(tok)
    targets = rows[:, 1:].flatten().tolist()
    nbytes = tok.token_bytes()
    counted = [t for t in targets if t != tok.bos_token_id]
    expected = len(counted) * math.log(tok.vocab_size) / (math.log(2) * sum(nbytes[t].item() for t in counted))
    assert len(counted) < len(targets)  # some targets are BOS, and they must not count
    assert evaluate_bpb(Uniform(tok.vocab_size), rows, nbytes, device_batch=3) == pytest.approx(
        expected, rel=1e-6
    )  # fp32 loss


def test_ignored_targets_count_in_neither_sum(tok):
    rows = rows_of(tok)
    model, nbytes = Bigram(tok.vocab_size), tok.token_bytes()
    masked = rows.clone()
    masked[:, -1] = -1  # targets < 0 are ignored: equal to dropping the last column
    assert evaluate_bpb(model, masked, nbytes, 4) == pytest.approx(evaluate_bpb(model, rows[:, :-1], nbytes, 4))


def test_value_does_not_depend_on_device_batch(tok):
    rows, model, nbytes = rows_of(tok), Bigram(tok.vocab_size), tok.token_bytes()
    values = [evaluate_bpb(model, rows, nbytes, b) for b in (1, 2, 5, 100)]
    assert max(values) - min(values) < 1e-12


def test_bad_rows_are_refused_with_the_expected_shape(tok):
    with pytest.raises(ValueError, match=r"\(N, T\+1\) int64"):
        evaluate_bpb(Uniform(tok.vocab_size), torch.zeros(5, dtype=torch.int64), tok.token_bytes(), 2)
    only_bos = torch.full((2, 5), tok.bos_token_id)
    with pytest.raises(ValueError, match="no target tokens with bytes"):
        evaluate_bpb(Uniform(tok.vocab_size), only_bos, tok.token_bytes(), 2)


def _rank_main(rank: int, world: int, port: int, workdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = torch.load(Path(workdir) / "data.pt")
        value = evaluate_bpb(Bigram(data["vocab"]), data["rows"], data["bytes"], device_batch=2)
        (Path(workdir) / f"rank{rank}.json").write_text(json.dumps(value))
    finally:
        dist.destroy_process_group()


def test_three_gloo_ranks_give_the_one_rank_value(tmp_path, tok):
    rows = rows_of(tok)
    assert len(rows) % 3 != 0  # uneven split: some rank gets one row fewer
    torch.save({"vocab": tok.vocab_size, "rows": rows, "bytes": tok.token_bytes()}, tmp_path / "data.pt")
    mp.spawn(_rank_main, args=(3, free_port(), str(tmp_path)), nprocs=3)
    one = evaluate_bpb(Bigram(tok.vocab_size), rows, tok.token_bytes(), device_batch=2)
    for rank in range(3):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(one, rel=1e-12)
