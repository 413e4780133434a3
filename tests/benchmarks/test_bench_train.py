"""Training-step benchmarks on CPU: one step of the smoke model, and the harness's overhead per step against a bare
hand-written loop running the same model, optimizer, schedule and loader.

    pytest tests/benchmarks/test_bench_train.py --benchmark-only

The smoke model is climbmix at the cpu profile's configuration (d4, 16 x 256-token rows = 4,096 tokens a step,
fp32, Muon + AdamW), built through the submission's own hooks. ``extra_info["tokens_per_s"]`` is the step figure.

Overhead: each round runs the real harness in this process (``harness.run.main``, STEPS steps, no CORE) and then the
bare loop for STEPS steps; the harness's per-step time is the median of its timed steps (from the event log's
``step_times``) plus its untimed in-loop logging per step, the bare loop's the median of its steps. Rounds alternate
so that a neighbour's load hits both alike; the figure is the median over rounds of harness / bare - 1, and the
target is at most MAX_OVERHEAD.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from harness.clock import read_events
from harness.data import get_tokenizer, prepare_dataset
from harness.hookspecs import Run
from harness.loader import TrainLoader
from harness.plugins import load_submission
from harness.profiles import PROFILES
from harness.run import main as harness_main

REPO = Path(__file__).resolve().parents[2]
SUBMISSION = REPO / "submissions" / "climbmix"
STEPS = 12  # per round, both loops
SKIP = 2  # first steps of each loop left out (allocator, loader threads starting)
MAX_OVERHEAD = 0.02  # the harness may cost at most 2% per step over a bare loop (issue 8)
PROFILE = PROFILES["cpu"]


@pytest.fixture(scope="module")
def data():
    dataset = prepare_dataset("smoke")
    return dataset, get_tokenizer(dataset, PROFILE.vocab_size)


class BareLoop:
    """climbmix's model, plan, optimizer and schedule from its hooks, trained by a plain loop (one micro-step)."""

    def __init__(self, dataset, tokenizer, steps: int, seed: int = 0):
        torch.set_num_threads(os.cpu_count() or 1)  # as harness.run does for one process
        submission = load_submission(str(SUBMISSION))
        run = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=seed,
                  vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id, seq_len=PROFILE.seq_len,
                  depth=PROFILE.default_depth, max_steps=steps, max_batch_tokens=PROFILE.max_batch_tokens)  # fmt: skip
        torch.manual_seed(seed)
        hook = submission.hook
        self.model = hook.build_model(run=run)
        self.plan = hook.plan_training(model=self.model, run=run)
        assert self.plan.grad_accum_steps(1) == 1, "the bare loop is written for one micro-step per step"
        self.optimizer = hook.build_optimizer(model=self.model, plan=self.plan, run=run)
        self.schedule = hook.build_schedule(optimizer=self.optimizer, plan=self.plan, run=run)
        self.loader = TrainLoader(dataset.train_files, tokenizer, self.plan.device_batch, self.plan.seq_len, seed=seed)

    def step(self, step: int) -> float:
        inputs, targets = next(self.loader)
        loss = self.model(inputs, targets)
        loss.backward()
        self.schedule(step)
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        return loss.item()

    def timed_steps(self, steps: int) -> list[float]:
        times = []
        for step in range(steps):
            began = time.perf_counter()
            self.step(step)
            times.append(time.perf_counter() - began)
        return times


def test_bench_one_training_step_of_the_smoke_model(benchmark, data):
    loop = BareLoop(*data, steps=1000)
    counter = iter(range(10**6))
    benchmark.pedantic(lambda: loop.step(next(counter)), rounds=15, warmup_rounds=2)
    benchmark.extra_info["tokens_per_s"] = round(loop.plan.total_batch_tokens / benchmark.stats.stats.median)
    loop.loader.close()


def harness_step_seconds(out: Path) -> float:
    """Median timed step plus the untimed in-loop logging per step, from a harness run's event log."""
    events = read_events(out / "events.jsonl")
    times = next(e["value"] for e in events if e["event"] == "step_times")
    segment = [e["value"] for e in events if e["event"] == "train_segment"][-1]
    return statistics.median(times[SKIP:]) + segment["log_s"] / segment["steps"]


def test_bench_harness_overhead_per_step_against_a_bare_loop(benchmark, data, tmp_path):
    harness_s, bare_s, ratios = [], [], []

    def one_round():
        out = tmp_path / f"round{len(ratios)}"
        argv = [str(SUBMISSION), "--profile", "cpu", "--max-steps", str(STEPS), "--no-core", "--out", str(out)]
        assert harness_main(argv) == 0, (out / "record.json").read_text()
        harness_s.append(harness_step_seconds(out))
        loop = BareLoop(*data, steps=STEPS)
        loop.step(0)  # the harness's cpu profile makes one untimed warm-up step too
        bare_s.append(statistics.median(loop.timed_steps(STEPS)[SKIP:]))
        loop.loader.close()
        ratios.append(harness_s[-1] / bare_s[-1])

    benchmark.pedantic(one_round, rounds=5, iterations=1)
    overhead = statistics.median(ratios) - 1
    benchmark.extra_info.update(
        harness_step_s=round(statistics.median(harness_s), 5),
        bare_step_s=round(statistics.median(bare_s), 5),
        overhead=round(overhead, 4),
        ratios=[round(r, 4) for r in ratios],
    )
    print(f"\nharness {statistics.median(harness_s):.4f} s/step, bare {statistics.median(bare_s):.4f} s/step: "
          f"overhead {overhead:+.2%} (rounds: {', '.join(f'{r - 1:+.2%}' for r in ratios)})")  # fmt: skip
    assert overhead <= MAX_OVERHEAD, f"the harness costs {overhead:.1%} per step over a bare loop"
