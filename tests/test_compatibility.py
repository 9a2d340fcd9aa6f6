"""Every project method with every TRL option (docs/regularizers.md, compatibility table): each cell is accepted and
acts through TRL's own loss, or is refused with an error naming both options."""

from __future__ import annotations

import pytest
import torch
from helpers import METHOD_PARAMS, TINY_GRPO, fixed_batch, length_parity_reward, registered

from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.errors import ConfigError
from entropy_rl.jsonl import read_rows
from entropy_rl.tokens import CLIP_LOSS_TYPES
from entropy_rl.trainer import EntropyGRPOTrainer

LOSS_TYPES = (*CLIP_LOSS_TYPES, "cispo", "sapo", "vespo")
NO_CLIP = ("cispo", "sapo", "vespo")
# TRL options the loss reads (columns of the table); `vllm_is` is TRL's vLLM importance-sampling correction.
OPTIONS: dict[str, dict] = {
    **{f"loss_type={t}": {"loss_type": t} for t in LOSS_TYPES},
    "importance_sampling_level=sequence": {"importance_sampling_level": "sequence"},
    "delta=1.5": {"delta": 1.5},
    "epsilon_high=0.28": {"epsilon_high": 0.28},
    "beta=0.04": {"beta": 0.04},
    "entropy_coef=0.01": {"entropy_coef": 0.01},
    "top_entropy_quantile=0.5": {"top_entropy_quantile": 0.5},
    "vllm_is": {},
}
# The refused cells: (method, option) -> the words the error must hold besides both option names.
REFUSED = {
    **{("kl_cov", f"loss_type={t}"): "KL-Cov replaces the PPO-clip surrogate" for t in NO_CLIP},
    **{("clip_higher", f"loss_type={t}"): "clip_higher raises the PPO clip's upper bound" for t in NO_CLIP},
    ("kl_cov", "epsilon_high=0.28"): "KL-Cov uses no PPO clip",
}
# What each method leaves in the trainer when it acts: a regularizer metric, or TRL's own option switched on.
ACTS = {
    "clip_cov": "clip_cov/clipped_frac",
    "kl_cov": "kl_cov/penalized_frac",
    "steer": "steer/weight_mean",
    "clip_b": "clip_b/removed_frac",
    "clip_v": "clip_v/removed_frac",
}
TRL_OPTION_ON = {
    "entropy_bonus": lambda t: t.args.entropy_coef > 0,
    "clip_higher": lambda t: t.epsilon_high == 0.28,
    "high_entropy_tokens": lambda t: t.top_entropy_quantile < 1.0,
}


def config(tmp_path, method: str, option: str) -> EntropyGRPOConfig:
    params = {"regularizer": method, **METHOD_PARAMS.get(method, {}), **OPTIONS[option]}
    return EntropyGRPOConfig(output_dir=str(tmp_path), **{**TINY_GRPO, "max_steps": 2, **params})


CELLS = [(m, o) for m in registered() for o in OPTIONS]


@pytest.mark.parametrize(("method", "option"), CELLS)
def test_every_cell_is_accepted_or_refused_naming_both_options(method, option, tmp_path):
    if (method, option) not in REFUSED:
        assert method in config(tmp_path, method, option).regularizer.split("+")
        return
    with pytest.raises(ConfigError) as refused:
        config(tmp_path, method, option)
    message = str(refused.value)
    assert f"regularizer={method!r}" in message or f"regularizer='{method}" in message, message
    name, _, value = option.partition("=")
    assert f"{name}={value!r}" in message or f"{name}={value}" in message, message
    assert REFUSED[(method, option)] in message


def loss_and_grads(trainer, option):
    """One micro-batch through TRL's `_compute_loss` (the step-level edits first, as the rollout makes them)."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.state.global_step = 1
    inputs = fixed_batch(trainer)
    if trainer.beta:
        inputs["ref_per_token_logps"] = inputs["old_per_token_logps"] - 0.1
    if option == "vllm_is":  # TRL's vLLM path without vLLM: the batch carries TRL's importance-sampling ratio
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
        inputs["importance_sampling_ratio"] = torch.full_like(inputs["old_per_token_logps"], 0.7)
        inputs["sampling_per_token_logps"] = inputs["old_per_token_logps"] - 0.1
    trainer.loss_edits.generator.manual_seed(0)
    if trainer.loss_edits.on_rollout_needed:
        trainer._rollout_edits(inputs)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer._compute_loss(trainer.model, inputs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [g for g in grads if g is not None]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "option"), [cell for cell in CELLS if cell not in REFUSED])
def test_every_accepted_cell_trains_through_trls_loss_with_the_method_acting(
    method, option, make_model, tokenizer, train_dataset, tiny_model_dir, tmp_path
):
    trainer = EntropyGRPOTrainer(
        model=str(tiny_model_dir) if option.startswith("beta") else make_model(),  # TRL loads the reference by name
        reward_funcs=[length_parity_reward],
        args=config(tmp_path, method, option),
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )
    loss, grads = loss_and_grads(trainer, option)
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)
    if method in ACTS:
        # the method's edits were computed over the batch's tokens
        assert trainer.loss_edits.metric_sums[ACTS[method]][1] > 0
    else:
        assert TRL_OPTION_ON[method](trainer)  # TRL applies its own option in the same loss


# max_completion_length 24: a few random completions end before the limit, so masking the truncated ones leaves tokens.
PRE_LOSS = dict(
    scale_rewards="batch",
    mask_truncated_completions=True,
    max_completion_length=24,
    num_iterations=2,
    steps_per_generation=2,
)


@pytest.mark.slow
@pytest.mark.parametrize("methods", ["clip_cov+clip_higher", "kl_cov+clip_b+entropy_bonus", "steer+clip_v"])
@pytest.mark.parametrize("scale_rewards", ["batch", "none"])
def test_methods_train_with_trls_rollout_options(methods, scale_rewards, make_trainer, tmp_path):
    """scale_rewards, mask_truncated_completions, num_iterations > 1 and steps_per_generation > GA shape the batch
    before the loss; every method trains on what they hand it."""
    params = {k: v for m in methods.split("+") for k, v in METHOD_PARAMS.get(m, {}).items()}
    args = EntropyGRPOConfig(
        output_dir=str(tmp_path),
        **{**TINY_GRPO, "max_steps": 2, **params, **PRE_LOSS, "scale_rewards": scale_rewards, "regularizer": methods},
    )
    trainer = make_trainer(args)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert all(row["tokens"] > 0 for row in rows)
    for method in methods.split("+"):
        if method in ACTS:  # step-level filters report on the step that generates (steps_per_generation=2)
            assert any(f"reg/{ACTS[method]}" in row for row in rows), method
