"""Shared helpers for the eval tests and benchmarks: the real CORE bundle, text to train a small tokenizer on, a
small random causal model, and a free port for gloo process groups.

Imported by tests/test_core_eval.py, tests/test_bpb.py, tests/test_baseline_distributed.py and tests/benchmarks/.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

import torch
import torch.nn.functional as F

BUNDLE = Path(os.environ.get("SPEEDRUN_EVAL_BUNDLE") or Path(__file__).resolve().parents[2] / "shared" / "eval_bundle")


def bundle_text():
    """A little real text to train the test tokenizer: the first lines of every task file."""
    for path in sorted((BUNDLE / "eval_data").rglob("*.jsonl")):
        with open(path) as f:
            yield from itertools.islice(f, 150)


class TinyLM(torch.nn.Module):
    """A small causal model: embedding, one causal self-attention, head. Random init, fp32."""

    def __init__(self, vocab: int, dim: int = 32):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)
        return self.head(h + F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
