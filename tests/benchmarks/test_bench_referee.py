"""What splitting the referee from the training worker costs: per step, the messages of one step, sent by the worker
and received and stamped by the referee; per run, the untimed phases the split adds (the probe, the export check
and the export, the eval process's program load), measured on a real short run.

    pytest tests/benchmarks/test_bench_referee.py --benchmark-only

Each timed step sends three messages (step_start, step_stop, metrics) over the channel (harness/channel.py); the
referee's reader thread stamps and queues them. The round trip of one step's messages is the split's per-step
cost; the target is under 1% of a smoke step (about 1 s on 2 cores at d4), that is under 10 ms. The whole-step
overhead of the harness against a bare loop, messages included, is test_bench_train.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.channel import Channel, Link

REPO = Path(__file__).resolve().parents[2]

TARGET_S = 0.01  # 1% of the cpu profile's ~1 s step


def test_bench_one_steps_messages_from_worker_to_referee(benchmark, monkeypatch):
    channel = Channel()
    for key, value in channel.env.items():
        monkeypatch.setenv(key, value)
    link = Link.from_env()
    counter = iter(range(10**9))

    def one_step():
        step = next(counter)
        link.send("step_start", step=step)
        link.send("step_stop", step=step, seconds=0.95)
        link.send("metrics", step=step, loss=7.25, lr_mult=1.0, momentum=0.95)
        for _ in range(3):
            assert channel.next(timeout=5) is not None

    benchmark.pedantic(one_step, rounds=200, warmup_rounds=10)
    median = benchmark.stats.stats.median
    benchmark.extra_info["step_messages_us"] = round(median * 1e6, 1)
    print(f"\none step's messages, worker to referee: {median * 1e6:.0f} us (target < {TARGET_S * 1e3:.0f} ms)")
    link.close()
    channel.close()
    assert median < TARGET_S


def test_bench_a_short_runs_wall_time_and_where_the_untimed_seconds_go(benchmark, tmp_path):
    """A d2 run of 2 steps without CORE (val_bpb still runs in the eval process): its wall time, and per phase on
    the referee's clock what is not training. The probe, build (with the export check), export and eval phases
    are where the split's per-run cost sits; the eval process and the training worker start while the probe runs.
    """
    env = {**os.environ, "WANDB_MODE": "disabled"}
    outs = iter(range(10**6))
    records = []

    def one_run():
        out = tmp_path / f"run{next(outs)}"
        cmd = [sys.executable, "-m", "harness.run", "submissions/climbmix", "--profile", "cpu", "--depth", "2",
               "--max-steps", "2", "--no-core", "--out", str(out)]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
        records.append(json.loads((out / "record.json").read_text()))

    benchmark.pedantic(one_run, rounds=3, warmup_rounds=1)
    last = records[-1]
    assert last["status"] == "finished"
    untimed = {name: round(s, 2) for name, s in sorted(last["phases"].items()) if name not in ("train", "log")}
    benchmark.extra_info.update(command_s=round(benchmark.stats.stats.median, 2), record_wall_s=last["wall_time_s"],
                                train_s=round(last["phases"]["train"], 2), untimed_s=untimed)  # fmt: skip
    print(
        f"\na d2 2-step run: {benchmark.stats.stats.median:.1f} s for the command, {last['wall_time_s']:.1f} s on "
        f"the referee's clock, of which training {last['phases']['train']:.1f} s; untimed phases (s): {untimed}"
    )
