"""STEER (Hao et al. 2025, arXiv:2510.10150): reweight tokens by the size of their predicted entropy change.

Omega_t estimates token t's first-order entropy change; tokens with large |Omega| get small weights, mapped into
[lambda_min, lambda_max] linearly, or exponentially (floored at lambda_min) from the min/max of |Omega| over valid
tokens. Weights are constants; tokens stay in the loss denominator.
- estimator "code" (the authors' code): Omega = (A / p_old) x (1 - x)(log x + H), x = current prob of the token.
- estimator "exact": Omega = A ratio 1[unclipped] (S - N), the exact first-order change (docs/metrics.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import check
from ..stats import discriminator
from ..tokens import TokenBatch
from .base import LOCAL, Edits, Kind, Reducer, Regularizer, by_advantage_sign

EXP_MIN_SCALE = 0.02  # floor of max|Omega| in the exponential map (authors' code), so tiny batches are not over-damped


@dataclass
class Steer(Regularizer):
    name = "steer"
    kind = Kind.LOSS
    needs = frozenset({"entropies"})
    steer_lambda_min: float = field(default=0.8, metadata={"help": "smallest token weight (paper v4: 0.7; code: 0.8)."})
    steer_lambda_max: float = field(default=1.2, metadata={"help": "largest token weight (linear map; 1.0 for exp)."})
    steer_mapping: str = field(default="linear", metadata={"help": "'linear' into [min, max] or 'exp' floored at min."})
    steer_estimator: str = field(
        default="code",
        metadata={"help": "'code' (authors' (A/p_old) p(1-p)(log p + H)) or 'exact' (A ratio 1[unclipped] (S - N))."},
    )

    def __post_init__(self) -> None:
        check(0 < self.steer_lambda_min <= 1, "steer_lambda_min", self.steer_lambda_min, "a weight in (0, 1]")
        check(
            self.steer_lambda_max >= self.steer_lambda_min,
            "steer_lambda_max",
            self.steer_lambda_max,
            f">= steer_lambda_min={self.steer_lambda_min}",
        )
        check(self.steer_mapping in ("linear", "exp"), "steer_mapping", self.steer_mapping, "'linear' or 'exp'")
        check(self.steer_estimator in ("code", "exact"), "steer_estimator", self.steer_estimator, "'code' or 'exact'")
        if self.steer_estimator == "exact":
            self.needs = frozenset({"entropies", "nec"})

    @torch.no_grad()
    def omega(self, batch: TokenBatch) -> torch.Tensor:
        logps, ent = batch.logps.detach(), batch.entropies
        if self.steer_estimator == "exact":
            unclipped = (~batch.ppo_clipped()).to(logps.dtype)
            return batch.advantages * batch.ratio * unclipped * (discriminator(logps, ent) - batch.nec)
        x = logps.exp().clamp(1e-8, 1 - 1e-8)
        q = batch.old_logps.exp().clamp(1e-8, 1)
        omega = batch.advantages / q * x * (1 - x) * (torch.log(x) + ent)
        return torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))

    @torch.no_grad()
    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        mask = batch.mask
        size = self.omega(batch).abs()
        m_max = reduce.max(torch.where(mask, size, -math.inf).max())
        m_min = -reduce.max(torch.where(mask, -size, -math.inf).max())
        low, high = self.steer_lambda_min, self.steer_lambda_max
        if self.steer_mapping == "linear":
            span = m_max - m_min
            scaled = high - (size - m_min) * (high - low) / span.clamp(min=torch.finfo(size.dtype).tiny)
            weight = torch.where(span > 0, scaled.clamp(low, high), torch.full_like(size, (low + high) / 2))
        else:
            kappa = -math.log(low) / m_max.clamp(min=EXP_MIN_SCALE)
            weight = torch.exp(-kappa * size).clamp(low, 1.0)
        weight = torch.where(mask, weight, torch.zeros_like(weight))
        metrics = by_advantage_sign(weight, mask, batch.advantages, "steer/weight_mean")
        metrics |= by_advantage_sign(mask & (weight <= low + 1e-6), mask, batch.advantages, "steer/at_lambda_min_frac")
        return Edits(weight=weight, metrics=metrics)
