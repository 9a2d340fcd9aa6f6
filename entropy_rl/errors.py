"""Errors with messages a user can act on: the field, the value and what is allowed.

Every error the package raises for bad input derives from `EntropyRLError`; the commands turn it into one line
`entropy-rl CMD: error: ...` and exit code 2 (entropy_rl.cli.common), library callers catch it like any ValueError.
"""

from __future__ import annotations

from typing import Any


class EntropyRLError(ValueError):
    """Bad input (a config value, a file, a run directory): the message names what is wrong and what is allowed."""


class ConfigError(EntropyRLError):
    """A config value is out of range or unknown."""


def check(condition: bool, name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"invalid config: {name}={value!r}; allowed: {allowed}")


class RewardError(EntropyRLError):
    """The reward functions gave no usable reward for too long (every completion NaN/inf, batch after batch)."""


class DynamicSamplingError(EntropyRLError):
    """Dynamic sampling spent its generation rounds before the batch was full (dynamic_sampling_at_cap='error')."""
