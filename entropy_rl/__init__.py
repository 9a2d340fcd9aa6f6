"""entropy-rl: control and study policy entropy in GRPO fine-tuning of LLMs, on top of TRL.

`EntropyGRPOConfig` / `EntropyGRPOTrainer` import TRL (seconds); they load on first access.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["EntropyGRPOConfig", "EntropyGRPOTrainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "EntropyGRPOConfig":
        from .config import EntropyGRPOConfig

        return EntropyGRPOConfig
    if name == "EntropyGRPOTrainer":
        from .trainer import EntropyGRPOTrainer

        return EntropyGRPOTrainer
    raise AttributeError(name)
