"""The reward functions `reward_funcs` names: ours and TRL's by name (REWARDS), anything else by import path; and the
check, before any model loads, that TRL can call each of them (`check_reward_signature`)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

# Reward functions usable by name in `reward_funcs`: ours, then TRL's (trl.rewards, as trl/scripts/grpo.py names
# them). Anything else is an import path, `package.module:function` or TRL's dotted `package.module.function`.
REWARDS = {
    "arithmetic": "entropy_rl.toy:arithmetic_reward",
    "math": "entropy_rl.rewards:math_reward",  # the final \boxed{} only, boxes must agree, math-verify
    "math_last_box": "entropy_rl.rewards:math_last_box_reward",  # the last \boxed{}, as verl's scorers
    "math_loose": "entropy_rl.rewards:math_loose_reward",  # the evaluator's fallbacks too (GSM8K-style data)
    "accuracy_reward": "trl.rewards:accuracy_reward",
    "reasoning_accuracy_reward": "trl.rewards:reasoning_accuracy_reward",
    "think_format_reward": "trl.rewards:think_format_reward",
    "get_soft_overlong_punishment": "trl.rewards:get_soft_overlong_punishment",
}


# TRL's script builds this one from a factory with these values; so does this one, for the same command line.
REWARD_FACTORY_KWARGS = {"get_soft_overlong_punishment": {"max_completion_len": 1280, "soft_punish_cache": 256}}


def _import_path(name: str) -> tuple[str, str]:
    """(module, attribute) of 'pkg.mod:func' or 'pkg.mod.func'."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(
            f"invalid config: reward_funcs entry {name!r}; allowed: one of {sorted(REWARDS)} or an import path "
            "'package.module:function'"
        )
    return module_name, attr


def resolve_reward(name: str) -> Callable[..., list[float]]:
    """The reward function `name` stands for (see REWARDS); an import path may name a module in the cwd, as in TRL."""
    module_name, attr = _import_path(REWARDS.get(name, name))
    if name not in REWARDS and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # trl/scripts/grpo.py does the same for `my_rewards.func`
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"invalid config: reward_funcs entry {name!r} cannot be imported ({err})") from err
    if name in REWARD_FACTORY_KWARGS:
        function = function(**REWARD_FACTORY_KWARGS[name])
    if not callable(function):
        raise ConfigError(f"invalid config: reward_funcs entry {name!r} is {type(function).__name__}, not a function")
    return function


# Keyword arguments TRL 1.16's _calculate_rewards passes every reward function, next to the dataset's other columns.
REWARD_CALL_KEYS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


# Dataset columns TRL does not pass on to reward functions (it passes them as prompts / completions instead).
NOT_PASSED_COLUMNS = ("prompt", "completion", "completion_ids")


def check_reward_signature(name: str, function: Callable[..., Any], columns: list[str] | None) -> None:
    """Refuse, before any model loads, a reward function TRL could not call: TRL calls it with keywords only,
    REWARD_CALL_KEYS plus the dataset's columns (`columns`; None for a stream whose columns are unknown)."""
    allowed = (
        "a function f(prompts, completions, **kwargs) returning one float (or None) per completion, called with "
        "TRL's reward keywords (prompts, completions, completion_ids, trainer_state, log_extra, log_metric and the "
        "dataset's columns)"
    )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise ConfigError(
            f"invalid config: reward_funcs entry {name!r} has no Python signature to call; allowed: {allowed}"
        ) from None
    keys = [*REWARD_CALL_KEYS, *(c for c in columns or [] if c not in NOT_PASSED_COLUMNS)]
    try:
        (signature.bind if columns is not None else signature.bind_partial)(**dict.fromkeys(keys))
    except TypeError as err:
        raise ConfigError(
            f"invalid config: reward_funcs entry {name!r} takes {signature} and cannot be called with TRL's reward "
            f"arguments ({err}); allowed: {allowed}"
        ) from None
