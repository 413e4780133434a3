"""The nanochat GPT: initialisation, attention paths, precision fallbacks, and training on English text.

Run: python -m pytest tests/test_nanochat_model.py
"""

import math
import warnings

import helpers_tinytrain as tinytrain
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from baselines.nanochat import depth
from baselines.nanochat.fp8 import fp8_linear, fp8_supported
from baselines.nanochat.model import GPT, attend, attention_masks, select_attention_backend, window_mask
from baselines.nanochat.optim import build_optimizer
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
    """Softmax attention of (B, T, H, D) tensors written out by hand, the causal sliding window as a -inf mask."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~window_mask(q.size(-2), window, q.device), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_sliding_window_attention_equals_a_masked_full_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 200, 3, 16) for _ in range(3))
    windows = [17, 50, 199]  # 199 earlier tokens = full causal at T=200, which takes SDPA's is_causal path
    masks = attention_masks(200, windows, q.device, "sdpa")
    assert masks[-1] is None
    for window, mask in zip(windows, masks, strict=True):
        expected = reference_attention(q, k, v, window)
        torch.testing.assert_close(attend(q, k, v, mask, "sdpa"), expected, atol=1e-5, rtol=0)


def seen_keys(backend: str, length: int, window: int) -> torch.Tensor:
    """Which keys each query attends to, read off the attention itself: with q = k = 0 every visible key gets
    the same weight, and with one-hot values (v[j] = e_j) output row i is 1/count on exactly the keys i sees."""
    q = k = torch.zeros(1, length, 1, length)
    v = torch.eye(length).view(1, length, 1, length)
    (mask,) = attention_masks(length, [window], q.device, backend)
    return attend(q, k, v, mask, backend)[0, :, 0] > 0


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_a_window_of_w_lets_a_query_see_itself_and_w_earlier_keys(backend):
    # Hand-derived, as FlashAttention's window_size=(w, 0) defines it: with w = 4, query 9 sees keys 5..9 (five
    # keys, not four), query 3 sees keys 0..3 (the sequence start cuts the window), and no query sees a later key.
    # FlexAttention runs uncompiled here (slow on CPU, so a short sequence); compiled on GPU it is the same function.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        seen = seen_keys(backend, 10, 4)
    assert seen[9].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]
    assert seen[3].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert not seen.triu(1).any()
    assert seen.sum(1).tolist() == [1, 2, 3, 4, 5, 5, 5, 5, 5, 5]


def test_the_short_window_at_the_record_length_attends_to_513_keys():
    # d24 at T=2048: S = 512 earlier tokens plus the query itself, as the reference's window_size=(512, 0).
    model = GPT(depth.model_dims(24, 32768), seq_len=2048, device="meta")
    assert model.windows[:4] == [512, 512, 512, 2048]
    assert window_mask(2048, 512, "cpu").sum(1)[-1].item() == 513


def test_attention_backend_is_sdpa_on_cpu_and_named_by_the_model():
    assert select_attention_backend("cpu", torch.bfloat16, training=True) == "sdpa"
    model = small_model()
    assert model.attention_backend == "sdpa"
    x = torch.randint(0, VOCAB, (1, 32))
    model(x, x)
    assert model.attention_backend == "sdpa"


def test_backout_subtracts_the_residual_after_block_n_layer_over_2():
    # Hand-derived at d4: logits = head(norm(x_3 - lambda * x_2)), x_i the output of block i (0-based); the
    # reference saves the residual after block n_layer // 2 = 2 (12 at d24), not block 1.
    model = small_model(d=4)
    with torch.no_grad():
        for p in model.parameters():  # zero output projections would make every block output the same
            p.add_(0.05 * torch.randn_like(p))
        model.backout_lambda.fill_(0.7)
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, out: outputs.append(out)) for b in model.blocks]
    x = torch.randint(0, VOCAB, (2, 32))
    logits = model(x)
    for h in hooks:
        h.remove()

    def expected(saved: int) -> torch.Tensor:
        z = model.lm_head(F.rms_norm(outputs[3] - 0.7 * outputs[saved], (outputs[3].size(-1),)))
        return 15 * torch.tanh(z / 15)

    assert model.backout_layer == 2
    torch.testing.assert_close(logits, expected(2))
    assert not torch.allclose(logits, expected(1), atol=1e-4)
    assert GPT(depth.model_dims(24, 32768), seq_len=2048, device="meta").backout_layer == 12


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


def test_bfloat16_compute_stores_the_embeddings_in_bf16_and_every_other_weight_in_float32():
    # As the reference: token and value embeddings (lookups) in bf16, with bf16 gradients and Adam moments.
    model = small_model(dtype=torch.bfloat16)
    x = torch.randint(0, VOCAB, (2, 32))
    model(x, x).backward()
    tables = {"wte.weight"} | {f"value_embeds.{i}.weight" for i in model.value_embeds}
    for name, p in model.named_parameters():
        assert p.dtype == (torch.bfloat16 if name in tables else torch.float32), name
        assert p.grad.dtype == p.dtype, name
    optimizer = build_optimizer(model, total_batch_tokens=2**19)
    optimizer.step()
    assert optimizer.state[model.wte.weight]["exp_avg_sq"].dtype == torch.bfloat16
    assert model(x).dtype == torch.float32
    assert small_model(dtype=torch.float32).wte.weight.dtype == torch.float32


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


class ScaledMatmuls(TorchDispatchMode):
    """Records the use_fast_accum flag of every fp8 matmul that runs (a real dispatch mode, not a mock)."""

    def __init__(self):
        super().__init__()
        self.fast_accum = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._scaled_mm.default:
            self.fast_accum.append(bool(kwargs.get("use_fast_accum", args[7] if len(args) > 7 else False)))
        return func(*args, **kwargs)


def test_fp8_forward_accumulates_fast_and_the_gradients_do_not():
    x = torch.randn(16, 128, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(128, 128, requires_grad=True)
    with ScaledMatmuls() as calls:
        fp8_linear(x, w).sum().backward()
    assert calls.fast_accum == [True, False, False]  # forward, then grad_x and grad_w


def test_fp8_covers_every_linear_of_at_least_128_in_multiples_of_16_including_the_head():
    model = small_model(d=4)  # width 256, vocabulary 256: every block matrix and the head qualify
    layers = model.fp8_layers()
    assert "lm_head" in layers
    block = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert {f"blocks.0.{n}" for n in block} <= set(layers)
    assert len(layers) == 4 * 6 + 1
    assert not any("gate" in name for name in layers)  # ve_gate (12 -> heads) and smear_gate (24 -> 1) stay exact


def test_compile_is_off_by_default_on_cpu_and_state_dict_keys_stay_clean():
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


@pytest.mark.slow
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
