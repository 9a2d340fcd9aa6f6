"""Token statistics several methods share: covariance ranking (Clip-Cov, KL-Cov), outlier spread (Clip_B, Clip_V)."""

from __future__ import annotations

import torch

from .base import Reducer, TokenBatch, masked_mean

DEGENERATE_STD = 1e-12  # below this the batch has no spread to measure outliers against: keep everything


def token_covariance(batch: TokenBatch, reduce: Reducer) -> torch.Tensor:
    """Centered product of advantage and (detached) log-prob, the statistic Clip-Cov and KL-Cov rank tokens by."""
    logps, adv, mask = batch.logps.detach(), batch.advantages, batch.mask
    return (adv - masked_mean(adv, mask, reduce)) * (logps - masked_mean(logps, mask, reduce))


def scatter_valid(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse of `x[mask]`: place values of the valid tokens back into a [B, T] tensor (False elsewhere)."""
    out = torch.zeros(mask.shape, dtype=flat.dtype, device=mask.device)
    out[mask] = flat
    return out


def spread(x: torch.Tensor, mask: torch.Tensor, reduce: Reducer) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation of x over the valid tokens."""
    mean = masked_mean(x, mask, reduce)
    return mean, masked_mean((x - mean) ** 2, mask, reduce).sqrt()
