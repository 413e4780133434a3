"""Records per second of the CORE eval: batched path against the one-record reference path.

    pytest tests/benchmarks/test_bench_core.py --benchmark-only

Both paths evaluate the same records of the real bundle with the same small random model (embedding, one
causal self-attention, head; 32 wide, 1024-token vocabulary, fp32) and give identical per-record answers
(tests/test_core_eval.py). ``extra_info["records_per_s"]`` is the figure to compare, for two suites: all 18
tasks (12 records each; few-shot prompts of hundreds to thousands of tokens dominate) and the 5 zero-shot
tasks (40 records each; short prompts, where the cost per forward rather than per token dominates).

``extra_info["tokens_forwarded"]`` counts the padded tokens each path feeds the model. On a CPU a forward
costs about the same per token at any batch shape, so the ratio of these counts bounds the ratio of records
per second there; the benchmark also runs on CUDA when a GPU is present, where one-record forwards leave the
device idle and batching pays.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evals.bundle import resolve_bundle
from evals.core import evaluate_core
from harness.tokenizer import train_tokenizer

BUNDLE = Path(os.environ.get("SPEEDRUN_EVAL_BUNDLE") or Path(__file__).resolve().parents[3] / "shared" / "eval_bundle")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.skipif(not (BUNDLE / "core.yaml").is_file(), reason=f"no eval bundle at {BUNDLE}")


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, dim: int = 32):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)
        return self.head(h + F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1))


class TokenCounter:
    """The model, counting the padded tokens it is given."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.tokens = model, 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.tokens += ids.numel()
        return self.model(ids)


@pytest.fixture(scope="module")
def setup():
    def text():
        for path in sorted((BUNDLE / "eval_data").rglob("*.jsonl")):
            with open(path) as f:
                yield from itertools.islice(f, 150)

    tok = train_tokenizer(text(), vocab_size=1024)
    torch.manual_seed(0)
    bundle = resolve_bundle(BUNDLE)
    suites = {
        "all18": (bundle, 12),  # 12 records leave the full 10 shots to each
        "zeroshot": (dataclasses.replace(bundle, tasks=[t for t in bundle.tasks if t.num_fewshot == 0]), 40),
    }
    return tok, TinyLM(tok.vocab_size).eval(), suites


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("suite", ["all18", "zeroshot"])
@pytest.mark.parametrize("path", ["batched", "one_record"])
def test_core_records_per_second(benchmark, setup, suite, path, device):
    tok, model, suites = setup
    bundle, per_task = suites[suite]
    counter = TokenCounter(model.to(device))

    def evaluate():
        result = evaluate_core(counter, tok, bundle, per_task, device, batched=path == "batched")
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    result = benchmark.pedantic(evaluate, rounds=3, warmup_rounds=1)
    rounds = 4  # the warm-up round counts tokens too
    records = sum(r.evaluated for r in result.per_task.values())
    benchmark.extra_info["records"] = records
    benchmark.extra_info["records_per_s"] = records / benchmark.stats.stats.median
    benchmark.extra_info["tokens_forwarded"] = counter.tokens // rounds
