"""The GPT-2 baseline: a second architecture served by the same contract.

Run: python -m pytest tests/test_gpt2_baseline.py
"""

import dataclasses
import math

import helpers_tinytrain as tinytrain
import pytest
import torch

from baselines.gpt2.model import GPT2
from baselines.gpt2.submission import lr_multiplier
from harness.hookspecs import Run
from harness.plugins import load_submission

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

RUN = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0, vocab_size=512,
          bos_token_id=503, seq_len=64, depth=2, max_steps=10, max_batch_tokens=1024)  # fmt: skip


def test_d12_has_gpt2_smalls_124m_parameters():
    # GPT-2 small: 12 layers, width 768, 1024 positions, vocab 50257, tied embeddings -> 124,439,808.
    model = GPT2(depth=12, vocab_size=50257, max_len=1024)
    assert (model.width, model.num_heads) == (768, 12)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


def test_embeddings_are_tied_and_every_parameter_is_finite():
    model = GPT2(depth=2, vocab_size=512, max_len=256)
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        model.wte.weight[7] = 0  # the output head is the token embedding: token 7's logit becomes exactly 0
    assert (model(x)[..., 7] == 0).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.wpe.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.blocks[0].c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.05)


def test_gpt2_overrides_every_planning_hook_of_the_baseline():
    sub = load_submission("baselines/gpt2")
    assert sub.overrides == ["build_model", "build_optimizer", "build_schedule", "plan_training", "select_dataset"]
    model = sub.hook.build_model(run=RUN)
    assert isinstance(model, GPT2) and model.max_len == 4 * RUN.seq_len
    plan = sub.hook.plan_training(model=model, run=RUN)
    assert (plan.num_steps, plan.total_batch_tokens, plan.device_batch) == (10, 1024, 16)
    optimizer = sub.hook.build_optimizer(model=model, plan=plan, run=RUN)
    assert isinstance(optimizer, torch.optim.AdamW)
    # Weight decay only on matrices; the learning rate follows 6e-4 * 768 / width.
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.dim() == 2}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(6e-4 * 768 / 128)
    schedule = sub.hook.build_schedule(optimizer=optimizer, plan=plan, run=RUN)
    assert schedule(0) == {"lr_mult": 1.0}  # 2% of 10 steps rounds to a one-step warmup


def test_cosine_schedule_decays_to_ten_percent():
    assert lr_multiplier(0, 1000) == pytest.approx(1 / 20)
    assert lr_multiplier(20, 1000) == pytest.approx(1.0)
    assert lr_multiplier(510, 1000) == pytest.approx(0.55)  # halfway through the decay: 0.1 + 0.9 / 2
    assert lr_multiplier(1000, 1000) == pytest.approx(0.1)


def test_gpt2_refuses_sequences_beyond_its_learned_positions():
    with pytest.raises(ValueError, match="longer than the 32 learned positions"):
        GPT2(depth=1, vocab_size=16, max_len=32)(torch.zeros(1, 33, dtype=torch.long))


def test_training_on_english_makes_the_loss_fall_clearly(eval_bundle_dir):
    tokenizer, tokens, unigram_entropy = tinytrain.lambada_tokens(eval_bundle_dir, vocab_size=1024)
    run = dataclasses.replace(RUN, vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id,
                              seq_len=128, max_steps=30, max_batch_tokens=8192)  # fmt: skip
    torch.manual_seed(0)
    losses = tinytrain.train(load_submission("baselines/gpt2").pm, run, tokens)
    final = sum(losses[-5:]) / 5
    # From ln(1024) = 6.93 to the unigram entropy (6.05) in 30 steps: GPT-2's settings learn the token
    # frequencies this fast, not yet the context (the nanochat recipe does; see test_nanochat_model.py).
    assert losses[0] > 6.8
    assert final < losses[0] - 0.75, losses
    assert final < unigram_entropy + 0.1, losses
