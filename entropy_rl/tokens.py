"""The per-token vocabulary every other module speaks: a batch of tokens, the PPO ratio and clip, broadcasting.

Pure tensor code at the bottom of the package: it imports nothing from entropy_rl. The statistics (stats), the
regularizers, the trainer and the verl plugin all read tokens through these helpers, so that "clipped", "ratio" and
"per-token advantage" mean one thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# TRL loss types whose per-token loss is the PPO-clipped surrogate the loss-rewriting regularizers are defined on.
CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def per_token(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sequence [B] or [B, 1] values (GRPO advantages) broadcast to the [B, T] shape of `like`, dtype kept."""
    values = values[:, None] if values.dim() == 1 else values
    return values.expand_as(like)


def token_ratio(logps: torch.Tensor, old_logps: torch.Tensor | None) -> torch.Tensor:
    """pi / pi_old per token; 1 where there is no old policy (on-policy, TRL keeps no old log-probs)."""
    return torch.ones_like(logps) if old_logps is None else torch.exp(logps - old_logps)


def unclipped_mask(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> torch.Tensor:
    """True where the PPO-clipped surrogate still passes gradient (the min picks the unclipped branch)."""
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return ~(low | high)


@dataclass
class TokenBatch:
    """Per-token tensors, all [B, T] (advantages may be [B] or [B, 1]); only `logps` may carry gradient.

    logps: log-prob of the sampled token under the policy being optimised. old_logps: under the rollout policy.
    entropies: entropy of the next-token distribution (at the sampling temperature). nec: N_t = sum_v p_v^2
    (log p_v + H_t), the policy average of the entropy discriminator, needed by Clip_V and STEER's exact estimator.
    """

    logps: torch.Tensor
    old_logps: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    entropies: torch.Tensor | None = None
    nec: torch.Tensor | None = None
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    sequence_level: bool = False  # GSPO (TRL's importance_sampling_level="sequence"): one ratio per sequence

    def __post_init__(self) -> None:
        self.advantages = per_token(self.advantages, self.logps)
        self.mask = self.mask.bool()

    @property
    def ratio(self) -> torch.Tensor:
        if not self.sequence_level:
            return token_ratio(self.logps.detach(), self.old_logps)
        # TRL's sequence level: the masked mean log-ratio of the row, for each of its tokens.
        log_ratio = self.logps.detach() - self.old_logps
        mask = self.mask.to(log_ratio.dtype)
        mean = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        return torch.exp(mean.expand_as(log_ratio))

    def ppo_clipped(self) -> torch.Tensor:
        """Tokens whose clipped surrogate passes no gradient (the min picks the clipped branch)."""
        return ~unclipped_mask(self.ratio, self.advantages, self.epsilon_low, self.epsilon_high)


def ppo_token_loss(batch: TokenBatch, clip: bool = True) -> torch.Tensor:
    """-min(r A, clip(r) A), or -r A when unclipped (KL-Cov)."""
    ratio = token_ratio(batch.logps, batch.old_logps)
    loss = -batch.advantages * ratio
    if clip:
        clipped = torch.clamp(ratio, 1 - batch.epsilon_low, 1 + batch.epsilon_high)
        loss = torch.maximum(loss, -batch.advantages * clipped)
    return loss
