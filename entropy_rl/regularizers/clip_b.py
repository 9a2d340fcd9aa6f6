"""Clip_B (Wang et al. 2026, arXiv:2602.03392): drop negative-advantage tokens whose discriminator is a batch outlier.

S_t = p_t (H_t + log p_t) under the rollout policy. Penalising a token with S far below the batch mean lowers entropy,
so negative-advantage tokens with (S - mean S) < -mu std S are removed from the loss (numerator and denominator).
Statistics span the whole step batch on every rank, computed once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import check
from ..stats import discriminator
from ..tokens import TokenBatch
from .base import LOCAL, Edits, Kind, Reducer, Regularizer, by_advantage_sign
from .common import DEGENERATE_STD, spread


@dataclass
class ClipB(Regularizer):
    name = "clip_b"
    kind = Kind.FILTER
    needs = frozenset({"entropies"})
    clip_b_mu: float = field(
        default=2.5, metadata={"help": "z-score below which negative-advantage tokens are removed."}
    )

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
