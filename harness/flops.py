"""Peak dense bf16 FLOP/s by GPU model, and model FLOPs utilisation (MFU).

    peak_flops(torch.cuda.get_device_name())          # 989e12 on an H100 SXM, None if unknown
    mfu(flops_per_token, tokens_per_second, "NVIDIA H100 80GB HBM3", num_gpus=8)

Figures are the vendors' dense (no sparsity) bf16 tensor-core peaks, as listed in docs/spec/reference-recipe.md
(Speed and MFU). MFU = flops_per_token * tokens/s / (peak * GPUs) (PaLM, Chowdhery et al. 2022, app. B).
"""

from __future__ import annotations

# Checked in order: more specific names first ("H100 PCIe" before "H100").
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM; torch reports e.g. "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),
    ("A100", 312e12),
    ("B200", 2.25e15),
)


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of one GPU given its name (``torch.cuda.get_device_name()``); None if not listed."""
    name = device_name.upper()
    for model, flops in PEAK_FLOPS:
        if model.upper() in name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_second: float, device_name: str, num_gpus: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the GPU's peak is unknown (CPU, unlisted models)."""
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return flops_per_token * tokens_per_second / (peak * num_gpus)
