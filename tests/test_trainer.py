"""EntropyGRPOTrainer against plain TRL GRPOTrainer, and the metrics it writes."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_GRPO, length_parity_reward
from trl import GRPOConfig, GRPOTrainer

from entropy_rl.config import ConfigError, EntropyGRPOConfig
from entropy_rl.jsonl import read_rows
from entropy_rl.trainer import EntropyGRPOTrainer

DIAGNOSTIC_KEYS = {
    "step",
    "tokens",
    "reward",
    "entropy/token_mean",
    "entropy/seq_mean",
    "cov/logp_adv",
    "cov/corr_logp_adv",
    "discriminator/S_mean",
    "discriminator/N_mean",
    "dynamics/predicted_dH",
    "quadrant/pos_adv_S_gt_N",
    "quadrant/pos_adv_S_lt_N",
    "quadrant/neg_adv_S_gt_N",
    "quadrant/neg_adv_S_lt_N",
    "quadrant/zero_adv",
}


def train(trainer_cls, config_cls, model, tokenizer, dataset, tmp_path, **overrides):
    args = config_cls(output_dir=str(tmp_path), **{**TINY_GRPO, "max_steps": 3, **overrides})
    trainer = trainer_cls(
        model=model, reward_funcs=[length_parity_reward], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    return trainer


def train_ours(model, tokenizer, dataset, tmp_path, **overrides):
    return train(EntropyGRPOTrainer, EntropyGRPOConfig, model, tokenizer, dataset, tmp_path, **overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # off-policy: two optimizer steps per generation and gradient accumulation, so ratios differ from 1
        {"num_iterations": 2, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 8},
    ],
)
def test_diagnostics_do_not_change_training(make_model, tokenizer, train_dataset, tmp_path, overrides):
    plain = train(GRPOTrainer, GRPOConfig, make_model(), tokenizer, train_dataset, tmp_path / "plain", **overrides)
    ours = train_ours(make_model(), tokenizer, train_dataset, tmp_path / "ours", dynamics_every=1, **overrides)
    plain_losses = [h["loss"] for h in plain.state.log_history if "loss" in h]
    our_losses = [h["loss"] for h in ours.state.log_history if "loss" in h]
    assert plain_losses == our_losses
    assert any(h["grad_norm"] > 0 for h in plain.state.log_history if "grad_norm" in h)  # the test is not vacuous
    for (name, p), (_, q) in zip(plain.model.named_parameters(), ours.model.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_metrics_jsonl_has_one_row_per_step(make_model, tokenizer, train_dataset, tmp_path):
    trainer = train_ours(make_model(), tokenizer, train_dataset, tmp_path, max_steps=4, dynamics_every=2)
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["reward"] == next(h["reward"] for h in trainer.state.log_history if "reward" in h)
    for row in rows:
        assert row.keys() >= DIAGNOSTIC_KEYS
    assert ["dynamics/measured_dH" in r for r in rows] == [False, True, False, True]
    # TRL computes its own entropy metric from the same tokens: the global token mean must agree.
    trl_entropy = [h["entropy"] for h in trainer.state.log_history if "entropy" in h]
    assert trl_entropy == pytest.approx([r["entropy/token_mean"] for r in rows], abs=1e-4)
    logged = [h for h in trainer.state.log_history if "cov/logp_adv" in h]
    assert len(logged) == 4  # reached TRL's logging (and so report_to backends)
    trainer.end()  # ours at every transformers release we allow (Trainer.end only from 5.18)


def test_trl_logs_are_the_mean_of_the_metrics_rows_of_their_window(make_model, tokenizer, train_dataset, tmp_path):
    # One source of truth: each step's row goes to metrics.jsonl and into TRL's metrics, which TRL averages over
    # the logging_steps window for log_history and report_to.
    trainer = train_ours(make_model(), tokenizer, train_dataset, tmp_path, max_steps=4, logging_steps=2)
    rows = read_rows(tmp_path / "metrics.jsonl")
    logged = [h for h in trainer.state.log_history if "cov/logp_adv" in h]
    assert [h["step"] for h in logged] == [2, 4]
    for log, window in zip(logged, (rows[:2], rows[2:]), strict=True):
        for key in DIAGNOSTIC_KEYS - {"step"}:
            assert log[key] == pytest.approx(sum(r[key] for r in window) / 2, rel=1e-6), key


def test_equal_rewards_give_nan_free_metrics(make_model, tokenizer, train_dataset, tmp_path):
    args = EntropyGRPOConfig(output_dir=str(tmp_path), **{**TINY_GRPO, "max_steps": 2})
    trainer = EntropyGRPOTrainer(
        model=make_model(),
        reward_funcs=[lambda completions, **kw: [1.0] * len(completions)],
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    for row in read_rows(tmp_path / "metrics.jsonl"):
        assert row["quadrant/zero_adv"] == 1.0 and row["cov/logp_adv"] == 0.0
        assert all(v is not None for v in row.values())


@pytest.mark.parametrize("field,value", [("dynamics_every", -1), ("metrics_file", "a/b.jsonl")])
def test_bad_config_values_name_field_and_value(field, value, tmp_path):
    with pytest.raises(ConfigError, match=f"{field}={value!r}.*allowed"):
        EntropyGRPOConfig(output_dir=str(tmp_path), **{field: value})
