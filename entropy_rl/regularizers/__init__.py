"""Entropy regularizers: one file per method, pure tensor code, registered by name in `registry.REGISTRY`.

    from entropy_rl.regularizers import get_regularizer
    reg = get_regularizer("clip_cov", clip_cov_ratio=2e-4)
    loss, metrics = reg.policy_loss(logps=logps, old_logps=old_logps, advantages=adv, mask=mask)

Names combine with "+" (`clip_b+steer`: a token filter plus a loss rewrite). See docs/regularizers.md.

A method is one file in this package plus its entry in `registry.REGISTRY`: a dataclass with a `kind`, its
hyperparameters declared as fields named `<method>_<param>` with a default and `metadata={"help": ...}`;
EntropyGRPOConfig takes them from its `regularizer_kwargs`, the built-in methods' from its fields written out for
them. `EditSchedule` says which methods run per rollout batch and which per loss micro-batch.
"""

from __future__ import annotations

from .base import LOCAL, Composite, Edits, Kind, Reducer, Regularizer, aggregate
from .native import NativeRegularizer
from .registry import REGISTRY, parameter_names, parse_names
from .schedule import EditSchedule, get_regularizer

__all__ = [
    "LOCAL",
    "REGISTRY",
    "Composite",
    "EditSchedule",
    "Edits",
    "Kind",
    "NativeRegularizer",
    "Reducer",
    "Regularizer",
    "aggregate",
    "get_regularizer",
    "parameter_names",
    "parse_names",
]
