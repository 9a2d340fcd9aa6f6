"""Entropy regularizers: one file per method, pure tensor code, registered by name.

    from entropy_rl.regularizers import get_regularizer
    reg = get_regularizer("clip_cov", clip_cov_ratio=2e-4)
    loss, metrics = reg.policy_loss(logps=logps, old_logps=old_logps, advantages=adv, mask=mask)

Names combine with "+" (`clip_b+steer`: a token filter plus a loss rewrite). See docs/regularizers.md.

A method is one file in this package: a dataclass decorated with `@register`, its hyperparameters declared as fields
named `<method>_<param>` with a default and `metadata={"help": ...}`; EntropyGRPOConfig takes them from its
`regularizer_kwargs`, the built-in methods' from its fields written out for them.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import torch

from ..errors import ConfigError
from .base import LOCAL, REGISTRY, Edits, Reducer, Regularizer, TokenBatch, aggregate, register
from .native import NativeRegularizer

# Modules of this package that hold no method; every other module registers its methods when imported.
SUPPORT_MODULES = frozenset({"base", "common"})
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in SUPPORT_MODULES:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "REGISTRY",
    "Composite",
    "Edits",
    "NativeRegularizer",
    "Reducer",
    "Regularizer",
    "TokenBatch",
    "aggregate",
    "get_regularizer",
    "parameter_names",
    "parse_names",
    "register",
]

NONE = "none"


def parse_names(spec: str) -> list[str]:
    """'clip_b+steer' -> ['clip_b', 'steer'], refusing unknown names and combinations whose parts collide."""
    names = [] if spec.strip() == NONE else [part.strip() for part in spec.split("+")]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise ConfigError(
            f"invalid config: regularizer={spec!r}; allowed: {NONE!r} or '+'-joined names from {sorted(REGISTRY)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"invalid config: regularizer={spec!r} names a method twice")
    for kind, reason in (("loss", "both rewrite the token loss"), ("filter", "both remove negative-advantage tokens")):
        same = [name for name in names if REGISTRY[name].kind == kind]
        if len(same) > 1:
            raise ConfigError(f"invalid config: regularizer={spec!r} combines {same}, which {reason}; pick one")
    if "kl_cov" in names and "clip_higher" in names:
        raise ConfigError(
            f"invalid config: regularizer={spec!r}: KL-Cov uses no PPO clip, so clip_higher has no effect"
        )
    return names


def parameter_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(REGISTRY[name])]


class Composite(Regularizer):
    """Several regularizers applied together: weights multiply, removals add up, one penalty at most."""

    kind = "composite"

    def __init__(self, parts: list[Regularizer]):
        self.parts = parts
        self.name = "+".join(part.name for part in parts) or NONE
        self.needs = frozenset().union(*(part.needs for part in parts))
        self.uses_ppo_clip = all(part.uses_ppo_clip for part in parts)

    def edits(self, batch: TokenBatch, reduce: Reducer = LOCAL, generator: torch.Generator | None = None) -> Edits:
        # Filters run first and the other parts see only the tokens they keep: in the reference code Clip_B / Clip_V
        # shrink the response mask before the policy loss, so Clip-Cov's means and STEER's min/max skip removed tokens.
        edits = Edits()
        for part in sorted(self.parts, key=lambda part: part.kind != "filter"):
            view = batch if edits.keep is None else dataclasses.replace(batch, mask=batch.mask & edits.keep)
            edits = edits.combine(part.edits(view, reduce, generator))
        return edits


def get_regularizer(spec: str, **params: Any) -> Regularizer:
    """Build a regularizer (or a '+' composition) from its name and its prefixed parameters (e.g. clip_cov_ratio)."""
    names = parse_names(spec)
    accepted = {field for name in names for field in parameter_names(name)}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"invalid config: parameters {unknown} do not belong to regularizer={spec!r} ({sorted(accepted)})"
        )
    parts = [REGISTRY[name](**{k: v for k, v in params.items() if k in parameter_names(name)}) for name in names]
    return parts[0] if len(parts) == 1 else Composite(parts)
