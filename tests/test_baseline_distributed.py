"""Two gloo processes with the harness's sharded optimizer follow the one-process loss curve at the same global
batch.

Run: python -m pytest tests/test_baseline_distributed.py

The nanochat baseline's hooks (model, plan, Muon + AdamW, schedule) train for 8 steps of 8 sequences on a
fixed random token stream: once in one process (8 micro-steps of 1 sequence) and once in two processes
(4 micro-steps each; the harness's ``Sharding`` reduce-scatters the gradients once per step, each rank steps
the parameters it owns, and the weights are all-gathered). The loop is ``tinytrain.train``, not the
harness's. Both runs see the same sequences per step; they differ only in the order of floating-point sums,
which Muon's bf16 orthogonalisation can amplify to a rounding step of bf16 (2^-8 relative) in a few update
entries. The tolerance is 1e-3 nats per step, well below the ~0.03-0.3 nat step-to-step changes of the loss.
"""

import dataclasses
import os

import helpers_tinytrain as tinytrain
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers_evals import free_port

from baselines.nanochat import submission as baseline
from harness.hookspecs import Run

TOLERANCE = 1e-3  # nats per step; see the module docstring
RUN = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0, vocab_size=128,
          bos_token_id=119, seq_len=32, depth=2, max_steps=8, max_batch_tokens=8 * 32)  # fmt: skip


def token_stream() -> torch.Tensor:
    # A stream with structure to learn (a repeating pattern plus noise), identical in every process.
    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, 128, (37,), generator=g)
    stream = pattern.repeat(200)
    noise = torch.rand(len(stream), generator=g) < 0.2
    return torch.where(noise, torch.randint(0, 128, (len(stream),), generator=g), stream)


def train(rank: int, world_size: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    run = dataclasses.replace(RUN, rank=rank, local_rank=rank, world_size=world_size)
    # One sequence per micro-step (8 micro-steps on 1 rank, 4 on each of 2) so that gradients accumulate
    # before the reduction; this changes the module constant in this spawned process only.
    baseline.DEVICE_BATCH = 1
    torch.manual_seed(run.seed)
    losses = tinytrain.train(tinytrain.plugin_manager(baseline), run, token_stream())
    if rank == 0:
        out[world_size] = losses
    if world_size > 1:
        dist.destroy_process_group()


def test_two_gloo_processes_match_the_one_process_loss_curve():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(train, args=(1, free_port(), out), nprocs=1)
        mp.spawn(train, args=(2, free_port(), out), nprocs=2)
        single, double = out[1], out[2]
    assert len(single) == len(double) == 8
    diffs = [abs(a - b) for a, b in zip(single, double, strict=True)]
    print(f"1 vs 2 processes: max |loss difference| = {max(diffs):.2e} over {single}")
    assert max(single) - min(single) > 0.1  # the curve moves, so matching it is a real check
    assert max(diffs) < TOLERANCE, (single, double)
