"""The training process's settings: the compile decision, the frozen collector, RNG state, host copies of the
initial state, and the process group's setup and training timeouts (two real gloo processes).

Run: python -m pytest tests/test_device.py
"""

import gc
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers_evals import free_port

from harness import device


def test_cpu_trains_eagerly_by_default_and_compiles_when_asked(monkeypatch):
    monkeypatch.delenv(device.COMPILE_ENV, raising=False)
    assert device.use_compile("cpu") is False
    monkeypatch.setenv(device.COMPILE_ENV, "1")
    assert device.use_compile("cpu") is True  # this machine has a working C++ toolchain
    monkeypatch.setenv(device.COMPILE_ENV, "0")
    assert device.use_compile("cpu") is False


def test_a_bad_compile_setting_names_the_accepted_values(monkeypatch):
    monkeypatch.setenv(device.COMPILE_ENV, "yes")
    with pytest.raises(ValueError, match="use 1 .* or 0"):
        device.use_compile("cpu")


def test_a_broken_toolchain_falls_back_to_eager_with_one_line(capsys):
    import torch._inductor.config as inductor_config

    device.compiler_works.cache_clear()
    torch._dynamo.reset()
    try:
        with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
            assert device.compiler_works("cpu") is False
    finally:
        device.compiler_works.cache_clear()
        torch._dynamo.reset()
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and notice[0].startswith("notice: torch.compile does not work on cpu")


def test_frozen_collector_leaves_cycles_alone_until_thawed():
    class Node:
        pass

    device.freeze_gc()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        before = gc.get_count()[0]
        for _ in range(10 * gc.get_threshold()[0]):  # far past the threshold that triggers a collection
            a, b = Node(), Node()
            a.other, b.other = b, a
        assert gc.get_count()[0] > before  # nothing was collected automatically
    finally:
        device.thaw_gc()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert gc.collect() > 0  # the cycles were garbage all along


def test_rng_state_restores_the_next_draws():
    state = device.rng_state("cpu")
    first = torch.rand(5)
    device.set_rng_state(state, "cpu")
    assert torch.equal(torch.rand(5), first)
    device.set_rng_state(state["cpu"], "cpu")  # a bare tensor, as older checkpoints hold
    assert torch.equal(torch.rand(5), first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rng_state_restores_the_cuda_generator_too():
    state = device.rng_state("cuda:0")
    first = torch.rand(5, device="cuda:0")
    device.set_rng_state(state, "cuda:0")
    assert torch.equal(torch.rand(5, device="cuda:0"), first)


def test_cpu_copy_is_a_detached_host_copy_that_restores_model_and_optimizer():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    saved = device.cpu_copy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    weight = saved["model"]["weight"].clone()
    assert saved["model"]["weight"].data_ptr() != model.weight.data_ptr()
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
    assert torch.equal(saved["model"]["weight"], weight)  # the copy did not follow the training
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    assert torch.equal(model.weight, weight)
    assert optimizer.state_dict()["state"][0]["step"].item() == 1


def _timeouts(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    device.init_process_group(torch.device("cpu"))
    # Setup: rank 1 is slow (4 s, as rank 0 training a tokenizer would be, scaled down); the barrier waits.
    if rank == 1:
        time.sleep(4)
    dist.barrier()
    out[f"setup{rank}"] = "ok"
    # Training: a 2 s timeout; rank 1 stalls for 6 s and rank 0's collective fails instead of waiting.
    device.set_collective_timeout(timedelta(seconds=2))
    if rank == 1:
        time.sleep(6)
    try:
        dist.all_reduce(torch.ones(1))
        out[f"train{rank}"] = "ok"
    except RuntimeError as exc:
        out[f"train{rank}"] = f"failed: {exc}"


def test_setup_waits_long_and_training_collectives_time_out():
    assert device.SETUP_TIMEOUT >= timedelta(minutes=60) and device.TRAIN_TIMEOUT <= timedelta(minutes=10)
    with mp.Manager() as manager:
        out = manager.dict()
        context = mp.spawn(_timeouts, args=(free_port(), out), nprocs=2, join=False)
        context.join(timeout=60)
        for process in context.processes:  # rank 1's own collective may still be waiting on its timeout
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        result = dict(out)
    assert result["setup0"] == result["setup1"] == "ok"
    assert result["train0"].startswith("failed"), result


def test_free_training_memory_drops_optimizer_state_and_gradients():
    from harness.sharding import Sharding

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    sharding = Sharding(model, optimizer, world_size=1, rank=0)
    sharding.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    sharding.step()
    assert optimizer.state and model.weight.grad is not None
    device.free_training_memory(optimizer, sharding)
    assert not optimizer.state and all(p.grad is None for p in model.parameters())
