"""The regularizer interface: tensors in, token edits out, and a reference PPO executor that turns them into a loss.

A regularizer never computes a loss itself. It looks at a batch of tokens and returns `Edits`: per-token loss weights
(Clip-Cov zeroes a few, STEER rescales all), tokens that get an extra |log-ratio| penalty (KL-Cov) and tokens removed
from the loss (Clip_B / Clip_V). Two executors apply the same edits: `Regularizer.policy_loss` below (plain tensors,
for custom loops and verl users) and EntropyGRPOTrainer (through TRL's own loss). Aggregation lives in `aggregate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch


class Reducer(Protocol):
    """How statistics span tokens: the local batch (identity) or every rank of the step (all-reduce / all-gather)."""

    def sum(self, x: torch.Tensor) -> torch.Tensor: ...

    def max(self, x: torch.Tensor) -> torch.Tensor: ...

    def cat(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Concatenate a 1-D tensor over ranks in rank order; also return where this rank's part starts."""
        ...


class LocalReducer:
    """Statistics over the tokens at hand only (stat_scope=micro_batch, or a single process)."""

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def cat(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 0


LOCAL = LocalReducer()


@dataclass
class TokenBatch:
    """Per-token tensors, all [B, T] (advantages may be [B, 1]); only `logps` may carry gradient.

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
        if self.advantages.dim() == 1:
            self.advantages = self.advantages[:, None]
        self.advantages = self.advantages.expand_as(self.logps)
        self.mask = self.mask.bool()

    @property
    def ratio(self) -> torch.Tensor:
        log_ratio = self.logps.detach() - self.old_logps
        if self.sequence_level:  # TRL's sequence level: the masked mean log-ratio of the row, for each of its tokens
            mask = self.mask.to(log_ratio.dtype)
            mean = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
            log_ratio = mean.expand_as(log_ratio)
        return torch.exp(log_ratio)

    def ppo_clipped(self) -> torch.Tensor:
        """Tokens whose clipped surrogate passes no gradient (the min picks the clipped branch)."""
        ratio, adv = self.ratio, self.advantages
        return ((ratio < 1 - self.epsilon_low) & (adv < 0)) | ((ratio > 1 + self.epsilon_high) & (adv > 0))


@dataclass
class Edits:
    """What a regularizer does to the loss. None means untouched; combine with `&` (see `Edits.combine`)."""

    weight: torch.Tensor | None = None  # [B, T] >= 0, multiplies the token's policy loss; the token stays counted
    penalty: torch.Tensor | None = None  # [B, T] bool, add coef * |logp - old_logp| on these tokens
    penalty_coef: float = 0.0
    keep: torch.Tensor | None = None  # [B, T] bool, False removes the token from the loss numerator and denominator
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name -> (sum, count)

    def combine(self, other: Edits) -> Edits:
        def both(a, b, op):
            return b if a is None else a if b is None else op(a, b)

        if self.penalty is not None and other.penalty is not None:
            raise ValueError("two regularizers add a |log-ratio| penalty; combine at most one")
        return Edits(
            weight=both(self.weight, other.weight, torch.mul),
            penalty=both(self.penalty, other.penalty, torch.logical_or),
            penalty_coef=self.penalty_coef or other.penalty_coef,
            keep=both(self.keep, other.keep, torch.logical_and),
            metrics={**self.metrics, **other.metrics},
        )


def by_advantage_sign(
    value: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, name: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Metrics `name`, `name/pos_adv`, `name/neg_adv`: mean of `value` over valid tokens (of each advantage sign).

    Returned as local (sum, count) pairs, so the trainer can add micro-batches and ranks exactly before dividing.
    """
    out = {}
    for suffix, part in (("", mask), ("/pos_adv", mask & (advantages > 0)), ("/neg_adv", mask & (advantages < 0))):
        out[name + suffix] = ((value * part).sum().double(), part.sum().double())
    return out


def masked_mean(x: torch.Tensor, mask: torch.Tensor, reduce: Reducer) -> torch.Tensor:
    return reduce.sum((x * mask).sum()) / reduce.sum(mask.sum()).clamp(min=1)


AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """verl 0.9.1's `agg_loss` on one batch (dp_size=1), see docs/regularizers.md.

    The seq-mean modes average over non-empty rows only: a fully padded row, or one whose tokens Clip_B / Clip_V all
    removed, has no loss to average and must not pull the mean towards zero. With no valid token at all the loss is 0
    (verl would divide 0 by 0).
    """
    mask = mask.to(per_token.dtype)
    if mode == "token-mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    row_tokens = mask.sum(-1)
    rows = (row_tokens > 0).sum().clamp(min=1)
    row_sums = (per_token * mask).sum(-1)  # an empty row sums to 0, so it adds nothing to the numerators below
    if mode == "seq-mean-token-mean":
        return (row_sums / row_tokens.clamp(min=1)).sum() / rows
    if mode == "seq-mean-token-sum":
        return row_sums.sum() / rows
    if mode == "seq-mean-token-sum-norm":
        # verl's default loss_scale_factor: the padded response length T, a constant divisor in the Dr.GRPO manner.
        return row_sums.sum() / rows / per_token.shape[-1]
    raise ValueError(f"loss_agg_mode={mode!r}; allowed: {AGG_MODES}")


class Regularizer:
    """Base class. Subclasses set `name`, `needs` and `kind`, and implement `edits`."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "loss" (rewrites the token loss), "filter" (removes tokens) or "native" (TRL option)
    needs: ClassVar[frozenset[str]] = frozenset()  # extra TokenBatch fields required: "entropies", "nec"
    uses_ppo_clip: ClassVar[bool] = True  # False: the surrogate is unclipped (KL-Cov)
    step_level: ClassVar[bool] = False  # True: statistics always span the whole step batch (Clip_B / Clip_V)
    off_policy_only: ClassVar[str | None] = None  # why the method does nothing on-policy (KL-Cov), else None

    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        return Edits()

    def policy_loss(
        self,
        *,
        logps: torch.Tensor,
        old_logps: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        entropies: torch.Tensor | None = None,
        nec: torch.Tensor | None = None,
        clip_ratio_low: float = 0.2,
        clip_ratio_high: float = 0.2,
        loss_agg_mode: str = "token-mean",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The PPO/GRPO token loss with this regularizer's edits, aggregated: the tensor-level entry point."""
        batch = TokenBatch(logps, old_logps, advantages, mask, entropies, nec, clip_ratio_low, clip_ratio_high)
        missing = [name for name in self.needs if getattr(batch, name) is None]
        if missing:
            raise ValueError(f"regularizer {self.name!r} needs {missing}")
        edits = self.edits(batch, LOCAL, generator)
        per_token = ppo_token_loss(batch, clip=self.uses_ppo_clip)
        per_token = apply_edits(per_token, batch, edits)
        keep = batch.mask if edits.keep is None else batch.mask & edits.keep
        metrics = {name: (num / den.clamp(min=1)).item() for name, (num, den) in edits.metrics.items()}
        return aggregate(per_token, keep, loss_agg_mode), metrics


def ppo_token_loss(batch: TokenBatch, clip: bool = True) -> torch.Tensor:
    """-min(r A, clip(r) A), or -r A when unclipped (KL-Cov)."""
    ratio = torch.exp(batch.logps - batch.old_logps)
    loss = -batch.advantages * ratio
    if clip:
        clipped = torch.clamp(ratio, 1 - batch.epsilon_low, 1 + batch.epsilon_high)
        loss = torch.maximum(loss, -batch.advantages * clipped)
    return loss


def apply_edits(per_token: torch.Tensor, batch: TokenBatch, edits: Edits) -> torch.Tensor:
    if edits.weight is not None:
        per_token = per_token * edits.weight
    return per_token + penalty_loss(batch, edits)


def penalty_loss(batch: TokenBatch, edits: Edits) -> torch.Tensor | float:
    """KL-Cov's per-token penalty coef * |logp - old_logp| on the selected tokens (0 elsewhere)."""
    if edits.penalty is None:
        return 0.0
    return edits.penalty_coef * (batch.logps - batch.old_logps).abs() * edits.penalty


REGISTRY: dict[str, type[Regularizer]] = {}


def register(cls: type[Regularizer]) -> type[Regularizer]:
    REGISTRY[cls.name] = cls
    return cls
