"""Process-level settings of a training run: compile or not, the garbage collector, RNG state, state copies kept
off the GPU, and the process group's timeouts. Small functions for the training loop to call; see each docstring.

    use_compile(device)                  # the one place that decides whether training runs through torch.compile
    freeze_gc() ... thaw_gc()            # no collector pauses inside the timed loop
    state = rng_state(device)            # CPU and CUDA generators together; set_rng_state(state, device)
    initial = cpu_copy(model.state_dict())   # the warm-up's copy of the initial state, in host memory
    free_training_memory(optimizer, sharding)   # before the final evals: a fresh eval process needs the GPU
    init_process_group(device)           # NCCL/gloo with the long setup timeout
    set_collective_timeout(TRAIN_TIMEOUT)    # once setup is over: a hung collective fails in minutes

Run the tests: python -m pytest tests/test_device.py
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map

COMPILE_ENV = "SPEEDRUN_COMPILE"  # "1": compile wherever the toolchain works, also on CPU; "0": never

# Rank 0 verifies the data and trains the tokenizer while the other ranks wait in a barrier: minutes on a first
# run, more than NCCL's default 10-minute timeout can allow. Training collectives keep the short default, so a
# hung rank stops the run in minutes instead of an hour.
SETUP_TIMEOUT = timedelta(minutes=60)
TRAIN_TIMEOUT = timedelta(minutes=10)


# ------------------------------------------------------------------------------------------------
# Compile


def use_compile(device: torch.device | str) -> bool:
    """Whether training on ``device`` should run through torch.compile: the harness's one decision.

    CUDA: yes. CPU: no by default. Measured on this project's 2-core machine at the smoke profile (climbmix d4,
    16 x 256 tokens a step, fp32; tests/benchmarks/test_bench_compile.py and 20-step harness runs): a compiled
    step takes 0.84-1.0 s against 1.18-1.25 s eager (1.2-1.4x), about 0.2-0.3 s saved a step; but a cold
    compile (empty inductor cache: a new machine or a changed model) costs about 60 s more than eager (first
    step 47 s against 1.2 s, plus about 10 s for the toolchain check), which takes about 220 steps to pay back,
    and the smoke run has 60. With a warm cache the extra cost is about 6 s, and compiling saves 10-15 s per
    smoke run. ``SPEEDRUN_COMPILE=1`` compiles on CPU too, ``SPEEDRUN_COMPILE=0`` nowhere. Where the compiler
    toolchain does not work, one line says so and training runs eagerly.
    """
    device = torch.device(device)
    asked = os.environ.get(COMPILE_ENV)
    if asked not in (None, "", "0", "1"):
        raise ValueError(f"{COMPILE_ENV}={asked!r}: use 1 (compile) or 0 (eager), or leave it unset")
    wanted = asked == "1" if asked else device.type == "cuda"
    return wanted and compiler_works(device.type)


@functools.cache
def compiler_works(device_type: str) -> bool:
    """Compile and run a one-line function on ``device_type``; False, with a one-line notice, if that fails
    (no C++ compiler on a CPU machine, no Triton on a GPU one)."""
    try:
        x = torch.ones(8, device=device_type)
        torch.compile(lambda t: t * 2 + 1, dynamic=False)(x).sum().item()
        return True
    except Exception as exc:  # noqa: BLE001 - any toolchain failure means: run eagerly
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"notice: torch.compile does not work on {device_type} here ({reason}); training runs eagerly",
              file=sys.stderr)  # fmt: skip
        return False


# ------------------------------------------------------------------------------------------------
# The garbage collector


def freeze_gc() -> None:
    """After setup, before the timed loop: collect once, move every surviving object out of the collector's
    view and switch automatic collection off. A full collection over the millions of objects a run keeps alive
    (tensors, the tokenizer, compiled graphs) pauses a step for hundreds of ms (the reference measured ~500 ms);
    the loop creates few long-lived cycles, so nothing piles up."""
    gc.collect()
    gc.freeze()
    gc.disable()


def thaw_gc() -> None:
    """After the timed loop (evals allocate freely): automatic collection back on, frozen objects collectable."""
    gc.unfreeze()
    gc.enable()


# ------------------------------------------------------------------------------------------------
# Random number generators


def rng_state(device: torch.device | str) -> dict:
    """The CPU generator's state and, on CUDA, the device's: what dropout or sampling would draw next."""
    device = torch.device(device)
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict | torch.Tensor, device: torch.device | str) -> None:
    """Restore ``rng_state``'s result (a bare tensor, as older checkpoints hold, restores the CPU generator)."""
    device = torch.device(device)
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------------------
# State copies


def cpu_copy(state):
    """A deep copy of nested state (a state_dict: dicts, lists, tuples, tensors, numbers) with every tensor in
    host memory. The warm-up keeps the initial model and optimizer state this way: at d24 a GPU copy would hold
    5.5 GB for the whole run. ``load_state_dict`` copies it back to the device."""
    return tree_map(lambda x: x.detach().to("cpu", copy=True) if isinstance(x, torch.Tensor) else x, state)


def free_training_memory(optimizer: torch.optim.Optimizer, sharding=None) -> None:
    """After training, before the final evals: drop the optimizer's state, the gradients and the sharding's
    buffers, collect, and return the allocator's cached blocks to the driver. An eval process started on the
    same GPU (the fresh-process val_bpb and CORE) then finds the memory the training process held (at d24
    about 10 GiB of optimizer state and gradients, plus the activations' cache)."""
    optimizer.state.clear()
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None
    if sharding is not None:
        sharding.release()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Process group


def init_process_group(device: torch.device) -> None:
    """NCCL on GPUs, gloo on CPU, from torchrun's environment, with the long setup timeout."""
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device, timeout=SETUP_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=SETUP_TIMEOUT)


def set_collective_timeout(timeout: timedelta, group=None) -> None:
    """Change the timeout of the process group's collectives (default group: the whole run)."""
    from torch.distributed.distributed_c10d import _set_pg_timeout

    _set_pg_timeout(timeout, group)
