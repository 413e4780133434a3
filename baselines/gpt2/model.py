"""The classic 2019 GPT-2 architecture at any depth: a deliberately different second reference.

    model = GPT2(depth=12, vocab_size=50304, max_len=4096)     # d12 = GPT-2 small's shape (768 wide, 12 heads)
    logits = model(idx); loss = model(idx, targets)

Learned absolute positions, pre-norm LayerNorm with bias, GELU (tanh approximation) MLP, biases everywhere,
tied input/output embeddings, full causal attention (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners", section 2.3, and the released TF code). Width = 64 * depth, heads of 64, so d12 is
GPT-2 small. Positions beyond the training sequence length exist (for evals on longer prompts) but are
untrained, as in the original.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

HEAD_DIM = 64
ASPECT_RATIO = 64  # width = 64 * depth: 768 at d12, GPT-2 small
INIT_STD = 0.02  # GPT-2 code: N(0, 0.02) for weights, N(0, 0.01) for positions
POSITION_INIT_STD = 0.01


class Block(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, depth: int, vocab_size: int, max_len: int, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth} must be at least 1")
        self.depth, self.vocab_size, self.max_len, self.compute_dtype = depth, vocab_size, max_len, compute_dtype
        self.width = ASPECT_RATIO * depth
        self.num_heads = self.width // HEAD_DIM
        self.wte = nn.Embedding(vocab_size, self.width)
        self.wpe = nn.Embedding(max_len, self.width)
        self.blocks = nn.ModuleList([Block(self.width, self.num_heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(self.width)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's initialisation; residual projections scaled by 1/sqrt(2 * depth) (GPT-2 paper, section 2.3)."""
        nn.init.normal_(self.wte.weight, std=INIT_STD)
        nn.init.normal_(self.wpe.weight, std=POSITION_INIT_STD)
        for name, p in self.blocks.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:  # LayerNorm gains
                nn.init.ones_(p)
            elif name.endswith(("c_proj.weight", "mlp_proj.weight")):
                nn.init.normal_(p, std=INIT_STD / math.sqrt(2 * self.depth))
            else:
                nn.init.normal_(p, std=INIT_STD)
        nn.init.ones_(self.ln_f.weight)
        nn.init.zeros_(self.ln_f.bias)

    def flops_per_token(self, seq_len: int) -> float:
        """6 * linear weights (the tied head counted once as a matmul) + 12 * layers * width * T for attention."""
        linear = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear)) + self.wte.weight.numel()
        return float(6 * linear + 12 * self.depth * self.width * seq_len)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        B, T = idx.shape
        if T > self.max_len:
            raise ValueError(f"sequence of {T} tokens is longer than the {self.max_len} learned positions")
        autocast = torch.autocast(
            idx.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32
        )
        with autocast:
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.blocks:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight).float()  # tied output embedding
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
