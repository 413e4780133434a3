"""The Triton fused softcap + cross-entropy against its torch reference, on CPU under Triton's interpreter.

Run: python -m pytest tests/test_kernels.py

TRITON_INTERPRET=1 must be set before the kernels are decorated (when baselines.nanochat.kernels is first
imported), and other test modules import that module without it, so the interpreted comparison runs in a
fresh Python process with the variable set.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baselines.nanochat import kernels

REPO = Path(__file__).resolve().parents[1]

INTERPRETED_COMPARISON = r"""
import json, torch
from baselines.nanochat import kernels
assert kernels.INTERPRET and kernels.HAVE_TRITON
torch.manual_seed(0)
results = {}
# 300 columns: three 128-wide blocks with a ragged tail; rows 2 and 5 are ignored (-1).
for name, dtype in [("float32", torch.float32), ("bfloat16", torch.bfloat16)]:
    logits = (torch.randn(9, 300) * 30).to(dtype).requires_grad_()
    targets = torch.randint(0, 300, (9,))
    targets[[2, 5]] = -1
    loss = kernels.softcap_cross_entropy_triton(logits, targets)
    loss.backward()
    grad = logits.grad.clone()
    ref = kernels.softcap_cross_entropy_torch(logits, targets)  # the torch reference, float32 inside
    # Ground truth: the same reference in float64 (torch's float32 CPU softmax uses a fast exp, ~3e-6 relative).
    exact_logits = logits.detach().double().requires_grad_()
    exact = kernels.softcap_cross_entropy_torch(exact_logits, targets)
    exact.backward()
    results[name] = {
        "loss": loss.item(), "ref": ref.item(), "exact": exact.item(), "grad_dtype": str(grad.dtype),
        "grad_err": (grad.double() - exact_logits.grad).abs().max().item(),
        "grad_scale": exact_logits.grad.abs().max().item(),
        "ignored_rows_zero": bool((grad[[2, 5]] == 0).all()),
    }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED_COMPARISON], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_triton_kernel_equals_the_torch_reference_in_float32(interpreted):
    r = interpreted["float32"]
    assert r["loss"] == pytest.approx(r["ref"], rel=1e-5)
    assert r["loss"] == pytest.approx(r["exact"], rel=1e-6)
    assert r["grad_err"] < 1e-6 * r["grad_scale"]
    assert r["ignored_rows_zero"]


def test_triton_kernel_equals_the_torch_reference_on_bfloat16_logits(interpreted):
    # The kernel computes in float32 and converts the gradient to bf16 once. GPUs round that conversion to
    # nearest, but Triton's interpreter truncates toward zero (measured: 1 + 3 * 2^-9 -> 1.0), so here the
    # bound is one whole bf16 step: bf16 keeps 8 significant bits, a step is at most 2^-7 of the largest entry.
    r = interpreted["bfloat16"]
    assert r["grad_dtype"] == "torch.bfloat16"
    assert r["loss"] == pytest.approx(r["ref"], rel=1e-5)
    assert r["loss"] == pytest.approx(r["exact"], rel=1e-6)
    assert r["grad_err"] <= 2**-7 * r["grad_scale"]
    assert r["ignored_rows_zero"]


def test_torch_reference_is_softcap_then_mean_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 30.0, -30.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    targets = torch.tensor([1, 2, -1])
    z = 15 * torch.tanh(logits / 15)
    by_hand = ((torch.logsumexp(z[0], 0) - z[0, 1]) + (torch.logsumexp(z[1], 0) - z[1, 2])) / 2
    assert kernels.softcap_cross_entropy_torch(logits.float(), targets).item() == pytest.approx(
        by_hand.item(), rel=1e-5
    )
    # The third row is ignored, and 30 is capped to 15 * tanh(2) = 14.46, not kept.
    assert z[0, 1].item() == pytest.approx(15 * math.tanh(2))


def test_cpu_tensors_use_the_torch_path_without_the_interpreter():
    if kernels.INTERPRET:
        pytest.skip("this process runs with TRITON_INTERPRET=1")
    logits = torch.randn(4, 10)
    targets = torch.tensor([1, 2, 3, -1])
    assert torch.equal(
        kernels.softcap_cross_entropy(logits, targets), kernels.softcap_cross_entropy_torch(logits, targets)
    )
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.softcap_cross_entropy_triton(logits, targets)
