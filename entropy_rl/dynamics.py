"""Parameter-space entropy dynamics: pure torch, no trainer imports.

The logit-space prediction of entropy_rl.stats (-A (S - N) per token) treats every token's logits as free parameters
moved by plain gradient descent. A real update moves shared parameters, through the optimizer. The first-order
change of the batch's mean token entropy H under the parameter change d that the optimizer actually applied is

    dH_param = grad_theta H(theta_before) . d,       d = theta_after - theta_before,

exact to first order for any optimizer (tests/test_dynamics.py checks it against finite differences and, for a free
logit table under SGD, against the logit-space formula).

Attribution. The update's part that comes from this step's gradient G is -D * G for a diagonal D that the optimizer
fixes once its state is updated: D = lr for SGD, lr (1 - beta1) / ((1 - beta1^t) (sqrt(v_t / (1 - beta2^t)) + eps))
for Adam(W), with v_t the second moment *including* G. G is the (clipped) sum of each token's policy-gradient term,
so the update splits by token group k as -D * c * g_k (c: the gradient-clipping factor) and the entropy change as

    dH_k = -c (D * grad H) . g_k.

For SGD without momentum and weight decay the parts add up to dH_param exactly. For Adam the split holds D fixed at
its post-step value (D depends on G through v_t, so a group's part is its share under the step's preconditioner, not
what the update would have been without the other groups), and the momentum carried from earlier steps, weight decay
and any loss term outside the policy-gradient surrogate are what `other` = dH_param - sum_k dH_k holds.

Distributed: every dot product is a sum of local products (`dot`), so the caller adds them to its one all-reduce per
step. Under DDP / ZeRO-1/2 the attribution needs the entropy gradient of the whole batch of every rank: one all-reduce
of that vector. Under FSDP2 each rank holds a shard of every vector and the gradients come reduce-scattered from
FSDP's own backward (`grad_through_hooks`), so the dot products are sums of shard products: no extra reduction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from .stats import pearson

# The four quadrants sign(A) x sign(S - N) of the tokens the update uses; their parts add up (with `other`) to dH_param.
QUADRANTS = ("pos_adv_S_gt_N", "pos_adv_S_lt_N", "neg_adv_S_gt_N", "neg_adv_S_lt_N")
# Counterfactual groups, not part of the sum: what the tokens a regularizer removed (or weighted to zero) and the
# tokens the PPO clip silenced would have contributed through the same preconditioned step.
COUNTERFACTUAL = ("removed", "clipped")
GROUPS = QUADRANTS + COUNTERFACTUAL
# Layout of the per-step vector added to the trainer's all-reduce: [dH_param sum, attribution flag, groups...].
VALUES = 2 + len(GROUPS)

Params = list[torch.Tensor]


def trainable(model: torch.nn.Module) -> Params:
    """The parameters an optimizer updates: those with requires_grad (only the adapters under LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


def _local(x: torch.Tensor) -> torch.Tensor:
    # A DTensor (FSDP2) holds this rank's shard; the dot products are sums over shards.
    return x.to_local() if hasattr(x, "to_local") else x


def snapshot(params: Params) -> Params:
    return [_local(p.detach()).clone() for p in params]


def difference(params: Params, before: Params) -> Params:
    return [_local(p.detach()) - b for p, b in zip(params, before, strict=True)]


def dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <x_i, y_i> in float64: this rank's share of a dot product over all parameters."""
    total = torch.zeros((), dtype=torch.float64, device=xs[0].device if xs else None)
    for x, y in zip(xs, ys, strict=True):
        total += (_local(x).double() * _local(y).double()).sum()
    return total


def grad(scalar: torch.Tensor, params: Params, *, retain_graph: bool = False) -> Params:
    """d scalar / d params without touching .grad (the optimizer's gradient stays as it is); zeros where unused."""
    grads = torch.autograd.grad(scalar, params, retain_graph=retain_graph, allow_unused=True)
    pairs = zip(grads, params, strict=True)
    return [torch.zeros_like(_local(p.detach())) if g is None else _local(g) for g, p in pairs]


def grad_through_hooks(scalar: torch.Tensor, params: Params, world: int) -> Params:
    """d scalar / d params of an FSDP2-sharded model, this rank's shard of the sum over ranks.

    autograd.grad cannot reach the sharded parameters (the forward uses all-gathered copies), so this runs
    `.backward()` through FSDP's hooks, which reduce-scatter each gradient into `.grad` averaged over ranks (hence the
    factor `world`), and puts the optimizer's gradient back. A collective: every rank calls it equally often.
    """
    kept = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        scalar.backward()
        return [torch.zeros_like(_local(p.detach())) if p.grad is None else _local(p.grad) * world for p in params]
    finally:
        for p, g in zip(params, kept, strict=True):
            p.grad = g


def _optimizer_groups(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def _adam_scale(p: torch.Tensor, g: torch.Tensor, group: dict, state: dict) -> torch.Tensor:
    """D of Adam(W) for one parameter: the coefficient of this step's gradient in the step about to be taken."""
    beta1, beta2 = group["betas"]
    step = float(_local(state["step"])) + 1 if state else 1.0
    v = _local(state["exp_avg_sq"]) * beta2 + (1 - beta2) * g * g if state else (1 - beta2) * g * g
    denom = (v / (1 - beta2**step)).sqrt() + group["eps"]
    return group["lr"] * (1 - beta1) / (1 - beta1**step) / denom


def _sgd_scale(p: torch.Tensor, group: dict, state: dict) -> float:
    """D of SGD: lr, times (1 - dampening) once a momentum buffer exists (its carry goes to `other`)."""
    if group["momentum"] and state.get("momentum_buffer") is not None:
        return group["lr"] * (1 - group["dampening"])
    return group["lr"]


def preconditioner(optimizer: torch.optim.Optimizer, params: Params) -> Params | None:
    """D per parameter (update = -D * G + what does not depend on G), read before `optimizer.step()`.

    Supported: torch.optim.SGD (not Nesterov) and Adam / AdamW (not AMSGrad), with G the current `.grad`. Any other
    optimizer returns None: the caller then logs dH_param without its attribution.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    kind = type(optimizer)
    groups = _optimizer_groups(optimizer)
    scales: Params = []
    for p in params:
        group, state = groups.get(id(p)), optimizer.state.get(p, {})
        if group is None or p.grad is None or group.get("maximize") or group.get("differentiable"):
            return None
        if kind in (torch.optim.Adam, torch.optim.AdamW) and not group.get("amsgrad"):
            if kind is torch.optim.Adam and group["weight_decay"]:
                return None  # Adam's L2 term enters G itself: the split would misattribute it
            scales.append(_adam_scale(p, _local(p.grad).double(), group, state))
        elif kind is torch.optim.SGD and not group.get("nesterov"):
            scales.append(torch.full_like(_local(p.grad), _sgd_scale(p, group, state), dtype=torch.float64))
        else:
            return None
    return scales


def clip_factor(grad_norm: float | None, max_grad_norm: float) -> float:
    """The factor torch.nn.utils.clip_grad_norm_ multiplied the gradient by (1 when it did not clip)."""
    if grad_norm is None or max_grad_norm <= 0 or not math.isfinite(float(grad_norm)):
        return 1.0
    return min(1.0, max_grad_norm / (float(grad_norm) + 1e-6))


def surrogate_coefficient(advantages: torch.Tensor, ratio: torch.Tensor, unclipped: torch.Tensor) -> torch.Tensor:
    """d(per-token PPO-clip loss)/d(log p): -A r where the clip passes gradient, 0 where it does not."""
    return -(advantages * ratio * unclipped.to(ratio.dtype))


def token_groups(
    *,
    raw_advantages: torch.Tensor,
    s_minus_n: torch.Tensor,
    loss_mask: torch.Tensor,
    valid_mask: torch.Tensor,
    used_advantages: torch.Tensor,
    unclipped: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Boolean [B, T] masks of each group of GROUPS.

    Quadrants: tokens of the loss by the sign of their raw advantage and of S - N (as the diagnostics' quadrant
    fractions). `removed`: sampled tokens with a nonzero raw advantage that the update does not use (left the loss
    mask or weighted to zero by a regularizer). `clipped`: loss tokens the PPO clip silences.
    """
    loss, valid = loss_mask.bool(), valid_mask.bool()
    pos, neg, up = raw_advantages > 0, raw_advantages < 0, s_minus_n > 0
    unused = valid & (raw_advantages != 0) & (~loss | (used_advantages == 0))
    return {
        "pos_adv_S_gt_N": loss & pos & up,
        "pos_adv_S_lt_N": loss & pos & ~up,
        "neg_adv_S_gt_N": loss & neg & up,
        "neg_adv_S_lt_N": loss & neg & ~up,
        "removed": unused,
        "clipped": loss & ~unclipped.bool() & (used_advantages != 0),
    }


class ParamPrediction:
    """One measured step, from just before `optimizer.step()` to just after it.

    Before the step: `add_entropy(H_sum)` per micro-batch (H_sum: the sum of the batch's token entropies, with its
    graph), then `set_direction(...)` (u = D * grad H, from the optimizer state), then `add_groups({group: loss})`
    per micro-batch, each loss the part of the training loss from that group's tokens. After the step: `values()`.

    `sharded_world` > 0: the parameters are FSDP2 shards over that many ranks. Every gradient is then this rank's
    shard of the sum over ranks (`grad_through_hooks`), so the direction needs no all-reduce and each dot product is
    this rank's share of the global one, as in the unsharded case. Its backward passes free their graph: pass one
    group per `add_groups` call, each from a fresh forward.
    """

    def __init__(self, params: Params, *, sharded_world: int = 0):
        self.params = params
        self.sharded_world = sharded_world
        self.before = snapshot(params)
        self.grad_h: Params | None = None  # grad of this rank's entropy sum (sharded: shard of the sum over ranks)
        self.direction: Params | None = None  # D * (grad of the entropy sum of every rank), None: no attribution
        self.scale = 1.0
        self.parts = torch.zeros(len(GROUPS), dtype=torch.float64, device=self.before[0].device)

    def _grad(self, scalar: torch.Tensor, retain_graph: bool) -> Params:
        if self.sharded_world:
            return grad_through_hooks(scalar, self.params, self.sharded_world)
        return grad(scalar, self.params, retain_graph=retain_graph)

    def add_entropy(self, entropy_sum: torch.Tensor, *, retain_graph: bool = False) -> None:
        g = self._grad(entropy_sum, retain_graph)
        self.grad_h = g if self.grad_h is None else [a + b for a, b in zip(self.grad_h, g, strict=True)]

    def set_direction(
        self,
        optimizer: torch.optim.Optimizer | None,
        *,
        scale: float,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> bool:
        """u = D * grad H over every rank; `scale` multiplies each part (clip factor / DDP's averaging over ranks)."""
        scales = None if optimizer is None else preconditioner(optimizer, self.params)
        if scales is None or self.grad_h is None:
            return False
        grad_h = self.grad_h
        if all_reduce is not None and not self.sharded_world:
            # The attribution pairs every rank's entropy gradient with every rank's g_k (sharded: already summed).
            flat = all_reduce(torch.cat([g.reshape(-1).double() for g in grad_h]))
            chunks = flat.split([g.numel() for g in grad_h])
            grad_h = [chunk.view_as(g) for chunk, g in zip(chunks, grad_h, strict=True)]
        self.direction = [d * g.double() for d, g in zip(scales, grad_h, strict=True)]
        self.scale = scale
        return True

    def add_groups(self, losses: dict[str, torch.Tensor]) -> None:
        names = [name for name in GROUPS if name in losses]
        for i, name in enumerate(names):
            g = self._grad(losses[name], i + 1 < len(names))
            self.parts[GROUPS.index(name)] -= self.scale * dot(self.direction, g)

    @torch.no_grad()
    def values(self) -> torch.Tensor:
        """This rank's [grad H . d, attributed?, parts...] as sums; `step_values` turns the reduced sums into means."""
        total = dot(self.grad_h, difference(self.params, self.before)) if self.grad_h is not None else torch.zeros(())
        flag = torch.ones(()) if self.direction is not None else torch.zeros(())
        head = torch.stack([total.double().cpu(), flag.double()]).to(self.parts.device)
        return torch.cat([head, self.parts])


def step_values(values: Sequence[float], tokens: float, ranks: int) -> dict[str, float]:
    """Metrics from the all-reduced `ParamPrediction.values()`: sums over tokens become changes of the mean entropy."""
    if tokens <= 0:
        return {}
    total, flag, *parts = values
    row = {"dynamics/predicted_dH_param": total / tokens}
    if flag >= ranks - 0.5:  # every rank attributed (same optimizer everywhere, so all or none)
        # The parts are already global (the direction was reduced); each rank adds its own tokens' groups.
        for name, value in zip(GROUPS, parts, strict=True):
            row[f"dynamics/dH_param/{name}"] = value / tokens
        quadrants = sum(row[f"dynamics/dH_param/{name}"] for name in QUADRANTS)
        row["dynamics/dH_param/other"] = row["dynamics/predicted_dH_param"] - quadrants
    return row


def cumulative_windows(values: Iterable[float], size: int) -> list[float]:
    """Sums over consecutive windows of `size` values (the last, incomplete window is dropped)."""
    values = list(values)
    return [sum(values[i : i + size]) for i in range(0, len(values) - size + 1, size)]


def agreement(predicted: Sequence[float], measured: Sequence[float], window: int) -> dict[str, float | None]:
    """Pearson r of predicted vs measured entropy changes per measured step, and of their sums over windows of
    `window` consecutive measured steps (the cumulative change: noise that cancels within a window drops out)."""
    return {
        "pairs": float(len(predicted)),
        "r": pearson(list(predicted), list(measured)),
        "r_window": pearson(cumulative_windows(predicted, window), cumulative_windows(measured, window)),
    }
