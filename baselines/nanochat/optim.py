"""Muon for the block matrices and AdamW for everything else, in one ``torch.optim.Optimizer``.

    optimizer = build_optimizer(model, total_batch_tokens=2**20)   # the reference's groups and learning rates
    optimizer.step()                                                # no communication: gradients arrive averaged

Each parameter group has ``kind`` "muon" or "adamw", a base learning rate ``initial_lr`` (the schedule sets
``lr = initial_lr * multiplier``) and, for Muon, ``momentum`` and ``weight_decay`` that the schedule also sets
every step (``initial_weight_decay`` is the peak). Muon groups hold matrices of one shape; the matrices that
have a gradient are updated together as one stack, batching the small matmuls of the orthogonalisation.

Distribution: the harness owns it (``harness/sharding.py``, ZeRO-2 as the reference): each rank receives the
averaged gradients of the parameters it owns and ``.grad = None`` for the others, which ``step`` skips, so every
rank updates only its share and the harness all-gathers the weights. State is per parameter, so a full state
dict is the union of the ranks' and does not depend on the number of ranks.

Compilation (``compile_backend="inductor"`` on GPUs): the update functions take every hyperparameter that the
schedule changes (lr, momentum, weight decay, the Adam step) as a 0-D tensor on the parameters' device, refilled
in place each step, so one compiled graph per shape group serves the whole run; Python numbers would be guarded
as constants and recompile at every new value until dynamo's recompile limit sends them back to eager.
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

PRE_NORMALISATION = 1.01  # the orthogonalisation divides by 1.01 * the Frobenius norm (reference)

# Quintic polynomial coefficients for the orthogonalisation, one triple (a, b, c) per step: X <- aX + b(XX^T)X +
# c(XX^T)^2 X. "Polar Express" (Amsel et al. 2025, arXiv:2505.16932), the values used by nanochat/modded-nanogpt.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def iteration_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs, as the reference iterates; float32 elsewhere. Most CPUs have no bfloat16 matmuls and
    emulate them: a (4, 256, 256) batched matmul took 98 ms in bfloat16 and 1.2 ms in float32 on the 2-core AMD
    EPYC of our development machines, which made the Muon step 86% of a d4 smoke step (7.7 of 8.95 s)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximate the polar factor U V^T of each matrix in g (..., rows, cols), in ``dtype`` (default:
    ``iteration_dtype`` of g's device).

    Dividing by 1.01 * the Frobenius norm puts every singular value below 1, where the polynomial
    iteration drives them all towards 1 (Polar Express, section 4; 1.01 is the reference's safety factor).
    """
    x = g.to(dtype or iteration_dtype(g.device))
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * PRE_NORMALISATION + 1e-6)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation so that X X^T is the smaller Gram matrix
        x = x.mT
    for a, b, c in POLAR_EXPRESS[:steps]:
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


Scalar = float | torch.Tensor  # a Python number (eager callers, tests) or a 0-D tensor (the compiled path)


def muon_update(
    params: torch.Tensor,
    grads: torch.Tensor,
    momentum_buffer: torch.Tensor,
    second_moment: torch.Tensor,
    lr: Scalar,
    momentum: Scalar,
    weight_decay: Scalar,
    beta2: Scalar,
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
    decay: Scalar,
    one_minus_beta1: Scalar,
    beta2: Scalar,
    one_minus_beta2: Scalar,
    step_size: Scalar,
    bias2_sqrt: Scalar,
    eps: Scalar,
) -> None:
    """AdamW with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2), as torch.optim.AdamW computes it.

    The scalars are the ones torch.optim.AdamW derives on the host in float64 (``adamw_scalars``): decay =
    1 - lr * wd, step_size = lr / (1 - beta1^t), bias2_sqrt = sqrt(1 - beta2^t). The tensor arithmetic runs in
    float32 and is written back in the tensors' own dtype, so bf16 embeddings and their bf16 moments work too
    (for float32 tensors ``.float()`` is the tensor itself and nothing is copied).
    """
    p32, m32, v32, g32 = param.float(), exp_avg.float(), exp_avg_sq.float(), grad.float()
    p32.mul_(decay)
    m32.lerp_(g32, one_minus_beta1)
    v32.mul_(beta2).add_(one_minus_beta2 * g32 * g32)
    denom = (v32.sqrt() / bias2_sqrt).add_(eps)
    p32.add_(-step_size * m32 / denom)
    for tensor, value in ((param, p32), (exp_avg, m32), (exp_avg_sq, v32)):
        if tensor.dtype != torch.float32:
            tensor.copy_(value)


def adamw_scalars(step: int, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> dict:
    """``adamw_update``'s scalars for Adam step ``step`` (1-based), computed in float64 as torch.optim.AdamW does."""
    beta1, beta2 = betas
    return dict(decay=1 - lr * weight_decay, one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
                step_size=lr / (1 - beta1**step), bias2_sqrt=(1 - beta2**step) ** 0.5, eps=eps)  # fmt: skip


@functools.cache
def _compiled(fn, backend):
    return torch.compile(fn, dynamic=False, backend=backend)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules chosen per group by ``group["kind"]``.

    ``compile_backend``: None runs the update math eagerly; "inductor" (GPUs) or any torch.compile backend
    compiles ``muon_update`` and ``adamw_update`` once per shape group.
    """

    def __init__(self, param_groups: list[dict], compile_backend=None):
        defaults = dict(kind="adamw", lr=1e-3, betas=(0.9, 0.999), eps=ADAM_EPS, weight_decay=0.0, momentum=0.95,
                        beta2=MUON_BETA2, ns_steps=5)  # fmt: skip
        super().__init__(param_groups, defaults)
        self.compile_backend = compile_backend
        self._scalars: dict[torch.device, dict[str, torch.Tensor]] = {}  # 0-D hyperparameters, one set per device
        for group in self.param_groups:
            if group["kind"] not in ("muon", "adamw"):
                raise ValueError(f"parameter group kind {group['kind']!r} is unknown; use 'muon' or 'adamw'")
            if group["kind"] == "muon":
                shapes = {tuple(p.shape) for p in group["params"]}
                if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                    raise ValueError(f"a muon group needs 2-D matrices of one shape, got shapes {sorted(shapes)}")
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("initial_weight_decay", group["weight_decay"])

    def _update(self, fn):
        return fn if self.compile_backend is None else _compiled(fn, self.compile_backend)

    def _scalar_tensors(self, device: torch.device, **values: float) -> list[torch.Tensor]:
        """The same 0-D float32 tensors on ``device`` every call, refilled with ``values``: compiled code guards
        on a tensor's dtype and shape, never on its value, so changing values do not recompile."""
        slots = self._scalars.setdefault(device, {})
        out = []
        for name, value in values.items():
            if name not in slots:
                slots[name] = torch.zeros((), dtype=torch.float32, device=device)
            out.append(slots[name].fill_(value))
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient; a parameter whose ``.grad`` is None is left as it is (under
        the harness's sharding, the ones another rank owns)."""
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["kind"] == "muon":
                self._muon_step(group, params)
            else:
                self._adamw_step(group, params)

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        rows, cols = params[0].shape
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
                moment_shape = (rows, 1) if rows >= cols else (1, cols)
                state["second_moment"] = torch.zeros(moment_shape, dtype=torch.float32, device=p.device)
        states = [self.state[p] for p in params]
        momentum = [s["momentum_buffer"] for s in states]
        second = [s["second_moment"] for s in states]
        stacked, stacked_momentum, stacked_second = torch.stack(params), torch.stack(momentum), torch.stack(second)
        grads = torch.stack([p.grad for p in params])
        scalars = self._scalar_tensors(params[0].device, lr=group["lr"], momentum=group["momentum"],
                                       weight_decay=group["weight_decay"], beta2=group["beta2"])  # fmt: skip
        self._update(muon_update)(stacked, grads, stacked_momentum, stacked_second, *scalars, group["ns_steps"])
        torch._foreach_copy_(params, list(stacked.unbind(0)))
        torch._foreach_copy_(momentum, list(stacked_momentum.unbind(0)))
        torch._foreach_copy_(second, list(stacked_second.unbind(0)))

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        update = self._update(adamw_update)
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            scalars = adamw_scalars(state["step"], group["lr"], group["betas"], group["eps"], group["weight_decay"])
            update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], *self._scalar_tensors(p.device, **scalars))


def build_optimizer(
    model: nn.Module, total_batch_tokens: int, muon_weight_decay: float = 0.0, compile_backend=None
) -> MuonAdamW:
    """The reference's groups: Muon for every matrix inside the blocks, AdamW groups for the rest.

    ``model`` is a ``model.GPT``. Learning rates are scaled by sqrt(B/2^19) and, for the embedding-like AdamW
    groups, by (width/768)^-0.5 (docs/spec/reference-recipe.md, Optimizer). Raises if a parameter would be left out
    or listed twice. ``compile_backend`` as for ``MuonAdamW``.
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
    return MuonAdamW(groups, compile_backend=compile_backend)
