"""Clip_B (Wang et al. 2026, arXiv:2602.03392): drop negative-advantage tokens whose discriminator is a batch outlier.

S_t = p_t (H_t + log p_t) under the rollout policy. Penalising a token with S far below the batch mean lowers entropy,
so negative-advantage tokens with (S - mean S) < -mu std S are removed from the loss (numerator and denominator).
Statistics span the whole step batch on every rank, computed once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import check
from ..stats import discriminator
from .base import LOCAL, Edits, Reducer, Regularizer, TokenBatch, by_advantage_sign, masked_mean, register

DEGENERATE_STD = 1e-12  # below this the batch has no spread to measure outliers against: keep everything


def spread(x: torch.Tensor, mask: torch.Tensor, reduce: Reducer) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation of x over the valid tokens."""
    mean = masked_mean(x, mask, reduce)
    return mean, masked_mean((x - mean) ** 2, mask, reduce).sqrt()


@register
@dataclass
class ClipB(Regularizer):
    name = "clip_b"
    kind = "filter"
    needs = frozenset({"entropies"})
    step_level = True
    clip_b_mu: float = 2.5

    def __post_init__(self) -> None:
        check(self.clip_b_mu > 0, "clip_b_mu", self.clip_b_mu, "a threshold > 0 (in standard deviations)")

    @torch.no_grad()
    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        mask = batch.mask
        s = discriminator(batch.old_logps, batch.entropies)
        mean, std = spread(s, mask, reduce)
        keep = (batch.advantages >= 0) | (s - mean >= -self.clip_b_mu * std) | (std < DEGENERATE_STD)
        metrics = by_advantage_sign(mask & ~keep, mask, batch.advantages, "clip_b/removed_frac")
        return Edits(keep=keep, metrics=metrics)
