"""Fused softcap + cross-entropy: one Triton kernel pair, with the torch implementation as reference and fallback.

    loss = softcap_cross_entropy(logits, targets)       # logits (N, V) any float dtype, targets (N,) with -1 ignored

The model's head produces logits of shape (B*T, V); the reference computes z = 15 * tanh(logits / 15) in float32
and a cross entropy on z. At the record's device batch that is 32,768 rows x 32,768 vocab, so every float32 copy
of the logits costs 4.3 GB of memory traffic and storage. The Triton kernels read the bf16 logits once per pass,
do the softcap, an online log-sum-exp and the target pick in registers, keep only one float per row (the
log-sum-exp) for the backward, and write the gradient straight in the logits' dtype.

Dispatch: ``softcap_cross_entropy`` uses Triton on CUDA tensors when Triton is installed, else the torch
reference. On the meta device (``harness.memory``'s estimates) the Triton path's autograd function runs without
launching its kernels, so the estimate holds what the CUDA path saves for the backward. The tests run the
Triton path on CPU tensors with ``TRITON_INTERPRET=1`` (Triton's interpreter executes the kernel in numpy); that
flag is read when the kernels are decorated, i.e. when this module is first imported.
Run: ``TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

SOFTCAP = 15.0  # docs/spec/reference-recipe.md, Model: logits softcapped by 15 * tanh(logits / 15)
IGNORE_INDEX = -1
MAX_BLOCK = 4096  # vocabulary columns one program handles per loop iteration

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def softcap_cross_entropy_torch(logits: torch.Tensor, targets: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """The reference: float32 softcap, then mean cross entropy over targets that are not -1."""
    z = cap * torch.tanh(logits.float() / cap)
    return F.cross_entropy(z.view(-1, z.size(-1)), targets.view(-1), ignore_index=IGNORE_INDEX)


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """Mean softcapped cross entropy; Triton on CUDA (or under the interpreter), torch otherwise."""
    if HAVE_TRITON and (logits.is_cuda or logits.is_meta or INTERPRET):
        return softcap_cross_entropy_triton(logits, targets, cap)
    return softcap_cross_entropy_torch(logits, targets, cap)


def softcap_cross_entropy_triton(logits: torch.Tensor, targets: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    if not HAVE_TRITON:
        raise RuntimeError("triton is not installed; use softcap_cross_entropy_torch or `pip install triton`")
    if not (logits.is_cuda or logits.is_meta or INTERPRET):
        raise RuntimeError("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before import for CPU")
    return _SoftcapCrossEntropy.apply(logits.view(-1, logits.size(-1)), targets.view(-1), cap)


if HAVE_TRITON:

    @triton.jit
    def _tanh(u):
        # tanh(u) = 1 - 2 / (exp(2u) + 1): saturates cleanly to +-1 (exp overflows to inf, or underflows to 0)
        # and uses only exp, which both the CUDA backend and the numpy interpreter provide.
        return 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)

    @triton.jit
    def _softcap_ce_forward(logits_ptr, targets_ptr, loss_ptr, lse_ptr, n_cols, row_stride, cap, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        # Online log-sum-exp over the vocabulary (Milakov & Gimelshein 2018, "Online normalizer calculation").
        running_max = tl.zeros((), dtype=tl.float32) - float("inf")
        running_sum = tl.zeros((), dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(row_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
            z = tl.where(cols < n_cols, cap * _tanh(x / cap), float("-inf"))
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        target = tl.load(targets_ptr + row)
        valid = target != -1
        x_target = tl.load(row_ptr + target, mask=valid, other=0.0).to(tl.float32)
        loss = tl.where(valid, lse - cap * _tanh(x_target / cap), 0.0)
        tl.store(loss_ptr + row, loss)
        tl.store(lse_ptr + row, lse)

    @triton.jit
    def _softcap_ce_backward(
        logits_ptr, targets_ptr, lse_ptr, row_scale_ptr, grad_ptr, n_cols, row_stride, cap, BLOCK: tl.constexpr
    ):
        # d loss / d x = scale * (softmax(z) - onehot(target)) * (1 - tanh(x/cap)^2), z = cap * tanh(x/cap)
        row = tl.program_id(0).to(tl.int64)
        target = tl.load(targets_ptr + row)
        lse = tl.load(lse_ptr + row)
        scale = tl.load(row_scale_ptr + row)  # upstream grad / number of valid targets, 0 for ignored rows
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(logits_ptr + row * row_stride + cols, mask=mask, other=0.0).to(tl.float32)
            t = _tanh(x / cap)
            p = tl.exp(cap * t - lse)
            dz = p - tl.where(cols == target, 1.0, 0.0)
            dx = scale * dz * (1.0 - t * t)
            tl.store(grad_ptr + row * row_stride + cols, dx.to(grad_ptr.dtype.element_ty), mask=mask)

    class _SoftcapCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
            logits = logits.contiguous()
            n_rows, n_cols = logits.shape
            loss_rows = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
            lse = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
            block = min(MAX_BLOCK, triton.next_power_of_2(n_cols))
            if not logits.is_meta:  # meta: shapes only
                grid = (n_rows,)
                _softcap_ce_forward[grid](logits, targets, loss_rows, lse, n_cols, logits.stride(0), cap, BLOCK=block)
            valid = targets != IGNORE_INDEX
            n_valid = valid.sum()
            ctx.save_for_backward(logits, targets, lse, valid, n_valid)
            ctx.cap, ctx.block = cap, block
            return loss_rows.sum() / n_valid  # NaN when every target is ignored, as F.cross_entropy gives

        @staticmethod
        def backward(ctx, grad_loss: torch.Tensor):
            logits, targets, lse, valid, n_valid = ctx.saved_tensors
            row_scale = (valid.float() * (grad_loss.float() / n_valid)).contiguous()
            grad = torch.empty_like(logits)
            n_rows, n_cols = logits.shape
            if not logits.is_meta:
                _softcap_ce_backward[(n_rows,)](
                    logits, targets, lse, row_scale, grad, n_cols, logits.stride(0), ctx.cap, BLOCK=ctx.block
                )
            return grad, None, None
