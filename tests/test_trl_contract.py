"""Fails loudly when a TRL upgrade changes what EntropyGRPOTrainer hooks. Read the failure, then re-check the hook."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import trl
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils

import entropy_rl.trainer as ours


def test_trl_is_the_pinned_version():
    assert version("trl") == "1.16.0", "entropy-rl hooks TRL 1.16.0 internals; re-run this file's checks before bumping"


def parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_hooked_method_signatures():
    assert parameters(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    assert parameters(GRPOTrainer._get_per_token_logps_and_entropies)[:7] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
    ]
    assert parameters(GRPOTrainer.get_high_entropy_mask) == ["self", "entropies", "mask", "threshold"]
    assert parameters(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    # Checkpoint hooks (regularizer state is saved and restored beside TRL's entropy controller state)
    assert parameters(GRPOTrainer._save_checkpoint) == ["self", "model", "trial"]
    assert parameters(GRPOTrainer._load_optimizer_and_scheduler) == ["self", "checkpoint"]


def test_compute_loss_calls_logps_once_with_entropy_and_reads_the_documented_inputs():
    source = inspect.getsource(GRPOTrainer._compute_loss)
    assert source.count("self._get_per_token_logps_and_entropies(") == 1
    assert "compute_entropy=True" in source
    for key in ('"advantages"', '"completion_mask"', '"completion_ids"', '"old_per_token_logps"', '"tool_mask"'):
        assert key in source, key
    # Edits made inside the logps call must come before TRL reads the advantages and the old log-probs.
    call = source.index("self._get_per_token_logps_and_entropies(")
    assert source.index('advantages = inputs["advantages"]') > call
    assert source.index('inputs.get("old_per_token_logps")') > call
    assert source.index('inputs["num_items_in_batch"]') > call  # filters taken at loss time recount it
    # The loss-time mask is completion_mask * tool_mask: the diagnostics rebuild it the same way.
    assert 'completion_mask * inputs["tool_mask"]' in source


def test_generation_output_keys_the_step_level_edits_extend():
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for key in ('"completion_mask"', '"num_items_in_batch"', '"tool_mask"'):
        assert key in source, key


def test_logps_method_returns_logps_entropies_then_the_rest():
    source = inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    assert "return logps, entropies, aux_loss" in source
    assert "outputs.log_probs[:, -logits_to_keep:]" in source


def test_fused_head_reads_the_backbone_and_the_head_transform_we_mirror():
    source = inspect.getsource(trl_utils.add_fused_lm_head)
    # The diagnostics capture the final hidden states with a forward hook on `model.base_model`.
    assert 'backbone_attr = "base_model"' in source
    assert "last_hidden_state[:, :-1]" in source
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        assert attr in source, attr
    ours_source = inspect.getsource(ours._head_transform)
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        assert attr in ours_source, attr


def test_metrics_store_and_step_callback_contract():
    source = inspect.getsource(GRPOTrainer.log)
    assert "self._metrics[mode].items()" in source and "self._metrics[mode].clear()" in source
    assert hasattr(trl, "GRPOConfig") and "entropy_coef" in trl.GRPOConfig.__dataclass_fields__
