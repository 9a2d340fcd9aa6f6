"""Clip-Cov (Cui et al. 2025, arXiv:2505.22617): stop the gradient of a few random high-covariance tokens.

cov_t = (A_t - mean A)(log p_t - mean log p) over valid tokens. Among tokens with lb < cov_t < ub that the PPO clip has
not already clipped, a random `clip_cov_ratio` share of all valid tokens (at least one) gets loss weight 0; the tokens
stay in the loss denominator, as in the authors' verl code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import check
from ..tokens import TokenBatch
from .base import LOCAL, Edits, Kind, Reducer, Regularizer, by_advantage_sign
from .common import DrawStream, token_covariance


@dataclass
class ClipCov(Regularizer):
    name = "clip_cov"
    kind = Kind.LOSS
    clip_cov_ratio: float = field(
        default=2e-4, metadata={"help": "fraction of valid tokens whose gradient is stopped (Cui et al.: 2e-4)."}
    )
    clip_cov_lb: float = field(default=1.0, metadata={"help": "lower bound (exclusive) of the token covariance band."})
    clip_cov_ub: float = field(default=5.0, metadata={"help": "upper bound (exclusive) of the token covariance band."})

    def __post_init__(self) -> None:
        check(0 < self.clip_cov_ratio <= 1, "clip_cov_ratio", self.clip_cov_ratio, "a fraction in (0, 1]")
        check(self.clip_cov_lb < self.clip_cov_ub, "clip_cov_lb", self.clip_cov_lb, f"< clip_cov_ub={self.clip_cov_ub}")

    def edits(
        self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | DrawStream | None = None
    ) -> Edits:
        mask = batch.mask
        cov = token_covariance(batch, reduce)
        candidates = mask & ~batch.ppo_clipped() & (cov > self.clip_cov_lb) & (cov < self.clip_cov_ub)
        # Select over the valid tokens of every rank in one canonical order, so any process count picks the same ones:
        # 0 = padding, 1 = valid, 2 = candidate, for every position of every rank.
        code, offset = reduce.cat((mask.to(torch.int8) + candidates.to(torch.int8)).flatten())
        is_candidate = code == 2
        n_candidates = is_candidate.sum()
        n_clip = torch.floor((code > 0).sum().double() * self.clip_cov_ratio).long().clamp(min=1)
        # verl draws randperm(n_candidates)[:n_clip] on the CPU generator; the same draws, taken on the device.
        stream = generator if isinstance(generator, DrawStream) else DrawStream(generator)
        bound = max(int(self.clip_cov_ratio * code.numel()), 1)  # n_clip's largest value
        order = stream.permutation_prefix(n_candidates, bound, code.numel())
        taken = torch.arange(bound, device=code.device) < torch.minimum(n_clip, n_candidates)
        chosen = torch.zeros(code.numel() + 1, dtype=torch.bool, device=code.device)  # by candidate number
        chosen[torch.where(taken, order, code.numel())] = True
        number = (is_candidate.cumsum(0) - 1).clamp(min=0)
        selected = (is_candidate & chosen[number])[offset : offset + mask.numel()].view_as(mask)
        if stream is not generator:
            stream.settle()  # a plain generator advances now, as randperm would have advanced it
        metrics = by_advantage_sign(selected, mask, batch.advantages, "clip_cov/clipped_frac")
        metrics |= by_advantage_sign(candidates, mask, batch.advantages, "clip_cov/candidate_frac")
        return Edits(weight=(~selected).to(batch.logps.dtype), metrics=metrics)
