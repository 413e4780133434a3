"""Validation bits per byte: a tokenizer-independent loss over the fixed validation rows.

    from evals.bpb import evaluate_bpb
    bpb = evaluate_bpb(model, rows, tokenizer.token_bytes(), device_batch=32, device="cuda")

val_bpb = (sum of cross-entropy nats over target tokens) / (ln 2 * sum of the UTF-8 byte lengths of those targets),
where targets with zero bytes (special tokens such as BOS) and ignored targets (id < 0) count in neither sum
(docs/spec/reference-recipe.md, Validation bits per byte). Under torch.distributed, rank r evaluates rows r::world and
both sums are all-reduced, so the value does not depend on the number of ranks. The caller chooses the compute dtype
(autocast) and puts the model in eval mode; the loss itself is computed from float32 logits.

The referee computes a run's final val_bpb with this function on the run's exported model, in a process of its
own (``python -m harness.evaluate``), on the profile's fixed validation rows (``harness.loader.validation_rows``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F


def evaluate_bpb(
    model: Callable[[torch.Tensor], torch.Tensor],
    rows: torch.Tensor,
    token_bytes: torch.Tensor,
    device_batch: int,
    device: str | torch.device = "cpu",
) -> float:
    """Bits per byte of ``model`` on ``rows`` ((N, T+1) int64: inputs row[:-1], targets row[1:]).

    ``model(inputs)`` must return (B, T, V) logits. ``token_bytes[id]`` is the byte length of token ``id``
    (``Tokenizer.token_bytes()``; 0 for special tokens).
    """
    if rows.dim() != 2 or rows.shape[1] < 2 or rows.dtype != torch.int64:
        raise ValueError(f"rows must be an (N, T+1) int64 tensor with T >= 1, got {tuple(rows.shape)} {rows.dtype}")
    if device_batch <= 0:
        raise ValueError(f"device_batch={device_batch}: pass a positive number of rows per forward")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    token_bytes = token_bytes.to(device=device, dtype=torch.int64)
    mine = rows[rank::world]
    # float64 sums: tens of millions of per-token losses must not lose digits to accumulation order.
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # nats, bytes
    with torch.no_grad():
        for at in range(0, len(mine), device_batch):
            batch = mine[at : at + device_batch].to(device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            logits = model(inputs)
            if logits.dim() != 3 or logits.shape[:2] != inputs.shape:
                raise ValueError(
                    f"the model returned shape {tuple(logits.shape)} for input {tuple(inputs.shape)}; "
                    "val_bpb needs (B, T, vocab) logits from model(inputs)"
                )
            valid = targets >= 0
            safe = torch.where(valid, targets, torch.zeros_like(targets))
            nbytes = torch.where(valid, token_bytes[safe], torch.zeros_like(safe))
            nats = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), reduction="none")
            counted = nbytes.flatten() > 0
            totals[0] += nats[counted].double().sum()
            totals[1] += nbytes.flatten()[counted].double().sum()
    if distributed:
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    nats, nbytes = totals.tolist()
    if nbytes == 0:
        raise ValueError("val_bpb: the rows hold no target tokens with bytes (empty rows, or only special tokens)")
    return nats / (math.log(2) * nbytes)
