"""The harness's ZeRO-2 sharding: two real gloo processes give the weights one process gives, each rank keeps
optimizer state only for what it owns, and the full state dict is the one-process state dict.

Run: python -m pytest tests/test_sharding.py

The model is the nanochat GPT at d2 with its real optimizer (Muon + AdamW, eager) and schedule, computing in fp32
and in bf16 (then the token and value embeddings are bf16 and the sharding holds two buffers, one per dtype); a
step's global batch is 4 sequences: one process runs them as 2 micro-steps of 2, two processes as 1 micro-step of
2 each. The gradients then differ at most by the order of one addition (halving is exact), so the weights after
5 steps agree to fp32 rounding, amplified at most to a bf16 rounding step in a few entries of a Muon update.
Measured: bitwise equal.
"""

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers_evals import free_port

from baselines.nanochat import depth, schedule
from baselines.nanochat.model import GPT
from baselines.nanochat.optim import build_optimizer
from harness.defaults import train_step
from harness.hookspecs import Plan, Run
from harness.sharding import Sharding, partition

STEPS, SEQUENCES, SEQ_LEN, VOCAB = 5, 4, 32, 64
RUN = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0,
          vocab_size=VOCAB, bos_token_id=0, seq_len=SEQ_LEN)  # fmt: skip
PLAN = Plan(num_steps=STEPS, total_batch_tokens=SEQUENCES * SEQ_LEN, device_batch=2, seq_len=SEQ_LEN)


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (STEPS, SEQUENCES, SEQ_LEN + 1), generator=g)


def train(rank: int, world_size: int, port: int, out: dict, dtype: str = "float32") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    run = dataclasses.replace(RUN, rank=rank, local_rank=rank, world_size=world_size, dtype=dtype)
    torch.manual_seed(0)
    model = GPT(depth.model_dims(2, VOCAB), seq_len=SEQ_LEN, compute_dtype=run.torch_dtype)
    optimizer = build_optimizer(model, total_batch_tokens=2**19, muon_weight_decay=0.2)
    sched = schedule.make_schedule(optimizer, STEPS)
    sharding = Sharding(model, optimizer, world_size, rank)
    rows = data()
    for step in range(STEPS):
        sharding.zero_grad()
        mine = rows[step].chunk(SEQUENCES // PLAN.device_batch)[rank::world_size]  # this rank's micro-batches
        train_step(model=model, batches=((r[:, :-1], r[:, 1:]) for r in mine), plan=PLAN, run=run)
        sched(step)
        sharding.step()
    full = sharding.optimizer_state_dict()
    local_state = len(optimizer.state)
    if rank == 0:
        out[world_size] = {"model": model.state_dict(), "optimizer": full, "local_state": local_state}
    else:
        out[f"local_state{rank}"] = local_state
    if world_size > 1:
        dist.destroy_process_group()


def spawn_runs(dtype: str) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(train, args=(1, free_port(), out, dtype), nprocs=1)
        mp.spawn(train, args=(2, free_port(), out, dtype), nprocs=2)
        return dict(out)


@pytest.fixture(scope="module")
def runs():
    return spawn_runs("float32")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_two_ranks_give_the_weights_of_one_rank_after_five_steps(runs, dtype):
    result = runs if dtype == "float32" else spawn_runs(dtype)
    one, two = result[1]["model"], result[2]["model"]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-5, msg=name)
    torch.manual_seed(0)
    initial = GPT(depth.model_dims(2, VOCAB), seq_len=SEQ_LEN, compute_dtype=getattr(torch, dtype)).state_dict()
    assert any(not torch.equal(one[k], initial[k]) for k in one)  # training moved the weights
    assert one["wte.weight"].dtype == getattr(torch, dtype)


def test_each_rank_keeps_optimizer_state_only_for_the_parameters_it_owns(runs):
    total = runs[1]["local_state"]
    assert runs[2]["local_state"] + runs["local_state1"] == total
    assert 0 < runs[2]["local_state"] < total


def test_the_gathered_optimizer_state_is_the_one_rank_state(runs):
    one, two = runs[1]["optimizer"], runs[2]["optimizer"]
    assert one["param_groups"] == two["param_groups"]
    assert sorted(one["state"]) == sorted(two["state"])
    for index, state in one["state"].items():
        assert state.keys() == two["state"][index].keys()
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(two["state"][index][key], value, rtol=1e-5, atol=1e-5)
            else:
                assert two["state"][index][key] == value


def test_ownership_balances_every_group_over_the_ranks():
    # d24's groups in build_optimizer's order: the AdamW head, token embedding, 12 value embeddings and scalars,
    # then the Muon groups: 96 square matrices (q, k, v, o), 24 of each MLP shape, 12 value gates.
    table = 32768 * 1536
    sizes = [[table], [table], [table] * 12, [24], [24], [24, 1, 1],
             [1536 * 1536] * 96, [6144 * 1536] * 24, [1536 * 6144] * 24, [12 * 12] * 12]  # fmt: skip
    owners = partition([[torch.empty(n, device="meta") for n in g] for g in sizes], 8)
    for group in owners[6:9]:  # each rank runs 1/8 of every Muon shape group
        assert [group.count(r) for r in range(8)] == [len(group) // 8] * 8
    tables = [r for group in owners[:3] for r in group]
    assert sorted(tables.count(r) for r in range(8)) == [1, 1, 2, 2, 2, 2, 2, 2]  # 14 over 8: off by one at most


def test_one_rank_sharding_is_plain_training():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    sharding = Sharding(model, optimizer, world_size=1, rank=0)
    before = model.weight.detach().clone()
    sharding.zero_grad()
    model(torch.ones(1, 4)).sum().backward()
    sharding.step()
    torch.testing.assert_close(model.weight, before - 0.5)
    assert sharding.optimizer_state_dict() == optimizer.state_dict()
