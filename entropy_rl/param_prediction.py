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

Momentum groups (`GroupMoments`, the trainer's `dynamics_momentum_groups`). The update the optimizer applies is

    d = -D * G_hat - C * m_{t-1} - W * theta_before,

G_hat the gradient the optimizer reads (the clipped .grad, plus SGD's coupled weight decay), m_{t-1} its first moment
(momentum buffer) from the earlier steps, C = lr beta1 / ((1 - beta1^t) (sqrt(v_hat_t) + eps)) for Adam(W) (lr mu for
SGD), W = lr * weight_decay for AdamW's decoupled decay. Every step, per-group buffers follow the optimizer's own rule,
m^G_t = beta1 m^G_{t-1} + (1 - beta1) G_hat^G, with G_hat split into the quadrants' c g_k, `rest` (.grad - c sum_k g_k:
loss terms outside the surrogate) and SGD's weight decay; started with the optimizer's (or seeded with its moment in
`rest`), they add up to m exactly, so d splits linearly through the shared denominator into each group's part from
this step's gradient and its part carried from earlier steps, and `other` is float noise (tests/test_dynamics.py).

Second order (`add_entropy_after`, the trainer's `dynamics_second_order`). The first-order prediction misses the
curvature of H along the update: H(theta + d) - H(theta) = grad H(theta) . d + 1/2 d^T (Hessian H) d + O(|d|^3). The
gradient after the update gives that term without a Hessian: the trapezoid rule

    dH_2nd = 1/2 (grad H(theta_before) + grad H(theta_after)) . d

is exact to second order, so the correction 1/2 (grad H(theta_after) - grad H(theta_before)) . d is the curvature term
up to third order. It is linear in d, so with the momentum groups (whose update parts d_k add up to d) it splits
exactly into each part's correction 1/2 (grad H(theta_after) - grad H(theta_before)) . d_k: the tokens that moved the
parameters are charged with the curvature their own displacement met along the step.

Distributed: every dot product is a sum of local products (`dot`), so the caller adds them to its one all-reduce per
step. Under DDP / ZeRO-1/2 the attribution needs the entropy gradient of the whole batch of every rank: one all-reduce
of that vector. Under FSDP2 each rank holds a shard of every vector and the gradients come reduce-scattered from
FSDP's own backward (`grad_through_hooks`), so the dot products are sums of shard products: no extra reduction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .stats import pearson

# The four quadrants sign(A) x sign(S - N) of the tokens the update uses; their parts add up (with `other`) to dH_param.
QUADRANTS = ("pos_adv_S_gt_N", "pos_adv_S_lt_N", "neg_adv_S_gt_N", "neg_adv_S_lt_N")
# Counterfactual groups, not part of the sum: what the tokens a regularizer removed (or weighted to zero) and the
# tokens the PPO clip silenced would have contributed through the same preconditioned step.
COUNTERFACTUAL = ("removed", "clipped")
GROUPS = QUADRANTS + COUNTERFACTUAL
# Layout of the per-step vector added to the trainer's all-reduce: [dH_param sum, attribution flag, groups...],
# followed by MOMENTUM_PARTS when the momentum groups are tracked.
VALUES = 2 + len(GROUPS)
# The momentum groups' buffers: the quadrants and `rest`, the optimizer's gradient outside them (loss terms outside the
# surrogate; after a resume, also the moment from before the buffers started).
MOMENTUM_GROUPS = (*QUADRANTS, "rest")
# Their parts beyond the quadrants' current ones: each buffer's carried part, rest's current part, and weight decay
# (AdamW's decoupled decay; SGD's coupled decay, now and carried). With them `other` is float noise.
MOMENTUM_PARTS = (*(f"carried/{name}" for name in MOMENTUM_GROUPS), "rest", "weight_decay")
# With the second-order term (`add_entropy_after`): the whole correction, then each update part's share of it.
SECOND_ORDER_PARTS = (*QUADRANTS, *MOMENTUM_PARTS)

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


@dataclass
class Coefficients:
    """How the step about to be taken depends on its inputs, for one parameter:
    update = -current * G_hat - carried * moment - decay * theta, G_hat = .grad + coupled_decay * theta, and the
    first moment moves on as moment' = keep * moment + add * G_hat (moment: None before the optimizer made one)."""

    current: torch.Tensor
    carried: torch.Tensor | float
    decay: float
    coupled_decay: float
    keep: float
    add: float
    moment: torch.Tensor | None


def _adam_coefficients(g: torch.Tensor, group: dict, state: dict, decoupled: bool) -> Coefficients:
    """Adam(W): P = lr / ((1 - beta1^t) (sqrt(v_t / (1 - beta2^t)) + eps)) multiplies
    m_t = beta1 m_{t-1} + (1 - beta1) G: `current` = P (1 - beta1), `carried` = P beta1."""
    beta1, beta2 = group["betas"]
    step = float(_local(state["step"])) + 1 if state else 1.0
    v = _local(state["exp_avg_sq"]) * beta2 + (1 - beta2) * g * g if state else (1 - beta2) * g * g
    denom = (v / (1 - beta2**step)).sqrt() + group["eps"]
    current = group["lr"] * (1 - beta1) / (1 - beta1**step) / denom
    carried = group["lr"] * beta1 / (1 - beta1**step) / denom
    decay = group["lr"] * group["weight_decay"] if decoupled else 0.0
    moment = _local(state["exp_avg"]) if state else None
    return Coefficients(current, carried, decay=decay, coupled_decay=0.0, keep=beta1, add=1 - beta1, moment=moment)


def _sgd_coefficients(g: torch.Tensor, group: dict, state: dict) -> Coefficients:
    """SGD: lr, times (1 - dampening) once a momentum buffer exists (which then carries with lr * momentum)."""
    has_buffer = bool(group["momentum"]) and state.get("momentum_buffer") is not None
    current = group["lr"] * (1 - group["dampening"]) if has_buffer else group["lr"]
    carried = group["lr"] * group["momentum"] if has_buffer else 0.0
    # torch's first momentum step copies G into the buffer (no dampening); without momentum there is no buffer.
    keep, add = (group["momentum"], 1 - group["dampening"]) if has_buffer else (0.0, float(bool(group["momentum"])))
    moment = _local(state["momentum_buffer"]) if has_buffer else None
    return Coefficients(
        torch.full_like(g, current),
        carried,
        decay=0.0,
        coupled_decay=group["weight_decay"],
        keep=keep,
        add=add,
        moment=moment,
    )


def coefficients(optimizer: torch.optim.Optimizer, params: Params) -> list[Coefficients] | None:
    """Per parameter, read before `optimizer.step()` with G the current `.grad`; None for an unsupported optimizer.

    Supported: torch.optim.SGD (not Nesterov) and Adam / AdamW (not AMSGrad; Adam without weight decay).
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    kind = type(optimizer)
    groups = _optimizer_groups(optimizer)
    out: list[Coefficients] = []
    for p in params:
        group, state = groups.get(id(p)), optimizer.state.get(p, {})
        if group is None or p.grad is None or group.get("maximize") or group.get("differentiable"):
            return None
        g = _local(p.grad).double()
        if kind in (torch.optim.Adam, torch.optim.AdamW) and not group.get("amsgrad"):
            if kind is torch.optim.Adam and group["weight_decay"]:
                return None  # Adam's L2 term enters G and v_t: D would not be the one the step uses
            out.append(_adam_coefficients(g, group, state, decoupled=kind is torch.optim.AdamW))
        elif kind is torch.optim.SGD and not group.get("nesterov"):
            out.append(_sgd_coefficients(g, group, state))
        else:
            return None
    return out


def preconditioner(optimizer: torch.optim.Optimizer, params: Params) -> Params | None:
    """D per parameter (update = -D * G + what does not depend on G), read before `optimizer.step()`.

    D = lr for SGD (times 1 - dampening once momentum builds), lr (1 - beta1) / ((1 - beta1^t) (sqrt(v_hat_t) + eps))
    for Adam / AdamW. Any optimizer `coefficients` does not support returns None: the caller then logs dH_param
    without its attribution.
    """
    found = coefficients(optimizer, params)
    return None if found is None else [c.current for c in found]


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

    def __init__(
        self,
        params: Params,
        *,
        sharded_world: int = 0,
        moments: GroupMoments | None = None,
        second_order: bool = False,
    ):
        self.params = params
        self.sharded_world = sharded_world
        self.moments = moments  # the quadrants' gradients go to it too; its parts join values()
        self.momentum_parts: torch.Tensor | None = None
        # second_order (needs `moments`): each update part's vector d_k, kept until `add_entropy_after`
        self.updates: dict[str, Params] | None = {} if second_order else None
        self.second_order_parts: torch.Tensor | None = None
        self.scales: Params | None = None  # D, the step's preconditioner
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
        self.scales, self.scale = scales, scale
        return True

    def add_groups(self, losses: dict[str, torch.Tensor]) -> None:
        names = [name for name in GROUPS if name in losses]
        for i, name in enumerate(names):
            g = self._grad(losses[name], i + 1 < len(names))
            self.parts[GROUPS.index(name)] -= self.scale * dot(self.direction, g)
            if self.updates is not None and name in QUADRANTS:
                update = [-self.scale * d * x.double() for d, x in zip(self.scales, g, strict=True)]
                kept = self.updates.get(name)
                self.updates[name] = update if kept is None else [a + b for a, b in zip(kept, update, strict=True)]
            if self.moments is not None and name in QUADRANTS:
                self.moments.add(name, g)

    def advance_moments(self, optimizer: torch.optim.Optimizer) -> None:
        """After `add_groups`: the momentum groups' parts of this step (they need `set_direction`'s attribution)."""
        attributed = self.direction is not None
        updates = self.updates if attributed else None
        parts = self.moments.advance(optimizer, self.scale, self.grad_h if attributed else None, updates=updates)
        self.momentum_parts = parts if attributed else None

    @torch.no_grad()
    def add_entropy_after(self, grad_after: Params) -> None:
        """After `optimizer.step()`, given the gradient of the same entropy sum at the new parameters: the second-order
        correction 1/2 (grad_after - grad_before) . d and each update part's share of it (module docstring)."""
        if self.updates is None or self.momentum_parts is None or self.grad_h is None:
            return
        change = [_local(a).double() - b.double() for a, b in zip(grad_after, self.grad_h, strict=True)]
        total = 0.5 * dot(change, difference(self.params, self.before))
        zeros = [torch.zeros_like(c) for c in change]
        parts = [0.5 * dot(change, self.updates.get(name, zeros)) for name in SECOND_ORDER_PARTS]
        self.second_order_parts = torch.stack([total, *parts]).to(self.parts.device)
        self.updates = {}  # the vectors are spent

    @torch.no_grad()
    def values(self) -> torch.Tensor:
        """This rank's [grad H . d, attributed?, parts...] as sums; `step_values` turns the reduced sums into means."""
        total = dot(self.grad_h, difference(self.params, self.before)) if self.grad_h is not None else torch.zeros(())
        flag = torch.ones(()) if self.direction is not None else torch.zeros(())
        head = torch.stack([total.double().cpu(), flag.double()]).to(self.parts.device)
        tail = [] if self.momentum_parts is None else [self.momentum_parts.to(self.parts.device)]
        if self.second_order_parts is not None:
            tail.append(self.second_order_parts)
        return torch.cat([head, self.parts, *tail])


class GroupMoments:
    """Per-group copies of the optimizer's first moment, kept across steps (the trainer's `dynamics_momentum_groups`).

    Every step, before `optimizer.step()`: `add_losses({quadrant: loss})` per micro-batch (or `add` of gradients the
    measuring step already has), then `advance(optimizer, scale)`, which, given the entropy gradient on a measuring
    step, returns the sums of MOMENTUM_PARTS, and moves every buffer on by the optimizer's rule. The buffers sum to
    the optimizer's moment: they start with it (at zero, or with a resumed moment in `rest`) and follow the same
    linear update with gradients that sum to the optimizer's. One process only (the buffers are whole tensors).
    """

    def __init__(self, params: Params):
        self.params = params
        self.buffers: dict[str, Params] | None = None  # MOMENTUM_GROUPS and "weight_decay" (SGD's coupled decay)
        self.grads: dict[str, Params] = {}  # this step's unclipped quadrant gradients, summed over micro-batches

    def add(self, name: str, g: Params) -> None:
        kept = self.grads.get(name)
        self.grads[name] = g if kept is None else [a + b for a, b in zip(kept, g, strict=True)]

    def add_losses(self, losses: dict[str, torch.Tensor]) -> None:
        names = [name for name in QUADRANTS if name in losses]
        for i, name in enumerate(names):
            self.add(name, grad(losses[name], self.params, retain_graph=i + 1 < len(names)))

    def _zeros(self) -> Params:
        return [torch.zeros_like(_local(p.detach())) for p in self.params]

    @torch.no_grad()
    def advance(
        self,
        optimizer: torch.optim.Optimizer,
        scale: float,
        grad_h: Params | None = None,
        *,
        updates: dict[str, Params] | None = None,
    ) -> torch.Tensor | None:
        """This step's parts (sums in MOMENTUM_PARTS order, when `grad_h` is given), then the buffers take the step.

        `scale`: the gradient-clipping factor. `updates`: a dict that receives each part's update vector (the second
        order). None, and the buffers dropped, for an optimizer `coefficients` does not support.
        """
        found = coefficients(optimizer, self.params)
        grads, self.grads = self.grads, {}
        if found is None:
            self.buffers = None
            return None
        theta = [_local(p.detach()) for p in self.params]
        # In place: the gradients are this object's own (fresh from autograd.grad or summed here).
        step = {name: [g.mul_(scale) for g in grads[name]] if name in grads else self._zeros() for name in QUADRANTS}
        quadrants = [sum(parts) for parts in zip(*(step[name] for name in QUADRANTS), strict=True)]
        step["rest"] = [_local(p.grad) - q for p, q in zip(self.params, quadrants, strict=True)]
        step["weight_decay"] = [c.coupled_decay * t for c, t in zip(found, theta, strict=True)]
        if self.buffers is None:  # started with the optimizer, or after it: its moment so far goes to `rest`
            self.buffers = {name: self._zeros() for name in (*MOMENTUM_GROUPS, "weight_decay")}
            self.buffers["rest"] = [
                b if c.moment is None else c.moment.clone() for b, c in zip(self.buffers["rest"], found, strict=True)
            ]
        parts = None if grad_h is None else self._parts(found, grad_h, step, theta, updates)
        for name, buffers in self.buffers.items():
            for buffer, g, c in zip(buffers, step[name], found, strict=True):
                buffer.mul_(c.keep).add_(g.to(buffer.dtype), alpha=c.add)
        return parts

    def _parts(
        self,
        found: list[Coefficients],
        grad_h: Params,
        step: dict[str, Params],
        theta: Params,
        updates: dict[str, Params] | None,
    ) -> torch.Tensor:
        """grad_h . d_k for each part's update vector d_k (each built, dotted and, for `updates`, kept in turn)."""

        def carried(name: str) -> Params:
            return [-c.carried * b.double() for c, b in zip(found, self.buffers[name], strict=True)]

        def rest() -> Params:
            return [-c.current * g.double() for c, g in zip(found, step["rest"], strict=True)]

        def weight_decay() -> Params:
            # AdamW's decoupled decay, and SGD's coupled decay now (through D) and carried (through its buffer)
            parts = zip(found, theta, step["weight_decay"], self.buffers["weight_decay"], strict=True)
            return [-c.decay * t.double() - c.current * w.double() - c.carried * b.double() for c, t, w, b in parts]

        builders = {f"carried/{name}": (lambda name=name: carried(name)) for name in MOMENTUM_GROUPS}
        builders.update(rest=rest, weight_decay=weight_decay)
        values = []
        for name in MOMENTUM_PARTS:
            vector = builders[name]()
            values.append(dot(grad_h, vector))
            if updates is not None:
                updates[name] = vector
        return torch.stack(values)


def step_values(values: Sequence[float], tokens: float, ranks: int) -> dict[str, float]:
    """Metrics from the all-reduced `ParamPrediction.values()`: sums over tokens become changes of the mean entropy."""
    if tokens <= 0:
        return {}
    total, flag, *parts = values
    row = {"dynamics/predicted_dH_param": total / tokens}
    if flag >= ranks - 0.5:  # every rank attributed (same optimizer everywhere, so all or none)
        # The parts are already global (the direction was reduced); each rank adds its own tokens' groups.
        first_order = GROUPS if len(parts) == len(GROUPS) else GROUPS + MOMENTUM_PARTS
        names = [*first_order]
        if len(parts) > len(first_order):  # the second-order correction and its parts follow
            names += ["second_order", *(f"second_order/{name}" for name in SECOND_ORDER_PARTS)]
        for name, value in zip(names, parts, strict=True):
            row[f"dynamics/dH_param/{name}"] = value / tokens
        if "dynamics/dH_param/second_order" in row:
            row["dynamics/predicted_dH_param_2nd"] = total / tokens + row["dynamics/dH_param/second_order"]
        explained = sum(row[f"dynamics/dH_param/{name}"] for name in first_order if name not in COUNTERFACTUAL)
        row["dynamics/dH_param/other"] = row["dynamics/predicted_dH_param"] - explained
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
