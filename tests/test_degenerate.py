"""Degenerate batches: no crash, no NaN or inf in the loss or the metrics, and each case visible as what it is."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY_GRPO, fixed_batch, length_parity_reward

from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.jsonl import read_rows
from entropy_rl.trainer import EntropyGRPOTrainer


def finite(values) -> bool:
    return all(v is None or isinstance(v, str) or math.isfinite(v) for v in values)


def train(make_model, tokenizer, dataset, tmp_path, reward=length_parity_reward, model=None, **overrides):
    args = EntropyGRPOConfig(
        output_dir=str(tmp_path), **{**TINY_GRPO, "max_steps": 2, "dynamics_every": 1, **overrides}
    )
    trainer = EntropyGRPOTrainer(
        model=model or make_model(), reward_funcs=[reward], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    history = trainer.state.log_history
    assert all(finite(h.values()) for h in history)
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(finite(r.values()) for r in rows)
    return rows, history


@pytest.mark.parametrize("regularizer", ["none", "clip_cov", "clip_b+steer", "clip_v"])
def test_no_valid_completion_token(make_model, tokenizer, train_dataset, tmp_path, regularizer):
    # Every completion is cut at one token and truncated completions are masked: nothing is left to learn from.
    rows, history = train(
        make_model,
        tokenizer,
        train_dataset,
        tmp_path,
        regularizer=regularizer,
        max_completion_length=1,
        mask_truncated_completions=True,
    )
    # A random policy rarely stops after one token: the first step is empty. It is logged as an empty step.
    assert rows[0]["tokens"] == 0 and "entropy/token_mean" not in rows[0]
    assert next(h for h in history if "loss" in h)["loss"] == 0


@pytest.mark.parametrize("regularizer", ["none", "steer", "clip_b"])
def test_all_rewards_equal_in_every_group(make_model, tokenizer, train_dataset, tmp_path, regularizer):
    rows, _ = train(
        make_model,
        tokenizer,
        train_dataset,
        tmp_path,
        reward=lambda completions, **kw: [0.5] * len(completions),
        regularizer=regularizer,
    )
    for row in rows:
        assert row["frac_reward_zero_std"] == 1.0 and row["quadrant/zero_adv"] == 1.0
        assert row["dynamics/predicted_dH"] == 0.0


def test_completions_truncated_at_max_length(make_model, tokenizer, train_dataset, tmp_path):
    rows, _ = train(make_model, tokenizer, train_dataset, tmp_path, max_completion_length=2)
    assert all(r["completions/clipped_ratio"] > 0.5 for r in rows) and all(r["tokens"] > 0 for r in rows)


def test_deterministic_policy_with_zero_entropy(make_model, tokenizer, train_dataset, tmp_path):
    model = make_model()
    with torch.no_grad():  # huge logits: every next-token distribution is one-hot in float32
        model.lm_head.weight.mul_(1e4)
    rows, _ = train(make_model, tokenizer, train_dataset, tmp_path, model=model, regularizer="clip_v")
    assert all(r["entropy/token_mean"] < 1e-3 for r in rows)


def test_extreme_log_ratios_stay_finite(make_trainer, tmp_path):
    args = EntropyGRPOConfig(output_dir=str(tmp_path), **{**TINY_GRPO, "regularizer": "kl_cov", "num_iterations": 2})
    trainer = make_trainer(args)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = fixed_batch(trainer)
    inputs["old_per_token_logps"] = inputs["old_per_token_logps"] + torch.tensor([300.0, -300.0]).repeat(4)[:, None]
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None)
    trainer.state.global_step = 1
    trainer._finish_step()
    assert finite(v[-1] for v in trainer._metrics["train"].values())
