"""The sums of one optimizer step: named slots added to over its micro-batches and reduced over every rank in one
collective, with the step's one host read (`StepSums.reduce`); and the diagnostics' token sums of one micro-batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import onepass, stats
from ..tokens import per_token, token_ratio, unclipped_mask
from .batch_keys import loss_mask, valid_mask

TOKENS = "tokens"  # stats.SUM_FIELDS of the step's micro-batches


class StepSums:
    """Named float tensors summed over a step's micro-batches; every rank must hold the same names and sizes when they
    are reduced (a slot a rank did not fill is given zeros with `setdefault`)."""

    def __init__(self) -> None:
        self._slots: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        self._slots[name] = value if name not in self._slots else self._slots[name] + value

    def setdefault(self, name: str, value: torch.Tensor) -> None:
        self._slots.setdefault(name, value)

    def get(self, name: str) -> torch.Tensor | None:
        return self._slots.get(name)

    def clear(self) -> None:
        self._slots = {}

    def reduce(self, all_reduce: Callable[[torch.Tensor], torch.Tensor], device: Any) -> dict[str, list[float]]:
        """Every slot summed over every rank (the slots are emptied): the slots flattened in name order into one
        float64 tensor, one collective, one host read, then split again by name."""
        names = sorted(self._slots)
        parts = [self._slots[name].reshape(-1).to(device=device, dtype=torch.float64) for name in names]
        self._slots = {}
        values = all_reduce(torch.cat(parts)).tolist()  # the step's one host synchronisation
        totals, start = {}, 0
        for name, part in zip(names, parts, strict=True):
            totals[name], start = values[start : start + part.numel()], start + part.numel()
        return totals


def token_sums(
    logps: torch.Tensor,
    token_stats: onepass.TokenStats,
    advantages: torch.Tensor,
    inputs: dict[str, Any],
    *,
    epsilon_low: float,
    epsilon_high: float,
    sampler_correction: torch.Tensor | float,
) -> torch.Tensor:
    """stats.SUM_FIELDS of one micro-batch. H, S and N come from the one pass (shifted sums: precise at any logit size,
    and S - N from one set of logits); log p is TRL's, the one the ratio and the update use. `advantages` are the
    rollout's, `inputs["advantages"]` those after the regularizer's edits."""
    mask = valid_mask(inputs).bool()
    advantages = per_token(advantages, logps).double()
    ratio = token_ratio(logps, inputs.get("old_per_token_logps"))
    unclipped = unclipped_mask(ratio, advantages, epsilon_low, epsilon_high)
    return stats.token_sums(
        logp=logps,
        entropy=token_stats.entropy,
        advantages=advantages,
        mask=mask,
        S=stats.discriminator(token_stats.logp, token_stats.entropy),
        N=token_stats.nec,
        ratio=ratio,
        unclipped=unclipped,
        # The update moves each token by its effective advantage (after regularizer weights; 0 where a filter removed
        # it): predict with that. Under vLLM TRL also weighs each token's loss by its importance-sampling correction.
        update_advantages=per_token(inputs["advantages"], logps).double() * loss_mask(inputs) * sampler_correction,
    )
