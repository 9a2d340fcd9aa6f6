"""The parameter-space entropy prediction during training (the math is entropy_rl.param_prediction): on measuring
steps, just before the optimizer step, the gradient of the batch's entropy and each token group's share of the
update; the trainer adds the resulting dot products to the step's one all-reduce."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import param_prediction
from ..config import EntropyGRPOConfig
from ..errors import ConfigError, check
from ..tokens import CLIP_LOSS_TYPES, per_token, token_ratio, unclipped_mask
from .batch_keys import RAW_ADV_KEY, S_MINUS_N_KEY, loss_mask, valid_mask


def is_attributable(loss_type: str, importance_sampling_level: str) -> bool:
    """Whether the update splits by token group: a PPO-clip loss with token-level ratios."""
    return loss_type in CLIP_LOSS_TYPES and importance_sampling_level == "token"


@dataclass(frozen=True)
class PolicyLoss:
    """What the probe reads of the trainer's policy loss."""

    # TRL's (log p, entropy) call: (model, input_ids, attention_mask, logits_to_keep, compute_entropy=) -> (lp, H, _)
    logps_and_entropies: Callable[..., tuple]
    normalize: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]  # TRL's aggregation of a per-token loss
    epsilon_low: float
    epsilon_high: float
    attributable: bool  # a PPO-clip loss with token-level ratios: the update splits by token group (is_attributable)
    # TRL's top_entropy_quantile < 1: its (entropies, loss mask) -> the tokens its loss keeps; None: every loss token
    high_entropy_mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Update:
    """The update about to be taken."""

    model: torch.nn.Module  # the bare module (DDP: its autograd.grad leaves .grad alone; FSDP2: it holds the hooks)
    optimizer: Any
    batches: list[dict[str, Any]]  # the step's micro-batches, with RAW_ADV_KEY and S_MINUS_N_KEY
    world: int  # processes
    sharded: bool  # FSDP2: parameters are shards, gathered by the module's hooks
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None  # sum over processes (None on one)


class ParamProbe:
    """Owns the measured step's prediction (until the step ends), the pre-clip gradient norm and the momentum groups'
    buffers (`dynamics_momentum_groups`, kept for the whole run)."""

    def __init__(self, args: EntropyGRPOConfig, loss: PolicyLoss):
        self.args, self.loss = args, loss
        self.grad_norm: float | None = None  # pre-clip gradient norm of the step about to be taken
        self._prediction: param_prediction.ParamPrediction | None = None
        self._moments: param_prediction.GroupMoments | None = None
        self._update: Update | None = None  # the measured step's update, for the gradient after it (second order)

    def check(
        self,
        *,
        world: int,
        fsdp: bool,
        fsdp1: bool,
        deepspeed: bool,
        zero3: bool,
        loss_type: str,
        importance_sampling_level: str,
    ) -> None:
        """Refuse the settings the prediction does not support, naming the field: `world` processes, FSDP (`fsdp1`
        when version 1), DeepSpeed (`zero3` at ZeRO stage 3), the trainer's loss type and ratio level."""
        if not (self.args.dynamics_param and self.args.dynamics_every):
            return
        if self.args.dynamics_momentum_groups:
            # Its buffers are whole tensors fed with this process's group gradients: one process only.
            distributed = world > 1 or fsdp or deepspeed
            check(not distributed, "dynamics_momentum_groups", True, "False with several processes, FSDP or DeepSpeed")
            check(
                is_attributable(loss_type, importance_sampling_level),
                "dynamics_momentum_groups",
                True,
                f"False with loss_type={loss_type!r} / importance_sampling_level="
                f"{importance_sampling_level!r} (the split needs a PPO-clip loss with token-level ratios)",
            )
        if fsdp1 or zero3:
            raise ConfigError(
                "invalid config: dynamics_param=True with FSDP version 1 / ZeRO-3; allowed: dynamics_param=False "
                "there, or fsdp_version 2 (supported: one process, DDP, ZeRO-1/2, FSDP2)"
            )

    def watch_clip_norm(self, accelerator: Any) -> None:
        """transformers 4.x clips inline in its training loop, with no `_clip_grad_norm` to wrap: record the pre-clip
        norm from the accelerator call it makes there instead."""
        clip = accelerator.clip_grad_norm_

        def recording(*args: Any, **kwargs: Any) -> Any:
            self.grad_norm = clip(*args, **kwargs)
            return self.grad_norm

        accelerator.clip_grad_norm_ = recording

    def take_prediction(self) -> param_prediction.ParamPrediction | None:
        """After optimizer.step(): the measured step's prediction, once (None on other steps), with its second-order
        term when asked for (the gradient of the same batch's entropy at the new parameters)."""
        prediction, self._prediction = self._prediction, None
        update, self._update = self._update, None
        if prediction is not None and update is not None:
            prediction.add_entropy_after(_entropy_grad(self.loss, update))
        return prediction

    def before_update(self, update: Update, *, measuring: bool) -> None:
        """Just before optimizer.step(): on a `measuring` step (with dynamics_param), the grad of the entropy sum and
        each group's share; with the momentum groups, on every step, their buffers move on."""
        if self.args.dynamics_momentum_groups and self._moments is None:  # kept for the rest of the run
            self._moments = param_prediction.GroupMoments(param_prediction.trainable(update.model))
        if not measuring:
            if self._moments is not None:
                self._advance_moments(update)
            return
        prediction = param_prediction.ParamPrediction(
            param_prediction.trainable(update.model),
            sharded_world=update.world if update.sharded else 0,
            moments=self._moments,
            second_order=self.args.dynamics_second_order,
        )
        self._update = update if self.args.dynamics_second_order else None
        batches = update.batches
        reuse = len(batches) == 1 and not update.sharded  # one micro-batch: its graph serves both passes
        kept = []
        for inputs in batches:
            logps, entropies = _forward(self.loss, update.model, inputs)
            prediction.add_entropy((entropies * valid_mask(inputs)).sum(), retain_graph=reuse)
            kept.append((logps, entropies) if reuse else None)
        # DDP averages the ranks' gradients.
        scale = param_prediction.clip_factor(self.grad_norm, self.args.max_grad_norm) / update.world
        optimizer = update.optimizer if self.loss.attributable else None
        if prediction.set_direction(optimizer, scale=scale, all_reduce=update.all_reduce):
            for inputs, forward in zip(batches, kept, strict=True):
                if not update.sharded:
                    logps, entropies = forward or _forward(self.loss, update.model, inputs)
                    prediction.add_groups(_group_losses(self.loss, logps, entropies, inputs))
                    continue
                # Every rank runs one backward per group (a collective), a fresh forward each: FSDP frees the
                # gathered parameters after a backward.
                for name in param_prediction.GROUPS:
                    losses = _group_losses(
                        self.loss, *_forward(self.loss, update.model, inputs), inputs, every_group=True
                    )
                    prediction.add_groups({name: losses[name]})
        if self._moments is not None:
            prediction.advance_moments(update.optimizer)
        self._prediction = prediction

    def _advance_moments(self, update: Update) -> None:
        """A step that does not measure: the quadrants' gradients (a forward and up to 4 backward passes per
        micro-batch) move the momentum groups' buffers on with the optimizer's."""
        for inputs in update.batches:
            # Entropies only where TRL's loss keeps the high-entropy tokens alone.
            logps, entropies = _forward(
                self.loss, update.model, inputs, compute_entropy=self.loss.high_entropy_mask is not None
            )
            losses = _group_losses(self.loss, logps, entropies, inputs)
            self._moments.add_losses({name: losses[name] for name in param_prediction.QUADRANTS if name in losses})
        clip = param_prediction.clip_factor(self.grad_norm, self.args.max_grad_norm)
        self._moments.advance(update.optimizer, clip)


def _entropy_grad(loss: PolicyLoss, update: Update) -> param_prediction.Params:
    """The gradient of the update's batch's entropy sum at the current parameters (one process: the second order)."""
    params = param_prediction.trainable(update.model)
    total: param_prediction.Params | None = None
    for inputs in update.batches:
        entropies = _forward(loss, update.model, inputs)[1]
        g = param_prediction.grad((entropies * valid_mask(inputs)).sum(), params)
        total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
    return total


def _forward(
    loss: PolicyLoss, model: torch.nn.Module, inputs: dict[str, Any], *, compute_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p, entropy) of the micro-batch's completion tokens under the current parameters, with the graph."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    logps, entropies, _ = loss.logps_and_entropies(
        model, ids, attention, inputs["completion_ids"].size(1), compute_entropy=compute_entropy
    )
    return logps, entropies


def _group_losses(
    loss: PolicyLoss,
    logps: torch.Tensor,
    entropies: torch.Tensor | None,
    inputs: dict[str, Any],
    *,
    every_group: bool = False,
) -> dict[str, torch.Tensor]:
    """The part of TRL's PPO-clip loss that each token group of param_prediction.GROUPS contributes (same
    normaliser); groups without tokens are left out unless `every_group` (a zero loss then). With TRL's
    `top_entropy_quantile` its loss keeps only the high-entropy tokens: the others count as `removed`."""
    old = inputs.get("old_per_token_logps")
    ratio = token_ratio(logps.detach(), old)
    used = per_token(inputs["advantages"], logps).to(logps.dtype)
    raw = per_token(inputs[RAW_ADV_KEY], logps).to(logps.dtype)
    unclipped = unclipped_mask(ratio, used, loss.epsilon_low, loss.epsilon_high)
    valid = valid_mask(inputs)
    masks = param_prediction.token_groups(
        raw_advantages=raw,
        s_minus_n=inputs[S_MINUS_N_KEY],
        loss_mask=_loss_tokens(loss, entropies, inputs),
        valid_mask=valid,
        used_advantages=used,
        unclipped=unclipped,
    )
    coefficient = {
        name: param_prediction.surrogate_coefficient(used, ratio, unclipped) for name in param_prediction.QUADRANTS
    }
    coefficient["removed"] = -(raw * ratio)  # had it stayed, unclipped
    coefficient["clipped"] = -(used * ratio)  # had the clip passed its gradient
    # Removed tokens left TRL's loss mask: count them over every sampled token, with the same normaliser.
    counted = {"removed": dict(inputs, completion_mask=valid, tool_mask=torch.ones_like(valid))}
    return {
        name: loss.normalize(coefficient[name] * logps * mask, counted.get(name, inputs))
        for name, mask in masks.items()
        if every_group or mask.any()
    }


def _loss_tokens(loss: PolicyLoss, entropies: torch.Tensor | None, inputs: dict[str, Any]) -> torch.Tensor:
    """The tokens TRL's loss counts: its loss mask, less those its `top_entropy_quantile` drops (TRL's own mask,
    from the same entropies, so the threshold is the one its loss used)."""
    mask = loss_mask(inputs)
    if loss.high_entropy_mask is None:
        return mask
    return mask * loss.high_entropy_mask(entropies.detach(), mask).to(mask.dtype)
