"""Entropy controls TRL already implements; the flag only switches TRL's own option on, so nothing is re-implemented.

- entropy_bonus: TRL's `entropy_coef` (static) or `use_adaptive_entropy` (Skywork-OR1 target controller).
- clip_higher: DAPO's decoupled clip, `epsilon` 0.2 / `epsilon_high` 0.28.
- high_entropy_tokens: "Beyond the 80/20 rule", TRL's `top_entropy_quantile` 0.2 (policy loss on the top 20 %).

Each class names the TRL option it switches on, the values it sets when the run leaves that option alone, and how to
tell from a GRPOConfig that the option was set by hand. TRL's options keep TRL's meaning without the flag: an option
set by hand names its method in the run's regularizer (so runs are labelled by what they do), except clip_higher's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from ..tokens import CLIP_LOSS_TYPES
from .base import Kind, Regularizer, without_ppo_clip


class NativeRegularizer(Regularizer):
    """A switch for an option of TRL's GRPOConfig; at the tensor level it is plain PPO."""

    kind = Kind.NATIVE
    trl_option: ClassVar[str]  # the GRPOConfig field that turns the method on
    trl_defaults: ClassVar[dict[str, Any]]  # set on the config when the method is chosen and the option is unset
    names_run: ClassVar[bool] = True  # setting the option by hand adds the method's name to the run's regularizer

    @classmethod
    def option_is_set(cls, config: Any) -> bool:
        """Whether `config` (a GRPOConfig) already switches the method on by its TRL option."""
        raise NotImplementedError


@dataclass
class EntropyBonus(NativeRegularizer):
    name = "entropy_bonus"
    trl_option = "entropy_coef"
    trl_defaults = {"entropy_coef": 1e-3}  # applied when neither entropy_coef nor use_adaptive_entropy is set

    @classmethod
    def option_is_set(cls, config: Any) -> bool:
        return config.entropy_coef != 0 or bool(config.use_adaptive_entropy)


@dataclass
class ClipHigher(NativeRegularizer):
    name = "clip_higher"
    trl_option = "epsilon_high"
    trl_defaults = {"epsilon_high": 0.28}  # applied when epsilon_high is unset
    names_run = False  # an asymmetric clip on its own is an ordinary PPO setting

    @classmethod
    def check_pairing(cls, spec: str, names: Sequence[str], options: Any = None) -> None:
        no_clip = None if options is None else without_ppo_clip(options)
        if no_clip:
            raise ConfigError(
                f"invalid config: regularizer={spec!r} with {no_clip}: clip_higher raises the PPO "
                f"clip's upper bound; allowed: loss_type in {CLIP_LOSS_TYPES}"
            )

    @classmethod
    def option_is_set(cls, config: Any) -> bool:
        return config.epsilon_high is not None


@dataclass
class HighEntropyTokens(NativeRegularizer):
    name = "high_entropy_tokens"
    trl_option = "top_entropy_quantile"
    trl_defaults = {"top_entropy_quantile": 0.2}  # applied when top_entropy_quantile is left at 1.0

    @classmethod
    def option_is_set(cls, config: Any) -> bool:
        return config.top_entropy_quantile < 1.0
