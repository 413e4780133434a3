"""harness.memory: per-GPU memory estimates on the meta device against hand arithmetic, the d24 plans of the
baseline and climbmix on 8xh100, the refusal of a plan that does not fit, and (with a GPU) the real peak.

Run: python -m pytest tests/test_memory.py
"""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from harness import memory

B, T, D, V, H = 4, 64, 128, 256, 2  # micro-batch, sequence length, width, vocabulary, heads

TINY = f'''
import torch
import torch.nn.functional as F
from harness import hookimpl
from harness.hookspecs import Plan


class Tiny(torch.nn.Module):
    """Embedding, head, cross entropy: every saved tensor is derivable by hand."""

    def __init__(self, device):
        super().__init__()
        self.emb = torch.nn.Embedding({V}, {D}, device=device)
        self.head = torch.nn.Linear({D}, {V}, bias=False, device=device)

    def forward(self, idx, targets=None):
        logits = self.head(self.emb(idx))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, {V}), targets.view(-1))


@hookimpl
def build_model(run):
    return Tiny(run.device)


@hookimpl
def plan_training(run):
    return Plan(num_steps=1, total_batch_tokens={B * T} * run.world_size, device_batch={B}, seq_len={T})


@hookimpl
def build_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3)
'''


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "submission.py").write_text(textwrap.dedent(TINY))
    return str(folder)


def test_tiny_model_estimate_equals_the_hand_count(tiny):
    e = memory.estimate(tiny, "cpu", world_size=1)
    weights = 2 * V * D * 4  # embedding and head, float32
    assert (e.parameters, e.gradients, e.gradient_shard) == (weights, weights, 0)
    assert e.optimizer_state == 2 * weights + 2 * 4  # AdamW: two moments per weight and a 0-D float step each
    # Saved for the backward: the token ids (the embedding's indices; the targets are the same tensor), the
    # embedding output (the head's input) and log_softmax's output; plus the 0-D loss and nll's total weight.
    assert e.activations == B * T * 8 + B * T * D * 4 + B * T * V * 4 + 2 * 4
    assert e.workspace == 2 * B * T * V * 4  # twice the largest saved tensor
    assert e.micro_batch == (B, T) and e.fits


def test_with_two_ranks_each_holds_half_the_optimizer_state_and_a_gradient_shard(tiny):
    e = memory.estimate(tiny, "cpu", world_size=2)
    one_weight = V * D * 4
    assert e.gradients == 2 * one_weight and e.gradient_shard == one_weight  # each rank owns one of the two
    assert e.optimizer_state == 2 * one_weight + 4 and e.optimizer_state_total == 2 * (2 * one_weight + 4)


class NormAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, D, device="meta")

    def forward(self, idx, targets):
        n = F.rms_norm(self.emb(idx), (D,))
        q = n.view(B, T, H, D // H).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q, is_causal=True).mean()


def test_attention_and_rmsnorm_count_what_their_fused_gpu_kernels_save():
    # By hand: ids (int64); the norm's input and one float32 per row (not float32 copies); the norm's output
    # (q = k = v, one storage), the attention output and one float32 per query row per head (not T x T scores).
    idx = torch.zeros(B, T, dtype=torch.long, device="meta")
    saved, largest = memory.saved_activations(NormAttention(), idx, idx)
    expected = B * T * 8 + B * T * D * 4 + B * T * 4 + B * T * D * 4 + B * T * D * 4 + B * H * T * 4 + 4
    assert saved == expected and largest == B * T * D * 4


def test_baseline_and_climbmix_at_d24_on_8xh100_print_their_estimate_and_fit(capsys):
    for submission in ("baselines/nanochat", "submissions/climbmix"):
        assert memory.main([submission, "--profile", "8xh100"]) == 0
        out = capsys.readouterr().out
        assert "d24 on 8xh100" in out and "(8 ranks, ZeRO-2)" in out and "micro-step 16 x 2048" in out
        assert "fits" in out and "DOES NOT FIT" not in out
    e = memory.estimate("submissions/climbmix", "8xh100")
    # d24: 730M float32 weights and 654M bf16 embedding weights (the reference stores those in bf16).
    assert e.parameters == pytest.approx(730e6 * 4 + 654e6 * 2, rel=0.01)
    assert e.optimizer_state < e.optimizer_state_total / 6  # the largest rank's share of 8


def test_a_plan_that_does_not_fit_is_refused_with_its_numbers_and_the_fix(capsys):
    assert memory.main(["submissions/climbmix", "--profile", "8xh100", "--depth", "32"]) == 1
    err = capsys.readouterr().err
    assert "climbmix d32 on 8xh100 needs about" in err and "GiB per GPU, more than its 79.6 GiB" in err
    assert "activations" in err and "Fix: lower device_batch in plan_training (at most about" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_estimate_is_within_a_fifth_of_the_measured_peak_on_a_gpu():
    from baselines.nanochat.gpucheck import (
        measured_peak,  # one micro-step of climbmix on this GPU, as baselines.nanochat.gpucheck runs
    )

    estimate, peak = measured_peak("submissions/climbmix", depth=4, steps=2)
    assert peak == pytest.approx(estimate.allocated, rel=0.2)
