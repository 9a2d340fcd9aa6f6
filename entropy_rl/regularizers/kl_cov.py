"""KL-Cov (Cui et al. 2025, arXiv:2505.22617): a |log-ratio| penalty on the highest-covariance tokens, no PPO clip.

The top `kl_cov_ratio` share (a fraction: 2e-3 = 0.2 %) of valid tokens by signed covariance get
loss -A r + kl_cov_coef |log p - log p_old|; every other token gets the unclipped -A r. On-policy the ratio is 1 and
the penalty 0, so the method needs off-policy updates (num_iterations > 1 or more generation than accumulation steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, check
from ..tokens import CLIP_LOSS_TYPES, TokenBatch
from .base import LOCAL, Edits, Kind, Reducer, Regularizer, by_advantage_sign, without_ppo_clip
from .common import token_covariance, top_ranked


@dataclass
class KLCov(Regularizer):
    name = "kl_cov"
    kind = Kind.LOSS
    uses_ppo_clip = False
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

    @classmethod
    def check_pairing(cls, spec: str, names: Sequence[str], options: Any = None) -> None:
        if "clip_higher" in names:
            raise ConfigError(
                f"invalid config: regularizer={spec!r}: KL-Cov uses no PPO clip, so clip_higher has no effect"
            )
        if options is None:
            return
        no_clip = without_ppo_clip(options)
        if no_clip:
            raise ConfigError(
                f"invalid config: regularizer={spec!r} with {no_clip}: KL-Cov replaces the PPO-clip "
                f"surrogate by the unclipped -A r plus its penalty; allowed: loss_type in {CLIP_LOSS_TYPES}"
            )
        if options.epsilon_high is not None and options.epsilon_high != options.epsilon:
            raise ConfigError(
                f"invalid config: epsilon_high={options.epsilon_high!r} with regularizer={spec!r}: KL-Cov "
                "uses no PPO clip, so epsilon_high would have no effect; allowed: leave epsilon_high unset"
            )
        # On-policy the ratio is 1 and the penalty 0: the method would do nothing.
        off_policy = options.num_iterations > 1 or options.steps_per_generation > options.gradient_accumulation_steps
        check(
            off_policy,
            "regularizer",
            spec,
            f"{cls.name} only with off-policy updates: its penalty |log p - log p_old| is 0 on-policy. Set "
            f"num_iterations > 1 (now {options.num_iterations}) or steps_per_generation > "
            f"gradient_accumulation_steps (now {options.steps_per_generation} <= "
            f"{options.gradient_accumulation_steps})",
        )

    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        mask = batch.mask
        cov = torch.where(mask, token_covariance(batch, reduce), -torch.inf)
        flat, offset = reduce.cat(cov.flatten())  # every position of every rank; padding ranks last
        k = torch.floor(reduce.sum(mask.sum()) * self.kl_cov_ratio).long().clamp(min=1)
        top = top_ranked(flat, k, max(1, int(flat.numel() * self.kl_cov_ratio))) & (flat > -torch.inf)
        selected = top[offset : offset + mask.numel()].view_as(mask)
        metrics = by_advantage_sign(selected, mask, batch.advantages, "kl_cov/penalized_frac")
        return Edits(penalty=selected, penalty_coef=self.kl_cov_coef, metrics=metrics)
