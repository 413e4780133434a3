"""Muon + AdamW and the schedule of the nanochat baseline, against references and hand-derived values.

Run: python -m pytest tests/test_nanochat_optim.py
"""

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from baselines.nanochat import depth, schedule
from baselines.nanochat.model import GPT
from baselines.nanochat.optim import (
    POLAR_EXPRESS,
    MuonAdamW,
    build_optimizer,
    iteration_dtype,
    muon_update,
    orthogonalize,
)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 192)])
def test_orthogonalisation_maps_random_matrices_to_singular_values_near_one(shape):
    torch.manual_seed(0)
    g = torch.randn(4, *shape)  # Gaussian, aspect >= 2: condition number <= 5.8 (Marchenko-Pastur)
    out = orthogonalize(g, dtype=torch.bfloat16)  # the reference's (and our GPUs') iteration
    assert out.dtype == torch.bfloat16
    sv = torch.linalg.svdvals(out.float())
    # Five Polar Express steps in bf16 leave singular values within about +-15% of 1 at this conditioning.
    assert sv.min() > 0.8 and sv.max() < 1.2
    # ... and the result is close to the exact polar factor U V^T: the relative distance is about the RMS of
    # the singular values' distance from 1 (measured 0.0995-0.1003 for these shapes).
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    assert ((out.float() - polar).norm() / polar.norm()) < 0.11


def test_orthogonalisation_divides_by_1_01_times_the_frobenius_norm_first():
    # Hand-derived: [[1]] has Frobenius norm 1, so one Polar Express step maps it to p(x0) = a x0 + b x0^3 + c x0^5
    # with x0 = 1/1.01 (the reference's factor): 1.362, where 1.02 would give 1.192. bf16 keeps ~2 decimals.
    a, b, c = POLAR_EXPRESS[0]

    def p(x0: float) -> float:
        return a * x0 + b * x0**3 + c * x0**5

    out = orthogonalize(torch.ones(1, 1), steps=1, dtype=torch.bfloat16).float().item()
    assert out == pytest.approx(p(1 / 1.01), abs=0.02)
    assert abs(out - p(1 / 1.01)) < abs(out - p(1 / 1.02)) / 5


def test_a_cpu_iterates_in_float32_and_agrees_with_the_gpus_bfloat16_iteration():
    # Most CPUs emulate bfloat16 matmuls (80 times slower than float32 on our 2-core machines), so the CPU
    # profile iterates in float32; a GPU keeps the reference's bfloat16. Same polynomial, so the two results
    # differ by bfloat16's rounding (measured: 5% relative), and float32 lands nearer the exact polar factor.
    torch.manual_seed(0)
    g = torch.randn(4, 64, 256)
    out, gpu_like = orthogonalize(g), orthogonalize(g, dtype=torch.bfloat16).float()
    assert out.dtype == torch.float32 and iteration_dtype(torch.device("cuda")) == torch.bfloat16
    assert (out - gpu_like).norm() / out.norm() < 0.06
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    assert (out - polar).norm() < (gpu_like - polar).norm()


def test_orthogonalisation_ignores_the_scale_of_its_input():
    torch.manual_seed(0)
    g = torch.randn(32, 64)
    # A power-of-two scale is exact in bf16, so only the normalisation sees it.
    bf16 = torch.bfloat16
    assert torch.allclose(orthogonalize(g, dtype=bf16).float(), orthogonalize(1024 * g, dtype=bf16).float(), atol=1e-2)


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(depth.model_dims(2, 64), seq_len=16)


def test_groups_hold_every_parameter_once_with_the_reference_learning_rates():
    model = tiny_model()  # width 128: w = (128/768)^-0.5 = sqrt(6); batch 2^19: no batch scaling
    opt = build_optimizer(model, total_batch_tokens=2**19)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    lr = {g["name"]: g["lr"] for g in opt.param_groups}
    w = math.sqrt(6)
    assert lr["lm_head"] == pytest.approx(0.008 * w)
    assert lr["token_embedding"] == pytest.approx(0.3 * w)
    assert lr["value_embeddings"] == pytest.approx(0.15 * w)
    assert (lr["resid_lambdas"], lr["x0_lambdas"], lr["smear_backout"]) == pytest.approx((0.005, 0.5, 0.2))
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    # q, k, v, o and the MLP's two matrices of both blocks plus the one value-embedding gate go to Muon.
    assert sum(len(g["params"]) for g in muon) == 2 * 6 + 1
    assert {g["lr"] for g in muon} == {0.02}
    # At 2^21 tokens every rate but smear/backout doubles (sqrt(4)).
    lr4 = {g["name"]: g["lr"] for g in build_optimizer(model, total_batch_tokens=2**21).param_groups}
    assert lr4["lm_head"] == pytest.approx(2 * lr["lm_head"]) and lr4["smear_backout"] == lr["smear_backout"]


def test_adamw_groups_match_torch_adamw_on_a_toy_problem():
    model = tiny_model()
    ours = build_optimizer(model, total_batch_tokens=2**19)
    adamw_groups = [g for g in ours.param_groups if g["kind"] == "adamw"]
    originals = [[p.detach().clone().requires_grad_() for p in g["params"]] for g in adamw_groups]
    reference = torch.optim.AdamW(
        [
            dict(params=ps, lr=g["lr"], betas=g["betas"], eps=g["eps"], weight_decay=g["weight_decay"])
            for ps, g in zip(originals, adamw_groups, strict=True)
        ]  # fmt: skip
    )
    torch.manual_seed(1)
    x = torch.randint(0, 64, (2, 16))
    for _ in range(5):
        model(x, x.roll(1, 1)).backward()
        for ps, g in zip(originals, adamw_groups, strict=True):
            for p, q in zip(ps, g["params"], strict=True):
                p.grad = q.grad.clone()
        ours.step()
        reference.step()
        ours.zero_grad()
    # The embeddings step by up to their lr (0.73) a step, where one float32 rounding is 6e-8; five steps whose
    # operations run in another order than torch's may differ by a few roundings. A wrong formula differs by 1e-2.
    for ps, g in zip(originals, adamw_groups, strict=True):
        for p, q in zip(ps, g["params"], strict=True):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-6)


def test_muon_with_zero_gradient_applies_exactly_the_cautious_weight_decay():
    # Zero gradient -> zero update, so the cautious mask (update * p >= 0) is all true and p <- p * (1 - lr*wd*s),
    # with s = sqrt(max(1, rows/cols)) = 2 for a 4:1 matrix.
    p = torch.randn(1, 64, 16)
    before = p.clone()
    muon_update(p, torch.zeros_like(p), torch.zeros_like(p), torch.zeros(1, 64, 1), lr=0.01, momentum=0.95,
                weight_decay=0.5, beta2=0.9, steps=5)  # fmt: skip
    torch.testing.assert_close(p, before * (1 - 0.01 * 0.5 * 2))


def test_muon_step_moves_each_matrix_by_an_orthogonal_update_of_norm_lr_sqrt_min_dim():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(32, 64))
    opt = MuonAdamW([dict(params=[weight], kind="muon", lr=0.02, momentum=0.0, weight_decay=0.0)])
    before = weight.detach().clone()
    weight.grad = torch.randn(32, 64)
    opt.step()
    delta = (before - weight.detach()) / 0.02
    sv = torch.linalg.svdvals(delta)
    # momentum 0: the update is the orthogonalised gradient (NorMuon rescales rows but keeps the norm, ~sqrt(32)).
    assert delta.norm() == pytest.approx(math.sqrt(32), rel=0.05)
    assert sv.max() / sv.min() < 2.0


def test_muon_groups_refuse_mixed_shapes_with_a_clear_message():
    with pytest.raises(ValueError, match="2-D matrices of one shape"):
        MuonAdamW([dict(params=[torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(3, 3))],
                        kind="muon", lr=0.02)])  # fmt: skip


def test_schedule_values_at_landmark_steps():
    n = 5568
    assert schedule.lr_multiplier(0, n) == pytest.approx(1 / 40)
    assert schedule.lr_multiplier(39, n) == 1.0
    warmdown_start = n - round(0.65 * n)  # 1949
    assert schedule.lr_multiplier(warmdown_start, n) == 1.0
    assert schedule.lr_multiplier(n, n) == pytest.approx(0.05)  # the end of the linear warmdown
    assert schedule.muon_momentum(0, n) == 0.85 and schedule.muon_momentum(200, n) == pytest.approx(0.91)
    assert schedule.muon_momentum(400, n) == schedule.muon_momentum(warmdown_start, n) == 0.97
    assert schedule.muon_momentum(n, n) == pytest.approx(0.90)
    assert schedule.weight_decay_multiplier(n // 2, n) == pytest.approx(0.5)


def test_schedule_sets_every_group_and_reports_what_it_set():
    model = tiny_model()
    opt = build_optimizer(model, total_batch_tokens=2**19, muon_weight_decay=0.28)
    sched = schedule.make_schedule(opt, num_steps=100)
    out = sched(0)  # short run: warmup over 10% of the steps
    assert out == {"lr_mult": pytest.approx(0.1), "muon_momentum": 0.85, "muon_wd": 0.28}
    assert all(g["lr"] == pytest.approx(0.1 * g["initial_lr"]) for g in opt.param_groups)
    assert all(g["momentum"] == 0.85 for g in opt.param_groups if g["kind"] == "muon")


def test_compiled_updates_compile_once_per_shape_group_and_never_again_over_20_steps_of_the_schedule():
    # The schedule changes lr, momentum and weight decay every step and the Adam step count grows: passed as
    # Python numbers each new value was a new guard, a recompile, and after dynamo's limit an eager fallback.
    # CompileCounter is torch's own counting backend (eager execution); any recompile after step 0 raises.
    torch._dynamo.reset()
    counter = CompileCounter()
    torch.manual_seed(0)
    model = GPT(depth.model_dims(4, 256), seq_len=32)  # d4: the 4 Muon shape groups of d24
    opt = build_optimizer(model, total_batch_tokens=2**19, muon_weight_decay=0.28, compile_backend=counter)
    sched = schedule.make_schedule(opt, num_steps=20)
    x = torch.randint(0, 256, (2, 32))
    frames = []
    for step in range(20):
        model(x, x.roll(1, 1)).backward()
        sched(step)
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            opt.step()
        opt.zero_grad(set_to_none=True)
        frames.append(counter.frame_count)
    # Muon: (256, 256) q/k/v/o, (1024, 256), (256, 1024), (2, 12) value gates. AdamW: (256, 256) head and
    # embeddings, (4,) residual and x0 scalars, (1, 24) smear gate, (1,) smear and backout scalars.
    assert frames == [8] * 20
    torch._dynamo.reset()
