"""The nanochat GPT: the reference record's architecture, built from the depth dial.

    model = GPT(model_dims(depth=4, vocab_size=4096), seq_len=256, compute_dtype=torch.float32)
    logits = model(idx)              # (B, T, vocab) float32, softcapped
    loss = model(idx, targets)       # mean cross entropy over targets that are not -1
    model.attention_backend          # "fa3", "flex" or "sdpa": the kernel the training forward uses

Every feature is the reference's (docs/spec/reference-recipe.md, Model): RoPE (base 100,000), parameter-free RMSNorm,
QK-norm scaled by 1.2, ReLU-squared MLP, logit softcap 15, value embeddings gated per head on alternating
layers, per-layer residual and x0 scalars, smear, backout, sliding-window attention in the "SSSL" pattern
(last layer full), untied embeddings. Where the recipe is silent we say so next to the choice.

Precision: parameters are float32 master weights, except the token and value embeddings, which are stored in
the compute dtype when that is bf16 (as the reference does: they are lookups, and bf16 halves their weights,
gradients and Adam moments, about 8 GB per GPU at d24). Activations run in ``compute_dtype`` (bf16 on GPU) and
every linear layer casts its weight to the activation's dtype (no autocast), as the reference does.

Attention backends, best first (``select_attention_backend``): FlashAttention-3 where its package
(``flash_attn_interface``) is installed on a Hopper GPU, the reference's kernel; else FlexAttention with a
cached block mask for training on CUDA; else SDPA with an explicit boolean mask (CPU, and evals on GPUs without
FA3, whose many prompt lengths would recompile FlexAttention per length). The tests check every path they can
run against a hand-written masked softmax. ``maybe_compile(True)`` compiles the training forward only: evals
call ``model(idx)`` at many lengths and stay eager, and the module and its state_dict keys are unchanged.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.nanochat import kernels
from baselines.nanochat.depth import SMEAR_CHANNELS, VE_GATE_CHANNELS, Dims, value_embed_layers, window_sizes
from baselines.nanochat.fp8 import fp8_eligible, fp8_linear, fp8_supported

ROPE_BASE = 100_000
QK_SCALE = 1.2  # q and k are multiplied by 1.2 after QK-norm (docs/spec/reference-recipe.md, Model)
LOGIT_SOFTCAP = 15.0
MAX_LENGTH_FACTOR = 4  # forward must accept up to 4 * seq_len tokens (CORE prompts; hookspecs.build_model)


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without learnable parameters."""
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Linear):
    """A bias-free linear layer whose float32 weight is cast to the activation's dtype at use.

    With ``fp8=True`` it multiplies in fp8 while gradients are being computed (training); evals, which run
    under ``torch.no_grad()``, always use the exact path: fp8 is never used for evals
    (docs/spec/reference-recipe.md, Precision).
    """

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__(in_features, out_features, bias=False, device=device)
        self.fp8 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8 and torch.is_grad_enabled():
            return fp8_linear(x, self.weight)
        return F.linear(x, self.weight.to(x.dtype))


# ----------------------------------------------------------------------------------------------------------
# Rotary embeddings and attention


def rotary_tables(length: int, head_dim: int, device, base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (length, head_dim/2), float32 (Su et al. 2021, RoFormer, eq. 34)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + d/2]) of x (B, T, H, D) by the position's angles."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def window_mask(length: int, window: int, device) -> torch.Tensor:
    """Boolean (T, T) mask: query i sees key j when 0 <= i - j <= window (window + 1 keys, the query included)."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    return (j <= i) & (i - j <= window)


ATTENTION_BACKENDS = ("fa3", "flex", "sdpa")


@functools.cache
def _fa3():
    """FlashAttention-3's ``flash_attn_func`` when its package is installed, else None."""
    try:
        from flash_attn_interface import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def select_attention_backend(device: torch.device | str, dtype: torch.dtype, training: bool) -> str:
    """The attention kernel for a forward on ``device``: "fa3", "flex" or "sdpa" (see the module docstring).

    FA3 needs its package, a Hopper GPU (compute capability 9.x) and 16-bit activations; it serves any length,
    so evals use it too. FlexAttention compiles per sequence length, so only training (one length) uses it.
    """
    device = torch.device(device)
    if device.type != "cuda" or (not training and torch.compiler.is_exporting()):
        return "sdpa"  # the program the referee evaluates runs ATen operators only (harness/export.py)
    hopper = torch.cuda.get_device_capability(device)[0] == 9
    if _fa3() is not None and hopper and dtype in (torch.bfloat16, torch.float16):
        return "fa3"
    return "flex" if training else "sdpa"


@functools.cache
def _flex():
    """FlexAttention compiled once (uncompiled it materializes the full score matrix)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=64)
def flex_block_mask(length: int, window: int, device: str):
    """FlexAttention block mask for a causal sliding window, cached per (T, window, device)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx <= window)

    return create_block_mask(sliding_causal, None, None, length, length, device=device)


@functools.lru_cache(maxsize=64)
def _sdpa_mask(length: int, window: int, device: str) -> torch.Tensor | None:
    return None if window >= length - 1 else window_mask(length, window, device)


def attention_masks(length: int, windows: list[int], device: torch.device, backend: str) -> list:
    """One mask object per layer for ``backend``: FA3's left window (an int), a FlexAttention BlockMask, or for
    SDPA a boolean mask (None = plain causal)."""
    if backend == "fa3":
        return list(windows)
    if backend == "flex":
        return [flex_block_mask(length, min(w, length), str(device)) for w in windows]
    if backend == "sdpa" and torch.compiler.is_compiling():  # traced with a symbolic length (torch.export)
        return [window_mask(length, w, device) for w in windows]  # no cache keyed on it, no branch on it
    if backend == "sdpa":
        return [_sdpa_mask(length, w, str(device)) for w in windows]
    raise ValueError(f"attention backend {backend!r} is unknown; use one of {', '.join(ATTENTION_BACKENDS)}")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, backend: str) -> torch.Tensor:
    """Causal attention of (B, T, H, D) tensors under a mask from ``attention_masks``; returns (B, T, H, D)."""
    if backend == "fa3":
        out = _fa3()(q, k, v, causal=True, window_size=(mask, 0))
        return out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the log-sum-exp
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "flex":
        y = _flex()(q, k, v, block_mask=mask)
    elif mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------
# The transformer


class CausalSelfAttention(nn.Module):
    def __init__(self, dims: Dims, has_value_embedding: bool, device=None):
        super().__init__()
        self.num_heads, self.head_dim = dims.num_heads, dims.head_dim
        kv_dim = dims.num_heads * dims.head_dim
        self.c_q = Linear(dims.width, kv_dim, device=device)
        self.c_k = Linear(dims.width, kv_dim, device=device)
        self.c_v = Linear(dims.width, kv_dim, device=device)
        self.c_proj = Linear(kv_dim, dims.width, device=device)
        # Per-head gate of the value embedding, read from the first channels of x (ResFormer-style value residual).
        self.ve_gate = Linear(VE_GATE_CHANNELS, dims.num_heads, device=device) if has_value_embedding else None

    def forward(self, x, value_embedding, cos, sin, mask, backend):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim)
        k = self.c_k(x).view(B, T, self.num_heads, self.head_dim)
        v = self.c_v(x).view(B, T, self.num_heads, self.head_dim)
        if value_embedding is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, H), in (0, 3)
            v = v + gate.unsqueeze(-1) * value_embedding.view(B, T, self.num_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = QK_SCALE * norm(q), QK_SCALE * norm(k)
        y = attend(q, k, v, mask, backend)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dims: Dims, device=None):
        super().__init__()
        self.c_fc = Linear(dims.width, dims.mlp_width, device=device)
        self.c_proj = Linear(dims.mlp_width, dims.width, device=device)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU squared (So et al. 2021, Primer)


class Block(nn.Module):
    def __init__(self, dims: Dims, has_value_embedding: bool, device=None):
        super().__init__()
        self.attn = CausalSelfAttention(dims, has_value_embedding, device=device)
        self.mlp = MLP(dims, device=device)

    def forward(self, x, value_embedding, cos, sin, mask, backend):
        x = x + self.attn(norm(x), value_embedding, cos, sin, mask, backend)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, dims: Dims, seq_len: int, compute_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.dims, self.seq_len, self.compute_dtype = dims, seq_len, compute_dtype
        self.windows = window_sizes(dims.depth, seq_len)
        self.backout_layer = dims.depth // 2  # the residual after block index d//2 (12 of 0..23) is subtracted
        ve_layers = value_embed_layers(dims.depth)
        kv_dim = dims.num_heads * dims.head_dim
        self.wte = nn.Embedding(dims.vocab_size, dims.width, device=device)
        self.blocks = nn.ModuleList([Block(dims, i in ve_layers, device=device) for i in range(dims.depth)])
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(dims.vocab_size, kv_dim, device=device) for i in ve_layers}
        )
        self.lm_head = Linear(dims.width, dims.vocab_size, device=device)
        self.resid_lambdas = nn.Parameter(torch.empty(dims.depth, device=device))
        self.x0_lambdas = nn.Parameter(torch.empty(dims.depth, device=device))
        self.smear_gate = Linear(SMEAR_CHANNELS, 1, device=device)
        self.smear_lambda = nn.Parameter(torch.empty(1, device=device))
        self.backout_lambda = nn.Parameter(torch.empty(1, device=device))
        self.use_compile = False
        self._trained_with = None  # the attention backend of the last training forward
        self.init_weights()
        # The embeddings are lookups: stored in bf16 when computing in bf16, as the reference does (fp16 keeps
        # fp32, which the reference also does, since its gradients need a loss scaler). Their Adam moments follow.
        embedding_dtype = torch.bfloat16 if compute_dtype == torch.bfloat16 else torch.float32
        for table in (self.wte, *self.value_embeds.values()):
            table.to(embedding_dtype)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter explicitly (docs/spec/reference-recipe.md, Initialisation)."""
        if self.wte.weight.is_meta:
            return
        width = self.dims.width
        bound = math.sqrt(3) / math.sqrt(width)  # uniform(+-b) has std 1/sqrt(width)
        nn.init.normal_(self.wte.weight, std=0.8)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * bound, 0.4 * bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # recipe silent: gates start at 3*sigmoid(0) = 1.5
        for embedding in self.value_embeds.values():
            nn.init.uniform_(embedding.weight, -bound, bound)  # recipe silent: initialised like c_v
        self.resid_lambdas.copy_(torch.linspace(1.15, 1.05, self.dims.depth))
        self.x0_lambdas.copy_(torch.linspace(0.20, 0.05, self.dims.depth))
        nn.init.zeros_(self.smear_gate.weight)
        nn.init.zeros_(self.smear_lambda)
        nn.init.constant_(self.backout_lambda, 0.2)

    # -- options --------------------------------------------------------------------------------------

    def fp8_layers(self) -> list[str]:
        """Names of the linear layers that multiply in fp8 under ``enable_fp8``: every ``Linear`` whose two
        dimensions are multiples of 16 and at least 128 (the head included; the small gates are not), as the
        reference converts them."""
        return [name for name, m in self.named_modules() if isinstance(m, Linear) and fp8_eligible(m)]

    def enable_fp8(self) -> bool:
        """Use fp8 in ``fp8_layers()`` if this device supports it; otherwise warn and keep bf16/fp32."""
        device = self.wte.weight.device
        if not fp8_supported(device):
            warnings.warn(
                f"fp8 was requested but {device} has no fp8 matmuls (needs CUDA compute capability 8.9+); "
                f"training in {self.compute_dtype} instead",
                stacklevel=2,
            )
            return False
        for name in self.fp8_layers():
            self.get_submodule(name).fp8 = True
        return True

    def maybe_compile(self, enabled: bool | None = None) -> bool:
        """Run the training forward (``model(idx, targets)``) through torch.compile(dynamic=False) when
        ``enabled`` (None: on CUDA only). The caller decides; ``harness.device.use_compile`` says where it pays."""
        self.use_compile = self.wte.weight.is_cuda if enabled is None else bool(enabled)
        return self.use_compile

    @property
    def attention_backend(self) -> str:
        """The attention kernel of the training forward ("fa3", "flex" or "sdpa"): the one that ran last, else the
        one that will run on this model's device. For the record."""
        device = self.wte.weight.device
        return self._trained_with or select_attention_backend(device, self.compute_dtype, training=True)

    # -- accounting -------------------------------------------------------------------------------------

    def flops_per_token(self, seq_len: int) -> float:
        """6 * (all linear weights, head included) + 12 * heads * head_dim * min(window, T) per layer."""
        linear = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attention = sum(12 * self.dims.num_heads * self.dims.head_dim * min(w, seq_len) for w in self.windows)
        return float(6 * linear + attention)

    # -- forward ----------------------------------------------------------------------------------------

    def _rotary(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # traced (torch.export): tables in the graph, for any length, uncached
            return rotary_tables(length, self.dims.head_dim, device)
        cached = getattr(self, "_rotary_cache", None)
        if cached is None or cached[0].size(0) < length or cached[0].device != device:
            longest = max(length, MAX_LENGTH_FACTOR * self.seq_len)
            self._rotary_cache = rotary_tables(longest, self.dims.head_dim, device)
        cos, sin = self._rotary_cache
        return cos[:length], sin[:length]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Eager set-up (rotary tables, attention backend and masks), then the transformer; compiled when training
        if ``maybe_compile`` enabled it."""
        length = idx.size(1)
        cos, sin = self._rotary(length, idx.device)
        backend = select_attention_backend(idx.device, self.compute_dtype, training=targets is not None)
        masks = attention_masks(length, self.windows, idx.device, backend)
        if targets is None:
            return self.transformer(idx, targets, cos, sin, masks, backend)
        self._trained_with = backend
        if self.use_compile:
            return _compiled_transformer()(self, idx, targets, cos, sin, masks, backend)
        return self.transformer(idx, targets, cos, sin, masks, backend)

    def transformer(self, idx, targets, cos, sin, masks, backend) -> torch.Tensor:
        dtype = self.compute_dtype
        x = norm(self.wte(idx).to(dtype))
        # Smear (modded-nanogpt): mix a gated share of the previous token's embedding into each position.
        # The recipe does not say whether it precedes the embedding norm; we apply it to the normed embedding.
        gate = self.smear_lambda.to(dtype) * torch.sigmoid(self.smear_gate(x[:, 1:, :SMEAR_CHANNELS]))
        x = torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)
        x0 = x
        backout = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i].to(dtype) * x + self.x0_lambdas[i].to(dtype) * x0
            ve = self.value_embeds[str(i)](idx).to(dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, masks[i], backend)
            if i == self.backout_layer:
                backout = x
        x = norm(x - self.backout_lambda.to(dtype) * backout)
        logits = self.lm_head(x)
        if targets is None:
            return LOGIT_SOFTCAP * torch.tanh(logits.float() / LOGIT_SOFTCAP)
        return kernels.softcap_cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), LOGIT_SOFTCAP)


def _transformer(model: GPT, idx, targets, cos, sin, masks, backend) -> torch.Tensor:
    return model.transformer(idx, targets, cos, sin, masks, backend)


@functools.cache
def _compiled_transformer():
    """torch.compile of the training forward, built on first use (compilation itself is lazy)."""
    return torch.compile(_transformer, dynamic=False)
