"""The regularizer interface: tensors in, token edits out, and a reference PPO executor that turns them into a loss.

A regularizer never computes a loss itself. It looks at a batch of tokens and returns `Edits`: per-token loss weights
(Clip-Cov zeroes a few, STEER rescales all), tokens that get an extra |log-ratio| penalty (KL-Cov) and tokens removed
from the loss (Clip_B / Clip_V). Two executors apply the same edits: `Regularizer.policy_loss` below (plain tensors,
for custom loops and verl users) and EntropyGRPOTrainer (through TRL's own loss). Aggregation lives in `aggregate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import torch

from ..tokens import CLIP_LOSS_TYPES, TokenBatch, ppo_token_loss

NONE = "none"  # the --regularizer value that selects no method


class Kind(StrEnum):
    """What a method does to the loss, which decides when it runs (regularizers.schedule)."""

    LOSS = "loss"  # rewrites the token loss (weights, penalty), from the statistics of the tokens it sees
    FILTER = "filter"  # removes tokens, from the statistics of the whole rollout batch of every rank
    NATIVE = "native"  # switches on an option TRL implements itself; no edit of ours
    COMPOSITE = "composite"  # several methods together (`Composite`)


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
    kind: ClassVar[Kind]
    needs: ClassVar[frozenset[str]] = frozenset()  # extra TokenBatch fields required: "entropies", "nec"
    uses_ppo_clip: ClassVar[bool] = True  # False: the surrogate is unclipped (KL-Cov)

    @classmethod
    def check_pairing(cls, spec: str, names: Sequence[str], options: Any = None) -> None:
        """Refuse the other methods in `names` (always) and the TRL options of `options`, a GRPOConfig (when given),
        that this method has no meaning with. `spec` is the --regularizer value the message names."""

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


def apply_edits(per_token: torch.Tensor, batch: TokenBatch, edits: Edits) -> torch.Tensor:
    if edits.weight is not None:
        per_token = per_token * edits.weight
    return per_token + penalty_loss(batch, edits)


def penalty_loss(batch: TokenBatch, edits: Edits) -> torch.Tensor | float:
    """KL-Cov's per-token penalty coef * |logp - old_logp| on the selected tokens (0 elsewhere)."""
    if edits.penalty is None:
        return 0.0
    return edits.penalty_coef * (batch.logps - batch.old_logps).abs() * edits.penalty


def without_ppo_clip(options: Any) -> str | None:
    """For an error message: how a TRL loss type without the PPO clip is named; None when it has the clip."""
    if options.loss_type in CLIP_LOSS_TYPES:
        return None
    return (
        f"loss_type={options.loss_type!r}, which has no PPO clip (its own surrogate; cispo reads epsilon_high as "
        "its IS-weight cap)"
    )


class Composite(Regularizer):
    """Several regularizers applied together: weights multiply, removals add up, one penalty at most."""

    kind = Kind.COMPOSITE

    def __init__(self, parts: list[Regularizer]):
        self.parts = parts
        self.name = "+".join(part.name for part in parts) or NONE
        self.needs = frozenset().union(*(part.needs for part in parts))
        self.uses_ppo_clip = all(part.uses_ppo_clip for part in parts)

    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        # Filters run first and the other parts see only the tokens they keep: in the reference code Clip_B / Clip_V
        # shrink the response mask before the policy loss, so Clip-Cov's means and STEER's min/max skip removed tokens.
        edits = Edits()
        for part in sorted(self.parts, key=lambda part: part.kind != Kind.FILTER):
            view = batch if edits.keep is None else replace(batch, mask=batch.mask & edits.keep)
            edits = edits.combine(part.edits(view, reduce, generator))
        return edits
