"""The per-token keys EntropyGRPOTrainer adds to TRL's batch dict (TRL shuffles and splits them with its own) and the
two masks read from a batch."""

from __future__ import annotations

from typing import Any

import torch

# VALID_KEY keeps the loss mask from before a filter removed tokens: the diagnostics measure the policy on every
# sampled token, whatever a regularizer does with them.
WEIGHT_KEY, PENALTY_KEY, VALID_KEY = "entropy_rl_weight", "entropy_rl_penalty", "entropy_rl_valid"
# Kept in the micro-batch copy on measuring steps for the parameter-space attribution (entropy_rl/param_prediction.py).
RAW_ADV_KEY, S_MINUS_N_KEY = "entropy_rl_raw_advantages", "entropy_rl_s_minus_n"


def loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
    """The tokens TRL's loss counts: `completion_mask * tool_mask` (tests/test_trl_contract.py)."""
    mask = inputs["completion_mask"]
    return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask


def valid_mask(inputs: dict[str, Any]) -> torch.Tensor:
    """Every sampled completion token, including those a filter regularizer removed from the loss."""
    return inputs[VALID_KEY] if VALID_KEY in inputs else loss_mask(inputs)


def sampler_correction(inputs: dict[str, Any], corrected: bool) -> torch.Tensor | float:
    """TRL's vLLM importance-sampling weight of each token (1 without vLLM): the factor TRL's `_compute_loss`
    multiplies every per-token policy loss by, so that the KL-Cov penalty and the diagnostics' predicted entropy
    change weigh the tokens as the update does. `corrected`: TRL applies it (vLLM with its correction on, not vespo)."""
    ratio = inputs.get("importance_sampling_ratio")
    return ratio if corrected and ratio is not None else 1.0
