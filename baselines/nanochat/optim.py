"""Muon for the block matrices and AdamW for everything else, in one ``torch.optim.Optimizer``.

    optimizer = build_optimizer(model, total_batch_tokens=2**20)   # the reference's groups and learning rates
    optimizer.step()                                                # no communication: gradients arrive averaged

Each parameter group has ``kind`` "muon" or "adamw", a base learning rate ``initial_lr`` (the schedule sets
``lr = initial_lr * multiplier``) and, for Muon, ``momentum`` and ``weight_decay`` that the schedule also sets
every step (``initial_weight_decay`` is the peak). Muon groups hold matrices of one shape, so their update
runs once on the stacked matrices, batching the small matmuls of the orthogonalisation.

Distribution: the harness wraps the model in DistributedDataParallel, so every rank holds averaged gradients
and runs the full update itself. The reference instead reduce-scatters inside the optimizer and shards its
state (ZeRO-2); see README.md for the trade-off. On CUDA the update math is compiled with torch.compile.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import torch
import torch.nn as nn

from baselines.nanochat.depth import batch_lr_scale, width_lr_scale

# Reference hyperparameters (docs/spec/reference-recipe.md, Optimizer). Each AdamW entry:
# (learning rate, betas, weight decay, scaled by (width/768)^-0.5?, scaled by sqrt(B/2^19)?)
MUON_LR = 0.02
MUON_BETA2 = 0.9  # NorMuon's second-moment decay
ADAM_EPS = 1e-10
ADAMW_GROUPS = {
    "lm_head": (0.008, (0.8, 0.96), 0.01, True, True),
    "token_embedding": (0.3, (0.8, 0.995), 0.001, True, True),
    "value_embeddings": (0.15, (0.8, 0.995), 0.01, True, True),
    "resid_lambdas": (0.005, (0.8, 0.95), 0.05, False, True),
    "x0_lambdas": (0.5, (0.96, 0.95), 0.0, False, True),
    "smear_backout": (0.2, (0.8, 0.95), 0.0, False, False),
}

# Quintic polynomial coefficients for the orthogonalisation, one triple (a, b, c) per step: X <- aX + b(XX^T)X +
# c(XX^T)^2 X. "Polar Express" (Amsel et al. 2025, arXiv:2505.16932), the values used by nanochat/modded-nanogpt.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate the polar factor U V^T of each matrix in g (..., rows, cols), in bfloat16.

    Dividing by 1.02 * the Frobenius norm puts every singular value below 1, where the polynomial
    iteration drives them all towards 1 (Polar Express, section 4; the 1.02 is its safety factor).
    """
    x = g.bfloat16()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation so that X X^T is the smaller Gram matrix
        x = x.mT
    for a, b, c in POLAR_EXPRESS[:steps]:
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def muon_update(
    params: torch.Tensor,
    grads: torch.Tensor,
    momentum_buffer: torch.Tensor,
    second_moment: torch.Tensor,
    lr: float,
    momentum: float,
    weight_decay: float,
    beta2: float,
    steps: int,
) -> None:
    """One Muon step on stacked matrices (n, rows, cols), in place. Follows nanochat's fused Muon step:

    1. Nesterov momentum: buf <- lerp(buf, g, 1-mu); update direction lerp(g, buf, mu).
    2. Orthogonalise the direction (``orthogonalize``).
    3. NorMuon (Li et al. 2025, arXiv:2510.05491): divide each row (or column, for wide matrices) by the root
       of a running mean of its squared entries, then rescale so the update keeps its Frobenius norm.
    4. Cautious weight decay (Chen et al. 2025, arXiv:2510.12402): decay only where update and parameter agree
       in sign, then p <- p - lr * (update + wd * p * mask). lr carries sqrt(max(1, rows/cols)).
    """
    momentum_buffer.lerp_(grads, 1 - momentum)
    update = grads.lerp(momentum_buffer, momentum)
    update = orthogonalize(update, steps).float()

    reduce_dim = -1 if update.size(-2) >= update.size(-1) else -2  # per row for tall/square, per column for wide
    mean_square = update.square().mean(dim=reduce_dim, keepdim=True)
    norm_before = (mean_square.sum(dim=(-2, -1), keepdim=True) * update.size(reduce_dim)).sqrt()
    second_moment.lerp_(mean_square, 1 - beta2)
    step_size = second_moment.clamp_min(1e-10).rsqrt()
    norm_after = (mean_square * update.size(reduce_dim) * step_size.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    update = update * (step_size * norm_before / norm_after.clamp_min(1e-10))

    lr = lr * math.sqrt(max(1.0, params.size(-2) / params.size(-1)))
    mask = (update * params) >= 0
    params.sub_(lr * (update + weight_decay * params * mask))


def adamw_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """AdamW with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2), as torch.optim.AdamW computes it."""
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias1)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules chosen per group by ``group["kind"]``."""

    def __init__(self, param_groups: list[dict]):
        defaults = dict(kind="adamw", lr=1e-3, betas=(0.9, 0.999), eps=ADAM_EPS, weight_decay=0.0, momentum=0.95,
                        beta2=MUON_BETA2, ns_steps=5)  # fmt: skip
        super().__init__(param_groups, defaults)
        for group in self.param_groups:
            if group["kind"] not in ("muon", "adamw"):
                raise ValueError(f"parameter group kind {group['kind']!r} is unknown; use 'muon' or 'adamw'")
            if group["kind"] == "muon":
                shapes = {tuple(p.shape) for p in group["params"]}
                if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                    raise ValueError(f"a muon group needs 2-D matrices of one shape, got shapes {sorted(shapes)}")
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("initial_weight_decay", group["weight_decay"])

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        for group in self.param_groups:
            if all(p.grad is None for p in group["params"]):
                continue
            compile_ = group["params"][0].is_cuda  # the update math is compiled on GPU, eager elsewhere
            if group["kind"] == "muon":
                self._muon_step(group, group["params"], compile_)  # the whole stack, so its state keeps its shape
            else:
                self._adamw_step(group, [p for p in group["params"] if p.grad is not None], compile_)

    def _muon_step(self, group: dict, params: list[torch.Tensor], compile_: bool) -> None:
        state = self.state[params[0]]  # one state for the whole stack, kept under the first matrix
        stacked = torch.stack(params)
        if not state:
            rows, cols = params[0].shape
            moment_shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["momentum_buffer"] = torch.zeros_like(stacked)
            state["second_moment"] = torch.zeros(moment_shape, dtype=torch.float32, device=stacked.device)
        update = _compiled(muon_update) if compile_ else muon_update
        grads = torch.stack([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
        update(stacked, grads, state["momentum_buffer"], state["second_moment"],
               group["lr"], group["momentum"], group["weight_decay"], group["beta2"], group["ns_steps"])  # fmt: skip
        torch._foreach_copy_(params, list(stacked.unbind(0)))

    def _adamw_step(self, group: dict, params: list[torch.Tensor], compile_: bool) -> None:
        update = _compiled(adamw_update) if compile_ else adamw_update
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"], beta1, beta2,
                   group["eps"], group["weight_decay"])  # fmt: skip


def build_optimizer(model: nn.Module, total_batch_tokens: int, muon_weight_decay: float = 0.0) -> MuonAdamW:
    """The reference's groups: Muon for every matrix inside the blocks, AdamW groups for the rest.

    ``model`` is a ``model.GPT``. Learning rates are scaled by sqrt(B/2^19) and, for the embedding-like AdamW
    groups, by (width/768)^-0.5 (docs/spec/reference-recipe.md, Optimizer). Raises if a parameter would be left out or
    listed twice.
    """
    batch_scale = batch_lr_scale(total_batch_tokens)
    width_scale = width_lr_scale(model.dims.width)
    adamw_params = {
        "lm_head": [model.lm_head.weight],
        "token_embedding": [model.wte.weight],
        "value_embeddings": [e.weight for e in model.value_embeds.values()],
        "resid_lambdas": [model.resid_lambdas],
        "x0_lambdas": [model.x0_lambdas],
        "smear_backout": [model.smear_gate.weight, model.smear_lambda, model.backout_lambda],
    }
    groups = []
    for name, params in adamw_params.items():
        lr, betas, wd, by_width, by_batch = ADAMW_GROUPS[name]
        lr = lr * (width_scale if by_width else 1.0) * (batch_scale if by_batch else 1.0)
        if params:
            groups.append(
                dict(name=name, kind="adamw", params=params, lr=lr, betas=betas, eps=ADAM_EPS, weight_decay=wd)
            )
    by_shape = defaultdict(list)
    for p in model.blocks.parameters():
        by_shape[tuple(p.shape)].append(p)
    for shape, params in sorted(by_shape.items()):
        groups.append(dict(name=f"muon_{shape[0]}x{shape[1]}", kind="muon", params=params, lr=MUON_LR * batch_scale,
                           momentum=0.95, weight_decay=muon_weight_decay, beta2=MUON_BETA2))  # fmt: skip

    listed = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    if len(listed) != len(set(listed)) or set(listed) != set(trainable):
        missing = sorted(n for i, n in trainable.items() if i not in set(listed))
        raise ValueError(f"optimizer groups must hold every parameter exactly once; missing {missing}")
    return MuonAdamW(groups)
