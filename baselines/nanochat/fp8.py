"""fp8 matmuls for the large linear layers (tensorwise scaling, e4m3 forward, e5m2 gradients).

    if fp8_supported(device) and fp8_eligible(linear): y = fp8_linear(x, linear.weight)   # as F.linear(x, w)

The reference (docs/spec/reference-recipe.md, Precision) runs its large linear layers in fp8 with one scale per
tensor: ~17% more tokens/s at d26 and ~5% net gain at equal quality; never used for evals. "Large" is every
linear layer whose dimensions are multiples of 16 (a requirement of the fp8 matmul) and at least 128 (smaller
ones do not pay for the scaling), the output head included. The forward matmul accumulates in the fast,
lower-precision mode (``use_fast_accum=True``), the two gradient matmuls in full precision, as the reference does.
Hardware fp8 matmuls need compute capability 8.9+ (Ada, Hopper, Blackwell); ``fp8_supported`` says whether this
device has them, and the model falls back to bf16 with a warning elsewhere. ``torch._scaled_mm`` also runs on CPU,
which is how the tests check the arithmetic here.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn  # forward operands: more mantissa
E5M2 = torch.float8_e5m2  # gradients: more range
FP8_DIM_MULTIPLE = 16  # torch._scaled_mm needs every matmul dimension divisible by 16
FP8_MIN_DIM = 128  # below this the scaling costs more than the fp8 matmul saves


def fp8_supported(device: torch.device | str) -> bool:
    """True on CUDA devices of compute capability 8.9 or higher (H100-class), and on the meta device, where
    ``harness.memory`` builds a model as the record's GPUs would run it (shapes only)."""
    device = torch.device(device)
    if device.type == "meta":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_eligible(linear: torch.nn.Linear) -> bool:
    """Whether a linear layer is large enough for fp8: both dimensions multiples of 16 and at least 128."""
    dims = (linear.in_features, linear.out_features)
    return all(d % FP8_DIM_MULTIPLE == 0 and d >= FP8_MIN_DIM for d in dims)


def _quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale x so that its largest magnitude maps to the format's maximum; return (x_fp8, dequant scale).

    The clamp saturates the rare value that rounding pushes past the maximum (the cast would not saturate).
    """
    fp8_max = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float().clamp_min(1e-12)
    scale = fp8_max / amax
    return (x.float() * scale).clamp(-fp8_max, fp8_max).to(dtype), scale.reciprocal()


class _Fp8Matmul(torch.autograd.Function):
    """y = x @ w.T with both operands in e4m3; the backward quantizes the incoming gradient to e5m2.

    ``torch._scaled_mm(a, b)`` wants ``a`` row-major and ``b`` column-major, hence the transposes below. Only the
    forward uses fast accumulation: the gradients keep full-precision accumulation.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x8, x_scale = _quantize(x, E4M3)
        w8, w_scale = _quantize(w, E4M3)
        ctx.save_for_backward(x8, x_scale, w8, w_scale)
        ctx.out_dtype = x.dtype
        return torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype, use_fast_accum=True)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x8, x_scale, w8, w_scale = ctx.saved_tensors
        g8, g_scale = _quantize(grad_y.contiguous(), E5M2)
        # grad_x = grad_y @ w: (N, out) @ (out, in)
        grad_x = torch._scaled_mm(
            g8, w8.t().contiguous().t(), scale_a=g_scale, scale_b=w_scale, out_dtype=ctx.out_dtype
        )
        # grad_w = grad_y.T @ x: (out, N) @ (N, in), accumulated in float32 for the float32 master weight
        grad_w = torch._scaled_mm(
            g8.t().contiguous(), x8.t().contiguous().t(), scale_a=g_scale, scale_b=x_scale, out_dtype=torch.float32
        )
        return grad_x, grad_w


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) without bias, computed in fp8; x may have any number of leading dimensions."""
    y = _Fp8Matmul.apply(x.reshape(-1, x.size(-1)), weight)
    return y.view(*x.shape[:-1], weight.size(0))
