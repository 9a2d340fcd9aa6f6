"""KL-Cov (Cui et al. 2025, arXiv:2505.22617): a |log-ratio| penalty on the highest-covariance tokens, no PPO clip.

The top `kl_cov_ratio` share (a fraction: 2e-3 = 0.2 %) of valid tokens by signed covariance get
loss -A r + kl_cov_coef |log p - log p_old|; every other token gets the unclipped -A r. On-policy the ratio is 1 and
the penalty 0, so the method needs off-policy updates (num_iterations > 1 or more generation than accumulation steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import check
from .base import LOCAL, Edits, Reducer, Regularizer, TokenBatch, by_advantage_sign, register
from .common import token_covariance, top_ranked


@register
@dataclass
class KLCov(Regularizer):
    name = "kl_cov"
    kind = "loss"
    uses_ppo_clip = False
    off_policy_only = "its penalty |log p - log p_old| is 0 on-policy"
    kl_cov_ratio: float = field(
        default=2e-3,
        metadata={"help": "fraction (not percent) of valid tokens, top by covariance, that get the penalty."},
    )
    kl_cov_coef: float = field(
        default=1.0, metadata={"help": "weight of the |log p - log p_old| penalty (verl's ppo_kl_coef)."}
    )

    def __post_init__(self) -> None:
        check(0 < self.kl_cov_ratio <= 1, "kl_cov_ratio", self.kl_cov_ratio, "a fraction in (0, 1] (2e-3 = 0.2 %)")
        check(self.kl_cov_coef >= 0, "kl_cov_coef", self.kl_cov_coef, "a coefficient >= 0")

    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        mask = batch.mask
        cov = torch.where(mask, token_covariance(batch, reduce), -torch.inf)
        flat, offset = reduce.cat(cov.flatten())  # every position of every rank; padding ranks last
        k = torch.floor(reduce.sum(mask.sum()) * self.kl_cov_ratio).long().clamp(min=1)
        top = top_ranked(flat, k, max(1, int(flat.numel() * self.kl_cov_ratio))) & (flat > -torch.inf)
        selected = top[offset : offset + mask.numel()].view_as(mask)
        metrics = by_advantage_sign(selected, mask, batch.advantages, "kl_cov/penalized_frac")
        return Edits(penalty=selected, penalty_coef=self.kl_cov_coef, metrics=metrics)
