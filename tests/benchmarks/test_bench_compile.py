"""torch.compile on CPU: a training step of the smoke model compiled against eager, and what the compile costs.

    pytest tests/benchmarks/test_bench_compile.py --benchmark-only

The model is climbmix at the cpu profile's configuration (d4, T=256, 16 x 256 = 4,096 tokens a step, fp32,
Muon + AdamW, the real schedule), built through the submission's hooks; ``SPEEDRUN_COMPILE`` chooses compiled or
eager exactly as a harness run would (``harness.device.use_compile``).

- ``test_bench_training_step[eager|compiled]``: steady per-step time in this process (the compiled one after its
  first step). ``extra_info["first_step_s"]`` is the first step, compilation included.
- ``test_bench_compile_cost``: the first step in fresh processes: eager, compiled with an empty inductor cache
  (cold: a new machine, or a changed model) and compiled again with the cache that run left (warm). From these
  and the steady times, ``extra_info["break_even_steps"]``: how many steps a cold compile needs to pay for itself.
  ``harness.device.use_compile`` keeps CPU runs eager by default because the smoke run's 60 steps are fewer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.hookspecs import Run
from harness.plugins import load_submission
from harness.profiles import PROFILES

REPO = Path(__file__).resolve().parents[2]
PROFILE = PROFILES["cpu"]
STEPS = 12


def smoke_step(compiled: bool):
    """(step(i) -> loss, first step seconds) for climbmix at the cpu profile, compiled or eager."""
    os.environ["SPEEDRUN_COMPILE"] = "1" if compiled else "0"
    torch.set_num_threads(os.cpu_count() or 1)
    submission = load_submission(str(REPO / "submissions" / "climbmix"))
    run = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0,
              vocab_size=PROFILE.vocab_size, bos_token_id=0, seq_len=PROFILE.seq_len, depth=PROFILE.default_depth,
              max_steps=1000, max_batch_tokens=PROFILE.max_batch_tokens)  # fmt: skip
    torch.manual_seed(0)
    hook = submission.hook
    model = hook.build_model(run=run)
    plan = hook.plan_training(model=model, run=run)
    optimizer = hook.build_optimizer(model=model, plan=plan, run=run)
    schedule = hook.build_schedule(optimizer=optimizer, plan=plan, run=run)
    assert model.use_compile is compiled
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, run.vocab_size, (plan.device_batch, plan.seq_len + 1), generator=generator)

    def step(i: int) -> float:
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        schedule(i)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss.item()

    began = time.perf_counter()
    step(0)
    return step, time.perf_counter() - began


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_bench_training_step(benchmark, mode, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_COMPILE", "1" if mode == "compiled" else "0")
    torch._dynamo.reset()
    step, first = smoke_step(mode == "compiled")
    counter = iter(range(1, 10**6))
    benchmark.pedantic(lambda: step(next(counter)), rounds=STEPS, warmup_rounds=1)
    benchmark.extra_info.update(first_step_s=round(first, 3), step_s=round(benchmark.stats.stats.median, 4))
    torch._dynamo.reset()


FIRST_STEP = """
import json, sys
sys.path.insert(0, {tests!r})
from benchmarks.test_bench_compile import smoke_step
step, first = smoke_step({compiled})
print(json.dumps({{"first_step_s": first}}))
"""


def first_step_in_fresh_process(compiled: bool, cache: Path) -> float:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    code = FIRST_STEP.format(tests=str(REPO / "tests"), compiled=compiled)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["first_step_s"]


def test_bench_compile_cost(benchmark, tmp_path):
    cache = tmp_path / "inductor"
    times = {}

    def measure():
        times["eager"] = first_step_in_fresh_process(False, cache)
        times["cold"] = first_step_in_fresh_process(True, cache)  # the cache starts empty
        times["warm"] = first_step_in_fresh_process(True, cache)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    step_eager, _ = smoke_step(False)
    eager_s = min(_timed(step_eager) for _ in range(3))
    step_compiled, _ = smoke_step(True)
    compiled_s = min(_timed(step_compiled) for _ in range(3))
    saved_per_step = eager_s - compiled_s
    cold_cost = times["cold"] - times["eager"]
    benchmark.extra_info.update(
        eager_first_step_s=round(times["eager"], 2),
        cold_compile_first_step_s=round(times["cold"], 2),
        warm_compile_first_step_s=round(times["warm"], 2),
        eager_step_s=round(eager_s, 3),
        compiled_step_s=round(compiled_s, 3),
        break_even_steps=round(cold_cost / saved_per_step) if saved_per_step > 0 else None,
        smoke_run_steps=PROFILE.max_steps,
    )
    print(f"\n{benchmark.extra_info}")


def _timed(step) -> float:
    began = time.perf_counter()
    step(1)
    return time.perf_counter() - began
