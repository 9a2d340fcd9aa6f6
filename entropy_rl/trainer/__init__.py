"""EntropyGRPOTrainer, TRL's GRPOTrainer with entropy diagnostics and regularizers (grpo.py), its checkpoints mix-in
(checkpoints.py) and the helper objects it holds (docs/architecture.md lists them)."""

from .checkpoints import check_start
from .grpo import EntropyGRPOTrainer, as_entropy_config

__all__ = ["EntropyGRPOTrainer", "as_entropy_config", "check_start"]
