"""entropy-rl: control and study policy entropy in GRPO fine-tuning of LLMs, on top of TRL.

`EntropyGRPOConfig` / `EntropyGRPOTrainer` import TRL (seconds); they load on first access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["EntropyGRPOConfig", "EntropyGRPOTrainer"]


def __getattr__(name: str) -> Any:
    if name == "EntropyGRPOConfig":
        from .config import EntropyGRPOConfig

        return EntropyGRPOConfig
    if name == "EntropyGRPOTrainer":
        from .trainer import EntropyGRPOTrainer

        return EntropyGRPOTrainer
    raise AttributeError(name)
