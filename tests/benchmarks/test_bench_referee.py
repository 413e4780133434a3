"""What splitting the referee from the training worker costs per step: the messages of one step, sent by the worker
and received and stamped by the referee.

    pytest tests/benchmarks/test_bench_referee.py --benchmark-only

Each timed step sends three messages (step_start, step_stop, metrics) over the channel (harness/channel.py); the
referee's reader thread stamps and queues them. The round trip of one step's messages is the split's per-step
cost; the target is under 1% of a smoke step (about 1 s on 2 cores at d4), that is under 10 ms. The whole-step
overhead of the harness against a bare loop, messages included, is test_bench_train.py's.
"""

from __future__ import annotations

from harness.channel import Channel, Link

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
