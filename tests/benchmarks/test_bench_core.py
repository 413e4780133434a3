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

import pytest
import torch
from helpers_evals import BUNDLE, TinyLM, bundle_text

from evals.bundle import resolve_bundle
from evals.core import evaluate_core
from harness.tokenizer import train_tokenizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.skipif(not (BUNDLE / "core.yaml").is_file(), reason=f"no eval bundle at {BUNDLE}")


class TokenCounter:
    """The model, counting the padded tokens it is given."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.tokens = model, 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.tokens += ids.numel()
        return self.model(ids)


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer(bundle_text(), vocab_size=1024)
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
    records = sum(r.evaluated for r in result.per_task.values())
    benchmark.extra_info["records"] = records
    benchmark.extra_info["records_per_s"] = records / benchmark.stats.stats.median
    counter.tokens = 0
    evaluate()  # once more, untimed, to count one evaluation's tokens
    benchmark.extra_info["tokens_forwarded"] = counter.tokens
