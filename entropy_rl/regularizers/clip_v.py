"""Clip_V (Wang et al. 2026, arXiv:2602.03392): drop non-positive-advantage tokens with a large N - S, capped.

D_t = N_t - S_t (N_t = E_{v~p}[S_v] needs the whole next-token distribution). A penalised token with D > 0 lowers
entropy; tokens with A <= 0 and D > mu std(D) are removed from the loss. If more than `clip_v_max_frac` of the valid
tokens would go, only the top-`budget` negative-advantage ones by D are removed (zero-advantage violators always go:
they carry no gradient). The raw D, not D - mean, is compared, as in the authors' code. Whole step batch, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import check
from ..stats import discriminator
from ..tokens import TokenBatch
from .base import LOCAL, Edits, Kind, Reducer, Regularizer, by_advantage_sign
from .common import DEGENERATE_STD, spread, top_ranked


@dataclass
class ClipV(Regularizer):
    name = "clip_v"
    kind = Kind.FILTER
    needs = frozenset({"entropies", "nec"})
    clip_v_mu: float = field(default=8.5, metadata={"help": "tokens with A <= 0 and N - S above mu * std are removed."})
    clip_v_max_frac: float = field(
        default=1e-4, metadata={"help": "cap on the share of valid tokens removed per step."}
    )

    def __post_init__(self) -> None:
        check(self.clip_v_mu > 0, "clip_v_mu", self.clip_v_mu, "a threshold > 0 (in standard deviations)")
        check(0 < self.clip_v_max_frac <= 1, "clip_v_max_frac", self.clip_v_max_frac, "a fraction in (0, 1]")

    @torch.no_grad()
    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        mask, adv = batch.mask, batch.advantages
        d = batch.nec - discriminator(batch.old_logps, batch.entropies)
        _, std = spread(d, mask, reduce)
        violates = mask & (d > self.clip_v_mu * std) & (adv <= 0) & (std >= DEGENERATE_STD)
        n_valid, n_violates = reduce.sum(torch.stack([mask.sum(), violates.sum()]))
        # Over budget, only the top-`budget` negative-advantage violators by D go (zero-advantage ones always do);
        # both branches are computed and chosen on the device.
        budget = torch.floor(self.clip_v_max_frac * n_valid).long().clamp(min=1)
        flat, offset = reduce.cat(torch.where(violates & (adv < 0), d, -torch.inf).flatten())
        top = top_ranked(flat, budget, max(int(self.clip_v_max_frac * flat.numel()), 1)) & torch.isfinite(flat)
        capped = (violates & (adv == 0)) | top[offset : offset + mask.numel()].view_as(mask)
        removed = torch.where(n_violates > self.clip_v_max_frac * n_valid, capped, violates)
        metrics = by_advantage_sign(removed, mask, adv, "clip_v/removed_frac")
        return Edits(keep=~removed, metrics=metrics)
