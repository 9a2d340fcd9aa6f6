"""The methods by name, and the one parser of --regularizer: a new method is its file plus its entry in REGISTRY."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import NONE, Kind, Regularizer
from .clip_b import ClipB
from .clip_cov import ClipCov
from .clip_v import ClipV
from .kl_cov import KLCov
from .native import ClipHigher, EntropyBonus, HighEntropyTokens
from .steer import Steer

REGISTRY: dict[str, type[Regularizer]] = {
    method.name: method
    for method in (
        ClipB,
        ClipCov,
        ClipV,
        KLCov,
        EntropyBonus,
        ClipHigher,
        HighEntropyTokens,
        Steer,
    )
}


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
    rules = ((Kind.LOSS, "both rewrite the token loss"), (Kind.FILTER, "both remove negative-advantage tokens"))
    for kind, reason in rules:
        same = [name for name in names if REGISTRY[name].kind == kind]
        if len(same) > 1:
            raise ConfigError(f"invalid config: regularizer={spec!r} combines {same}, which {reason}; pick one")
    for name in names:
        REGISTRY[name].check_pairing(spec, names)
    return names


def parameter_names(name: str, methods: Mapping[str, type[Regularizer]] = REGISTRY) -> list[str]:
    return [f.name for f in dataclasses.fields(methods[name])]


def build_methods(
    spec: str, params: Mapping[str, Any], methods: Mapping[str, type[Regularizer]] = REGISTRY
) -> list[Regularizer]:
    """The methods of `spec`, each given its own (prefixed) parameters; `methods` may stand in other classes for
    some names (the verl plugin's high_entropy_tokens)."""
    names = parse_names(spec)
    own = {name: parameter_names(name, methods) for name in names}
    accepted = {field for fields in own.values() for field in fields}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"invalid config: parameters {unknown} do not belong to regularizer={spec!r} ({sorted(accepted)})"
        )
    return [methods[name](**{k: v for k, v in params.items() if k in own[name]}) for name in names]
