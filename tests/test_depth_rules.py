"""The depth dial against the reference's published numbers (docs/spec/reference-recipe.md).

Run: python -m pytest tests/test_depth_rules.py
"""

import dataclasses

import pytest
import torch

from baselines.nanochat import depth
from baselines.nanochat.model import GPT
from baselines.nanochat.submission import make_plan
from harness import flops
from harness.hookspecs import Run

VOCAB = 32768
RUN = Run(profile="8xh100", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=8, seed=0,
          vocab_size=VOCAB, bos_token_id=VOCAB - 9, seq_len=2048)  # fmt: skip


def meta_model(d: int) -> GPT:
    return GPT(depth.model_dims(d, VOCAB), seq_len=2048, device="meta")


@pytest.mark.parametrize(
    ("d", "width", "heads", "total_m", "scaling_m"),
    [(24, 1536, 12, 1384, 729.8), (12, 768, 6, 286.3, 110.1)],
)
def test_parameter_counts_match_the_reference(d, width, heads, total_m, scaling_m):
    dims = depth.model_dims(d, VOCAB)
    assert (dims.width, dims.num_heads) == (width, heads)
    assert round(depth.scaling_params(dims) / 1e6, 1) == scaling_m
    assert round(depth.total_params(dims) / 1e6, 1 if total_m % 1 else 0) == total_m
    # The model built from the same dims has exactly the counted parameters.
    assert sum(p.numel() for p in meta_model(d).parameters()) == depth.total_params(dims)


def test_scaling_parameters_are_the_block_matrices_and_the_head():
    model = meta_model(4)
    block_matrices = sum(p.numel() for n, p in model.blocks.named_parameters() if "ve_gate" not in n)
    assert depth.scaling_params(model.dims) == block_matrices + model.lm_head.weight.numel()


def test_d24_at_ratio_8_plans_5568_steps_of_2_to_the_20_tokens():
    h = depth.horizon(24, VOCAB, ratio=8)
    assert (h.total_batch_tokens, h.num_steps) == (2**20, 5568)
    assert round(h.tokens / 1e9, 2) == 5.84  # "5.84B tokens"
    plan = make_plan(meta_model(24), RUN, ratio=8)
    assert (plan.num_steps, plan.total_batch_tokens, plan.device_batch) == (5568, 2**20, 16)
    assert plan.grad_accum_steps(8) == 4  # "4 accumulation micro-steps on 8 GPUs"
    assert 2.7e19 < plan.flops_per_token * h.tokens < 2.9e19  # "about 2.8e19 FLOPs"


def test_d12_at_ratio_12_plans_2520_steps_of_2_to_the_19_tokens():
    h = depth.horizon(12, VOCAB, ratio=12)
    assert (h.total_batch_tokens, h.num_steps) == (2**19, 2520)
    plan = make_plan(meta_model(12), RUN, ratio=12)
    assert (plan.num_steps, plan.total_batch_tokens) == (2520, 2**19)


def test_batch_is_2_to_the_20_from_d18_to_d26():
    assert {depth.horizon(d, VOCAB, ratio=8).total_batch_tokens for d in range(18, 27, 2)} == {2**20}


def test_learning_rate_and_weight_decay_scale_as_stated():
    assert depth.batch_lr_scale(2**21) == pytest.approx(2.0)
    assert depth.width_lr_scale(1536) == pytest.approx(2**-0.5)
    # At d12 and 2^19 the weight decay is the tuned 0.28; at d24 and 2^20: 0.28 * sqrt(2) * N(d12)/N(d24).
    assert depth.muon_weight_decay(12, VOCAB, 2**19) == pytest.approx(0.28)
    assert depth.muon_weight_decay(24, VOCAB, 2**20) == pytest.approx(0.28 * 2**0.5 * 110_100_480 / 729_808_896)


def test_windows_tile_sssl_and_the_last_layer_is_full():
    assert depth.window_sizes(6, 2048) == [512, 512, 512, 2048, 512, 2048]
    assert depth.value_embed_layers(6) == [1, 3, 5] and depth.value_embed_layers(5) == [0, 2, 4]


def test_flops_per_token_follow_the_formula_by_hand():
    dims = depth.model_dims(2, 1000)  # width 128, 1 head, windows [T, T] at T=64 (last layer full, S=16)
    windows = depth.window_sizes(2, 64)
    assert windows == [16, 64]
    linear = 2 * 12 * 128 * 128 + 1000 * 128 + 12 * 1 + 24  # blocks, head, one value gate (layer 1), smear gate
    expected = 6 * linear + 12 * 1 * 128 * (16 + 64)
    assert depth.flops_per_token(dims, 64) == expected
    assert GPT(dims, seq_len=64, device="meta").flops_per_token(64) == expected


def test_plan_honours_the_smoke_caps_and_divides_the_batch_exactly():
    run = dataclasses.replace(RUN, profile="cpu", world_size=2, seq_len=256, max_steps=100, max_batch_tokens=9000)
    plan = make_plan(GPT(depth.model_dims(4, 4096), seq_len=256, device="meta"), run)
    assert plan.num_steps == 100
    assert plan.total_batch_tokens == 8192  # 9000 // (256 * 2) = 17 sequences a rank: one micro-batch of 16
    assert (plan.device_batch, plan.grad_accum_steps(2)) == (16, 1)
    assert "capped" in plan.notes


def test_plan_explains_a_batch_cap_below_one_sequence_per_rank():
    run = dataclasses.replace(RUN, seq_len=2048, max_batch_tokens=4096)
    with pytest.raises(ValueError, match="raise max_batch_tokens to at least 16384"):
        make_plan(meta_model(4), run)


def test_bad_depth_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="--depth 1 or more"):
        depth.model_dims(0, VOCAB)


def test_peak_flops_table_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("NVIDIA B200") == 2.25e15
    assert flops.peak_flops("cpu") is None
    # The record: 0.98M tokens/s on 8 H100s at d24 is "about 59% MFU" (docs/spec/reference-recipe.md, Speed and MFU).
    fpt = depth.flops_per_token(depth.model_dims(24, VOCAB), 2048)
    assert flops.mfu(fpt, 0.98e6, "NVIDIA H100 80GB HBM3", num_gpus=8) == pytest.approx(0.59, abs=0.01)
    assert torch.isfinite(torch.tensor(fpt))
