"""Entropy controls TRL already implements; the flag only switches TRL's own option on, so nothing is re-implemented.

- entropy_bonus: TRL's `entropy_coef` (static) or `use_adaptive_entropy` (Skywork-OR1 target controller).
- clip_higher: DAPO's decoupled clip, `epsilon` 0.2 / `epsilon_high` 0.28.
- high_entropy_tokens: "Beyond the 80/20 rule", TRL's `top_entropy_quantile` 0.2 (policy loss on the top 20 %).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Regularizer, register


@register
@dataclass
class EntropyBonus(Regularizer):
    name = "entropy_bonus"
    kind = "native"
    trl_defaults = {"entropy_coef": 1e-3}  # applied when neither entropy_coef nor use_adaptive_entropy is set


@register
@dataclass
class ClipHigher(Regularizer):
    name = "clip_higher"
    kind = "native"
    trl_defaults = {"epsilon_high": 0.28}  # applied when epsilon_high is unset


@register
@dataclass
class HighEntropyTokens(Regularizer):
    name = "high_entropy_tokens"
    kind = "native"
    trl_defaults = {"top_entropy_quantile": 0.2}  # applied when top_entropy_quantile is left at 1.0
