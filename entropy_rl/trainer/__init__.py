"""EntropyGRPOTrainer, TRL's GRPOTrainer with entropy diagnostics and regularizers (grpo.py), and its parts:
checkpoints.py, metrics_file.py, sampling.py (dynamic sampling) and param_dynamics.py, mixed into the one class."""

from .checkpoints import check_start
from .grpo import EntropyGRPOTrainer, as_entropy_config

__all__ = ["EntropyGRPOTrainer", "as_entropy_config", "check_start"]
