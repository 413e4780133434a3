"""The depth dial: every size, horizon and scaling rule of the nanochat recipe, derived from ``--depth``.

    dims = model_dims(24, vocab_size=32768)       # width 1536, 12 heads of 128
    scaling_params(dims), total_params(dims)      # 729.8M, 1,384M
    h = horizon(24, vocab_size=32768, ratio=8)    # 5,838M tokens, 2^20 tokens per step, 5,568 steps

Pure arithmetic, no torch: the model in ``model.py`` is built from ``model_dims`` and the tests check that
its parameter count equals ``total_params``. Formulas and constants are the reference's
(docs/spec/reference-recipe.md, sections "Model", "Parameter counts" and "Depth sets everything else").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HEAD_DIM = 128  # docs/spec/reference-recipe.md, Model
ASPECT_RATIO = 64  # width = ceil(64 * depth / 128) * 128
MLP_RATIO = 4
VE_GATE_CHANNELS = 12  # value-embedding gate reads the first 12 channels of x
SMEAR_CHANNELS = 24  # smear gate reads the first 24 channels of x
WINDOW_PATTERN = "SSSL"  # S = a quarter of the context, L = the full context; the last layer is always L
SHORT_WINDOW_DIVISOR = 4  # S = 512 at L = 2048

# Hyperparameters were tuned at d12 and transferred (docs/spec/reference-recipe.md, Depth sets everything else).
REFERENCE_DEPTH = 12
REFERENCE_BATCH = 2**19  # tokens per step that are optimal at d12 (measured upstream)
BATCH_EXPONENT = 0.383  # B = 2^round(log2(B_ref * (tokens / D_ref)^0.383)), fitted upstream
DEFAULT_RATIO = 12  # tokens per scaling parameter; the current record uses 8


@dataclass(frozen=True)
class Dims:
    """The shape of a nanochat GPT."""

    depth: int
    vocab_size: int
    width: int
    num_heads: int
    head_dim: int = HEAD_DIM

    @property
    def mlp_width(self) -> int:
        return MLP_RATIO * self.width


def model_dims(depth: int, vocab_size: int) -> Dims:
    """width = ceil(64*d/128)*128 and heads = width/128 (docs/spec/reference-recipe.md, Model)."""
    if depth < 1:
        raise ValueError(f"depth={depth} must be at least 1; pass --depth 1 or more")
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} must be positive")
    width = math.ceil(ASPECT_RATIO * depth / HEAD_DIM) * HEAD_DIM
    return Dims(depth=depth, vocab_size=vocab_size, width=width, num_heads=width // HEAD_DIM)


def value_embed_layers(depth: int) -> list[int]:
    """Layers that get a value embedding: every other layer, always including the last."""
    return [i for i in range(depth) if i % 2 == (depth - 1) % 2]


def window_sizes(depth: int, seq_len: int) -> list[int]:
    """Attention window of each layer: how many earlier tokens a query sees, besides itself.

    A window of w lets query i attend to keys i-w .. i, i.e. w + 1 keys: FlashAttention's ``window_size=(w, 0)``,
    which is how the reference states it (S = 512 sees 513 keys at T = 2048). The pattern "SSSL" is tiled over
    the layers and the last layer is forced to L (docs/spec/reference-recipe.md, Model).
    """
    long, short = seq_len, max(1, seq_len // SHORT_WINDOW_DIVISOR)
    windows = [long if WINDOW_PATTERN[i % len(WINDOW_PATTERN)] == "L" else short for i in range(depth)]
    windows[-1] = long
    return windows


def scaling_params(dims: Dims) -> int:
    """Transformer matrices plus the output head; embeddings and value embeddings are excluded.

    Per layer: q, k, v, o (4 w^2) and the MLP (2 * 4 w^2) = 12 w^2. The small gates are left out, as the
    reference's count of 729.8M at d24 implies.
    """
    return dims.depth * 12 * dims.width**2 + dims.vocab_size * dims.width


def total_params(dims: Dims) -> int:
    """Every parameter of ``model.GPT``: scaling parameters, embeddings, value embeddings, gates, scalars."""
    kv_dim = dims.num_heads * dims.head_dim
    n_ve = len(value_embed_layers(dims.depth))
    token_embedding = dims.vocab_size * dims.width
    value_embeddings = n_ve * dims.vocab_size * kv_dim
    ve_gates = n_ve * VE_GATE_CHANNELS * dims.num_heads
    scalars = 2 * dims.depth + SMEAR_CHANNELS + 1 + 1  # residual and x0 lambdas, smear gate and lambda, backout
    return scaling_params(dims) + token_embedding + value_embeddings + ve_gates + scalars


def flops_per_token(dims: Dims, seq_len: int) -> float:
    """Training FLOPs per token: 6 * linear weights (head included) + 12 * heads * head_dim * min(window, T)
    per layer for attention (docs/spec/reference-recipe.md, Speed and MFU; the 6 is 2 forward + 4 backward)."""
    n_ve = len(value_embed_layers(dims.depth))
    linear = scaling_params(dims) + n_ve * VE_GATE_CHANNELS * dims.num_heads + SMEAR_CHANNELS
    attention = sum(12 * dims.num_heads * dims.head_dim * min(w, seq_len) for w in window_sizes(dims.depth, seq_len))
    return float(6 * linear + attention)


@dataclass(frozen=True)
class Horizon:
    """How much data the depth rule asks for, before any cap."""

    tokens: int  # ratio * scaling parameters
    reference_tokens: int  # D_ref: ratio * scaling parameters of d12 at the same vocabulary
    total_batch_tokens: int  # tokens per optimizer step
    num_steps: int


def horizon(depth: int, vocab_size: int, ratio: float = DEFAULT_RATIO) -> Horizon:
    """tokens = ratio * N; B = 2^round(log2(2^19 * (tokens/D_ref)^0.383)); steps = tokens // B."""
    if ratio <= 0:
        raise ValueError(f"data:param ratio={ratio} must be positive (the reference uses 8 to 12)")
    tokens = int(ratio * scaling_params(model_dims(depth, vocab_size)))
    reference_tokens = int(ratio * scaling_params(model_dims(REFERENCE_DEPTH, vocab_size)))
    batch = 2 ** round(math.log2(REFERENCE_BATCH * (tokens / reference_tokens) ** BATCH_EXPONENT))
    return Horizon(tokens, reference_tokens, batch, tokens // batch)


def batch_lr_scale(total_batch_tokens: int) -> float:
    """Learning rates scale with sqrt(B / 2^19), the square-root rule for Adam-like optimizers
    (docs/spec/reference-recipe.md, Depth sets everything else)."""
    return math.sqrt(total_batch_tokens / REFERENCE_BATCH)


def width_lr_scale(width: int) -> float:
    """AdamW learning rates scale with (width/768)^-0.5: 768 is d12's width, where they were tuned."""
    return (width / 768) ** -0.5


def muon_weight_decay(depth: int, vocab_size: int, total_batch_tokens: int, peak: float = 0.28) -> float:
    """Muon peak weight decay = 0.28 * sqrt(B/2^19) * D_ref/tokens
    (docs/spec/reference-recipe.md, Depth sets everything else).

    D_ref/tokens = N(d12)/N(d) because both carry the same ratio, so the ratio drops out.
    """
    ratio_free = scaling_params(model_dims(REFERENCE_DEPTH, vocab_size)) / scaling_params(model_dims(depth, vocab_size))
    return peak * batch_lr_scale(total_batch_tokens) * ratio_free
