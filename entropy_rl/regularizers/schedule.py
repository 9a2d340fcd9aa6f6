"""When each method of --regularizer runs: built once from the spec, asked by every executor (trainer, verl plugin).

Filters (Clip_B, Clip_V) take their statistics over the whole rollout batch of every rank, once per rollout batch.
Loss rewrites (Clip-Cov, KL-Cov, STEER) take theirs per loss micro-batch, as the authors' verl code does, unless
stat_scope="global" moves them to the rollout batch too. Native methods are TRL options: no edit of ours runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Composite, Kind, Regularizer
from .registry import REGISTRY, build_methods


class EditSchedule:
    """The methods of one --regularizer value, split by when their edits are computed.

    regularizer: every method together (one method, or a Composite): the tensor-level API's view.
    per_rollout: the methods computed once per rollout batch over every rank, or None.
    per_micro_batch: the methods computed on each loss micro-batch from its own tokens, or None.
    """

    def __init__(
        self,
        spec: str,
        params: Mapping[str, Any] | None = None,
        *,
        stat_scope: str = "micro_batch",
        methods: Mapping[str, type[Regularizer]] = REGISTRY,
    ):
        parts = build_methods(spec, params or {}, methods)
        self.regularizer = parts[0] if len(parts) == 1 else Composite(parts)

        def per_rollout(part: Regularizer) -> bool:
            return part.kind == Kind.FILTER or (part.kind == Kind.LOSS and stat_scope == "global")

        rollout = [part for part in parts if per_rollout(part)]
        micro_batch = [part for part in parts if part.kind == Kind.LOSS and not per_rollout(part)]
        self.per_rollout = Composite(rollout) if rollout else None
        self.per_micro_batch = Composite(micro_batch) if micro_batch else None

    @property
    def uses_ppo_clip(self) -> bool:
        """False when a method optimises the unclipped surrogate (KL-Cov): the PPO clip is then switched off."""
        return self.regularizer.uses_ppo_clip


def get_regularizer(spec: str, **params: Any) -> Regularizer:
    """Build a regularizer (or a '+' composition) from its name and its prefixed parameters (e.g. clip_cov_ratio)."""
    return EditSchedule(spec, params).regularizer
