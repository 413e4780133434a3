"""The nanochat GPT: initialisation, attention paths, precision fallbacks, and training on English text.

Run: python -m pytest tests/test_nanochat_model.py
"""

import math
import warnings

import helpers_tinytrain as tinytrain
import pytest
import torch
import torch.nn.functional as F

from baselines.nanochat import depth
from baselines.nanochat.fp8 import fp8_linear, fp8_supported
from baselines.nanochat.model import GPT, attend, attention_masks, window_mask
from harness.hookspecs import Run
from harness.plugins import load_submission

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

VOCAB = 256


def small_model(d: int = 4, seq_len: int = 32, dtype=torch.float32) -> GPT:
    torch.manual_seed(0)
    return GPT(depth.model_dims(d, VOCAB), seq_len=seq_len, compute_dtype=dtype)


def test_every_parameter_is_finite_and_initialised_as_stated():
    # Parameters are allocated with torch.empty; NaN or garbage here means one was never initialised.
    model = small_model(d=4)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    width = model.dims.width
    assert model.wte.weight.std().item() == pytest.approx(0.8, rel=0.02)
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.02)
    bound = math.sqrt(3 / width)
    assert model.blocks[0].attn.c_q.weight.abs().max() <= bound
    assert model.blocks[0].mlp.c_fc.weight.abs().max() <= 0.4 * bound
    assert all((b.attn.c_proj.weight == 0).all() and (b.mlp.c_proj.weight == 0).all() for b in model.blocks)
    torch.testing.assert_close(model.resid_lambdas.data, torch.tensor([1.15, 1.15 - 0.1 / 3, 1.05 + 0.1 / 3, 1.05]))
    torch.testing.assert_close(model.x0_lambdas.data, torch.tensor([0.20, 0.15, 0.10, 0.05]))
    assert (model.smear_lambda.item(), model.backout_lambda.item()) == (0.0, pytest.approx(0.2))


def test_untrained_model_predicts_nearly_uniformly():
    # The head starts at N(0, 0.001), so the first loss is ln(vocab) to about three decimals.
    model = small_model()
    x = torch.randint(0, VOCAB, (2, 32))
    assert model(x, x).item() == pytest.approx(math.log(VOCAB), abs=5e-3)


def reference_attention(q, k, v, window):
    """Softmax attention written out by hand, with the causal sliding window as a -inf mask."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~window_mask(q.size(-2), window, q.device), float("-inf"))
    return scores.softmax(-1) @ v


def test_sliding_window_attention_equals_a_masked_full_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 200, 16) for _ in range(3))
    windows = [17, 50, 200]  # 200 = full causal, which takes SDPA's is_causal path
    for window, mask in zip(windows, attention_masks(200, windows, q.device, use_flex=False), strict=True):
        torch.testing.assert_close(attend(q, k, v, mask), reference_attention(q, k, v, window), atol=1e-5, rtol=0)


def test_flex_attention_block_mask_gives_the_same_sliding_window():
    # The CUDA path, run here uncompiled (slow: ~3 s a call on CPU, so one window that crosses the
    # 128-token block boundary). Compiled on GPU it computes the same function.
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 200, 16) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        (mask,) = attention_masks(200, [17], q.device, use_flex=True)
        torch.testing.assert_close(attend(q, k, v, mask), reference_attention(q, k, v, 17), atol=1e-5, rtol=0)


def test_logits_are_float32_softcapped_and_the_loss_ignores_minus_one():
    model = small_model()
    with torch.no_grad():
        model.lm_head.weight.normal_(std=1.0)  # large logits, so the cap matters
    x = torch.randint(0, VOCAB, (2, 32))
    logits = model(x)
    assert logits.dtype == torch.float32 and logits.abs().max() < 15.0
    assert logits.abs().max() > 10.0
    targets = x.roll(-1, 1)
    targets[:, -5:] = -1
    expected = F.cross_entropy(logits[:, :-5].reshape(-1, VOCAB), targets[:, :-5].reshape(-1))
    torch.testing.assert_close(model(x, targets), expected, rtol=1e-5, atol=1e-5)


def test_forward_is_causal_and_accepts_four_times_the_training_length():
    model = small_model(seq_len=32)
    with torch.no_grad():
        for p in model.parameters():  # zero output projections would hide any leak through attention
            p.add_(0.02 * torch.randn_like(p))
        model.smear_lambda.fill_(1.0)
    x = torch.randint(0, VOCAB, (1, 128))
    y = x.clone()
    y[:, 100:] = (y[:, 100:] + 1) % VOCAB
    a, b = model(x), model(y)
    assert a.shape == (1, 128, VOCAB)
    torch.testing.assert_close(a[:, :100], b[:, :100])
    assert not torch.allclose(a[:, 100], b[:, 100])


def test_bfloat16_compute_keeps_float32_master_weights_and_gradients():
    model = small_model(dtype=torch.bfloat16)
    x = torch.randint(0, VOCAB, (2, 32))
    model(x, x).backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert model(x).dtype == torch.float32


def test_fp8_falls_back_with_a_warning_where_unsupported():
    model = small_model()
    assert not fp8_supported("cpu")
    with pytest.warns(UserWarning, match="fp8 was requested"):
        assert model.enable_fp8() is False
    assert not any(getattr(m, "fp8", False) for m in model.modules())


def test_fp8_matmul_is_close_to_the_exact_one():
    # torch._scaled_mm runs on CPU too, so the tensorwise-scaled arithmetic is checked here; e4m3 keeps 3
    # mantissa bits (relative rounding error up to 2^-4), so results agree to a few percent, not exactly.
    torch.manual_seed(0)
    x = torch.randn(4, 8, 64, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    fp8_linear(x, w).square().sum().backward()
    gx, gw = x.grad, w.grad
    x2, w2 = x.detach().float().requires_grad_(), w.detach().clone().requires_grad_()
    y = F.linear(x2, w2)
    y.square().sum().backward()
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(fp8_linear(x, w), y) < 0.1
    assert rel(gx, x2.grad) < 0.1 and rel(gw, w2.grad) < 0.1 and gw.dtype == torch.float32


def test_compile_is_a_no_op_on_cpu_and_state_dict_keys_stay_clean():
    model = small_model()
    assert model.maybe_compile() is False
    assert not any("_orig_mod" in key for key in model.state_dict())


# ----------------------------------------------------------------------------------------------------------
# Training on English text through the hooks


@pytest.fixture(scope="module")
def english(eval_bundle_dir):
    """LAMBADA passages (fiction, from the CORE bundle) tokenized with a 1024-token BPE trained on them."""
    return tinytrain.lambada_tokens(eval_bundle_dir, vocab_size=1024)


def smoke_run(tokenizer, depth_: int = 2) -> Run:
    return Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0,
               vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id, seq_len=128, depth=depth_,
               max_steps=30, max_batch_tokens=8192)  # fmt: skip


@pytest.mark.parametrize("submission", ["baselines/nanochat", "submissions/climbmix"])
def test_training_on_english_drives_the_loss_below_the_unigram_entropy(english, submission):
    tokenizer, tokens, unigram_entropy = english
    pm = load_submission(submission).pm
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # climbmix asks for fp8, which warns and falls back on CPU
        losses = tinytrain.train(pm, smoke_run(tokenizer), tokens)
    assert len(losses) == 30
    assert losses[0] == pytest.approx(math.log(tokenizer.vocab_size), abs=0.01)
    final = sum(losses[-5:]) / 5
    # Below the unigram entropy (about 6.05 nats here): the model uses context, not just token frequencies.
    assert final < unigram_entropy - 0.3, losses
