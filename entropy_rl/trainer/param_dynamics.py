"""The parameter-space entropy prediction in EntropyGRPOTrainer (the math is entropy_rl.dynamics): on measuring
steps, just before the optimizer step, the gradient of the batch's entropy and each token group's share of the
update; after it, the dot products join the step's one all-reduce (`_finish_step`)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from .. import dynamics
from ..errors import ConfigError, check
from ..tokens import CLIP_LOSS_TYPES, per_token, token_ratio, unclipped_mask

# Kept in the micro-batch copy on measuring steps for the parameter-space attribution (entropy_rl/dynamics.py).
RAW_ADV_KEY, S_MINUS_N_KEY = "entropy_rl_raw_advantages", "entropy_rl_s_minus_n"


class ParamDynamicsMixin:
    """`_before_update` (from the pre-optimizer-step callback) and what it needs; `_clip_grad_norm` wraps the
    Trainer's to keep the clip factor."""

    def _world(self) -> int:
        return self.accelerator.num_processes

    def _check_param_dynamics(self) -> None:
        if not (self.args.dynamics_param and self.args.dynamics_every):
            return
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.args.dynamics_momentum_groups:
            # Its buffers are whole tensors fed with this process's group gradients: one process only.
            distributed = self._world() > 1 or self.is_fsdp_enabled or plugin is not None
            check(not distributed, "dynamics_momentum_groups", True, "False with several processes, FSDP or DeepSpeed")
            check(
                self.loss_type in CLIP_LOSS_TYPES and self.importance_sampling_level == "token",
                "dynamics_momentum_groups",
                True,
                f"False with loss_type={self.loss_type!r} / importance_sampling_level="
                f"{self.importance_sampling_level!r} (the split needs a PPO-clip loss with token-level ratios)",
            )
        if (self.is_fsdp_enabled and not self.accelerator.is_fsdp2) or (plugin is not None and plugin.zero_stage == 3):
            raise ConfigError(
                "invalid config: dynamics_param=True with FSDP version 1 / ZeRO-3; allowed: dynamics_param=False "
                "there, or fsdp_version 2 (supported: one process, DDP, ZeRO-1/2, FSDP2)"
            )

    def _sharded_in_place(self) -> bool:
        """FSDP2: the parameters are shards and the module itself carries the hooks that gather them."""
        return bool(self.is_fsdp_enabled)

    def _clip_grad_norm(self, model):
        # The clip factor scales each group's share of the update (dynamics.clip_factor).
        self._grad_norm = super()._clip_grad_norm(model)
        return self._grad_norm

    def _record_clip_norm_on_transformers_4(self) -> None:
        """transformers 4.x clips inline in its training loop, with no `_clip_grad_norm` to wrap: record the pre-clip
        norm from the accelerator call it makes there instead."""
        if hasattr(Trainer, "_clip_grad_norm"):
            return
        clip = self.accelerator.clip_grad_norm_

        def recording(*args: Any, **kwargs: Any) -> Any:
            self._grad_norm = clip(*args, **kwargs)
            return self._grad_norm

        self.accelerator.clip_grad_norm_ = recording

    def _param_forward(
        self, model, inputs: dict[str, Any], *, compute_entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log p, entropy) of the micro-batch's completion tokens under the current parameters, with the graph."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, ids, attention, inputs["completion_ids"].size(1), compute_entropy=compute_entropy
        )
        return logps, entropies

    def _before_update(self) -> None:
        """On measuring steps, just before optimizer.step(): grad of the entropy sum, and each group's share; with the
        momentum groups, on every step, their buffers move on."""
        if self.args.dynamics_momentum_groups and self._group_moments is None:  # kept for the rest of the run
            self._group_moments = dynamics.GroupMoments(dynamics.trainable(self.accelerator.unwrap_model(self.model)))
        if not (self.args.dynamics_param and self._measures_dynamics(self.state.global_step + 1)):
            if self._group_moments is not None:
                self._advance_group_moments()
            return
        # DDP: the bare module, whose autograd.grad leaves .grad alone. FSDP2 shards in place: the module keeps the
        # hooks that all-gather its parameters, and the gradients come from its own backward (grad_through_hooks).
        model = self.accelerator.unwrap_model(self.model)
        sharded = self._sharded_in_place()
        world = self._world() if sharded else 0
        prediction = dynamics.ParamPrediction(
            dynamics.trainable(model), sharded_world=world, moments=self._group_moments
        )
        batches = self._step_batches
        reuse = len(batches) == 1 and not sharded  # one micro-batch: its graph serves both passes
        kept = []
        for inputs in batches:
            logps, entropies = self._param_forward(model, inputs)
            prediction.add_entropy((entropies * self._valid_mask(inputs)).sum(), retain_graph=reuse)
            kept.append(logps if reuse else None)
        scale = dynamics.clip_factor(self._grad_norm, self.args.max_grad_norm) / self._world()  # DDP averages ranks
        reduce = (lambda x: self.accelerator.reduce(x, reduction="sum")) if self._world() > 1 else None
        attributable = self.loss_type in CLIP_LOSS_TYPES and self.importance_sampling_level == "token"
        optimizer = self.optimizer if attributable else None
        if prediction.set_direction(optimizer, scale=scale, all_reduce=reduce):
            for inputs, logps in zip(batches, kept, strict=True):
                if not sharded:
                    logps = self._param_forward(model, inputs)[0] if logps is None else logps
                    prediction.add_groups(self._group_losses(logps, inputs))
                    continue
                # Every rank runs one backward per group (a collective), a fresh forward each: FSDP frees the
                # gathered parameters after a backward.
                for name in dynamics.GROUPS:
                    losses = self._group_losses(self._param_forward(model, inputs)[0], inputs, every_group=True)
                    prediction.add_groups({name: losses[name]})
        if self._group_moments is not None:
            prediction.advance_moments(self.optimizer)
        self._param_prediction = prediction

    def _advance_group_moments(self) -> None:
        """A step that does not measure: the quadrants' gradients (a forward and up to 4 backward passes per
        micro-batch) move the momentum groups' buffers on with the optimizer's."""
        model = self.accelerator.unwrap_model(self.model)
        for inputs in self._step_batches:
            logps = self._param_forward(model, inputs, compute_entropy=False)[0]
            losses = self._group_losses(logps, inputs)
            self._group_moments.add_losses({name: losses[name] for name in dynamics.QUADRANTS if name in losses})
        self._group_moments.advance(self.optimizer, dynamics.clip_factor(self._grad_norm, self.args.max_grad_norm))

    def _group_losses(
        self, logps: torch.Tensor, inputs: dict[str, Any], *, every_group: bool = False
    ) -> dict[str, torch.Tensor]:
        """The part of TRL's PPO-clip loss that each token group of dynamics.GROUPS contributes (same normaliser);
        groups without tokens are left out unless `every_group` (a zero loss then)."""
        old = inputs.get("old_per_token_logps")
        ratio = token_ratio(logps.detach(), old)
        used = per_token(inputs["advantages"], logps).to(logps.dtype)
        raw = per_token(inputs[RAW_ADV_KEY], logps).to(logps.dtype)
        unclipped = unclipped_mask(ratio, used, self.epsilon_low, self.epsilon_high)
        valid = self._valid_mask(inputs)
        masks = dynamics.token_groups(
            raw_advantages=raw,
            s_minus_n=inputs[S_MINUS_N_KEY],
            loss_mask=self._loss_mask(inputs),
            valid_mask=valid,
            used_advantages=used,
            unclipped=unclipped,
        )
        coefficient = {name: dynamics.surrogate_coefficient(used, ratio, unclipped) for name in dynamics.QUADRANTS}
        coefficient["removed"] = -(raw * ratio)  # had it stayed, unclipped
        coefficient["clipped"] = -(used * ratio)  # had the clip passed its gradient
        # Removed tokens left TRL's loss mask: count them over every sampled token, with the same normaliser.
        counted = {"removed": dict(inputs, completion_mask=valid, tool_mask=torch.ones_like(valid))}
        return {
            name: self._normalize_like_trl(coefficient[name] * logps * mask, counted.get(name, inputs))
            for name, mask in masks.items()
            if every_group or mask.any()
        }
