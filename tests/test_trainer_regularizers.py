"""Regularizers inside EntropyGRPOTrainer: same gradient as the tensor-level API, and a short run of each method."""

from __future__ import annotations

import pytest
import torch
from helpers import METHOD_PARAMS, TINY_GRPO, fixed_batch, registered

from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.jsonl import read_rows


def method_args(tmp_path, name, **overrides) -> EntropyGRPOConfig:
    """Two tiny steps of method `name` with its METHOD_PARAMS."""
    params = {"regularizer": name, **METHOD_PARAMS.get(name, {}), **overrides}
    return EntropyGRPOConfig(output_dir=str(tmp_path), **{**TINY_GRPO, "max_steps": 2, **params})


def reference_loss(model, inputs, reg, temperature):
    """The tensor-level API on a plain forward pass: logits -> log_softmax -> policy_loss (token-mean)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    logits = model(input_ids=ids).logits[:, 4:-1] / temperature
    logp_all = torch.log_softmax(logits.float(), -1)
    p = logp_all.exp()
    entropies = -(p * logp_all).sum(-1).detach()
    nec = (p * p * (logp_all + entropies[..., None])).sum(-1).detach()
    logps = logp_all.gather(-1, inputs["completion_ids"][..., None])[..., 0]
    eps_low, eps_high = (0.2, 0.2) if reg.uses_ppo_clip else (1.0, float("inf"))
    return reg.policy_loss(
        logps=logps,
        old_logps=inputs["old_per_token_logps"],
        advantages=inputs["advantages"],
        mask=inputs["completion_mask"],
        entropies=entropies,
        nec=nec,
        clip_ratio_low=eps_low,
        clip_ratio_high=eps_high,
        generator=torch.Generator().manual_seed(0),
    )[0]


@pytest.mark.parametrize("name", ["none", *registered("loss"), "steer_exp_exact"])
def test_trainer_gradient_equals_tensor_api(make_trainer, tmp_path, name):
    trainer = make_trainer(
        method_args(
            tmp_path,
            name.split("_exp")[0] if "exp" in name else name,
            **({"steer_mapping": "exp", "steer_estimator": "exact"} if "exp" in name else {}),
        )
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.state.global_step = 1  # no measured-dH bookkeeping for this hand-made batch
    inputs = fixed_batch(trainer)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.loss_edits.generator.manual_seed(0)
    ours = torch.autograd.grad(trainer._compute_loss(trainer.model, inputs), params, allow_unused=True)
    reg = trainer.regularizer
    theirs = torch.autograd.grad(
        reference_loss(trainer.model, inputs, reg, trainer.temperature), params, allow_unused=True
    )
    for a, b in zip(ours, theirs, strict=True):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0
            continue
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)
    assert any(g is not None and g.abs().max() > 0 for g in ours)
    assert trainer.loss_edits.metric_sums or name == "none"  # the method logged what it did


@pytest.mark.parametrize("name", list(dict.fromkeys(["none", *registered(), *METHOD_PARAMS])))
def test_short_run_of_every_method(make_trainer, tmp_path, name):
    trainer = make_trainer(method_args(tmp_path, name.replace("_exp_exact", "")))
    trainer.train()
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(loss)))
    expected = {
        "clip_cov": "reg/clip_cov/clipped_frac",
        "kl_cov": "reg/kl_cov/penalized_frac",
        "steer": "reg/steer/weight_mean",
        "clip_b": "reg/clip_b/removed_frac",
        "clip_v": "reg/clip_v/removed_frac",
    }
    for method, key in expected.items():
        if method in name.split("+"):
            assert all(key in r for r in rows), key
    if name == "entropy_bonus":
        assert any("entropy_coef" in h for h in trainer.state.log_history)


def test_filters_do_not_change_what_the_diagnostics_measure(make_trainer, tmp_path):
    # Same seed, same rollout: a filter removes tokens from the loss, not from the measurement of the policy.
    rows = {}
    for name in ("none", "clip_b"):
        make_trainer(method_args(tmp_path / name, name, max_steps=1)).train()
        rows[name] = read_rows(tmp_path / name / "metrics.jsonl")[0]
    assert rows["clip_b"]["reg/clip_b/removed_frac"] > 0
    for key in ("tokens", "entropy/token_mean", "entropy/seq_mean", "cov/logp_adv", "discriminator/N_mean"):
        assert rows["clip_b"][key] == pytest.approx(rows["none"][key], rel=1e-9), key


@pytest.mark.parametrize("name", ["none", *registered("loss")])
def test_vllm_importance_weights_reach_every_term_as_in_trls_loss(make_trainer, tmp_path, name):
    """TRL's vLLM path, without vLLM: the batch carries the sampler's log-probs and TRL's importance-sampling ratio.

    TRL multiplies every per-token policy loss by the ratio; the KL-Cov penalty and the predicted entropy change must
    follow (a constant ratio c scales the whole loss and the prediction by c), while the PPO ratio, the clip and the
    methods' statistics keep using `old_per_token_logps`, the training model's log-probs of the rollout policy: the
    sampler's own log-probs (here deliberately far off) are read by TRL's correction only.
    """
    from entropy_rl import stats
    from entropy_rl.trainer.step_sums import TOKENS

    trainer = make_trainer(method_args(tmp_path, name))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.state.global_step = 1
    inputs = fixed_batch(trainer)

    def loss_and_metrics(extra):
        trainer.loss_edits.generator.manual_seed(0)
        trainer.step_sums.clear()
        loss = trainer._compute_loss(trainer.model, {**inputs, **extra})
        return loss.detach(), stats.step_metrics(trainer.step_sums.get(TOKENS).tolist())

    plain, plain_metrics = loss_and_metrics({})
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = True  # what TRL's loss reads of its vLLM path
    c = 0.7
    sampler = {
        "importance_sampling_ratio": torch.full_like(inputs["old_per_token_logps"], c),
        "sampling_per_token_logps": inputs["old_per_token_logps"] - 3.0,
    }
    corrected, metrics = loss_and_metrics(sampler)
    torch.testing.assert_close(corrected, c * plain, rtol=1e-5, atol=1e-7)
    assert plain.abs() > 0
    for key, value in plain_metrics.items():
        expected = c * value if key == "dynamics/predicted_dH" else value
        assert metrics[key] == pytest.approx(expected, rel=1e-6, abs=1e-12), key  # c is a float32 0.7
