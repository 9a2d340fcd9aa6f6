"""Errors with messages a user can act on: the field, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is out of range or unknown."""


def check(condition: bool, name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"invalid config: {name}={value!r}; allowed: {allowed}")
