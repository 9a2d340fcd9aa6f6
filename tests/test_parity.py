"""EntropyGRPOTrainer is a GRPOTrainer: the same constructor, and with no regularizer the same training."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import TINY_GRPO, length_parity_reward
from test_compatibility import LOSS_TYPES
from trl import GRPOConfig, GRPOTrainer

from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.trainer import EntropyGRPOTrainer


def test_the_constructor_takes_grpo_trainers_parameters_with_its_defaults():
    ours = inspect.signature(EntropyGRPOTrainer.__init__).parameters
    trls = inspect.signature(GRPOTrainer.__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [(p.name, p.kind, p.default) for p in trls.values()]


# ---------------------------------------------------------------------------------------------------------------------
# The same training: TRL's GRPO features through (GRPOTrainer, GRPOConfig) and (EntropyGRPOTrainer, EntropyGRPOConfig)

PAIRS = {"trl": (GRPOTrainer, GRPOConfig), "entropy_rl": (EntropyGRPOTrainer, EntropyGRPOConfig)}
BASE = {**TINY_GRPO, "per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 4}
# Wall-clock keys differ between any two runs; everything else TRL logs must be identical.
TIMING = ("step_time", "_runtime", "_per_second")


def text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]  # plain or conversational


def digit_reward(completions, **kwargs) -> list[float]:
    return [float(sum(ch.isdigit() for ch in text(c))) for c in completions]


def answer_reward(completions, answer, **kwargs) -> list[float]:
    return [float(text(c).strip() == a) for c, a in zip(completions, answer, strict=True)]


def train_pair(pair, tmp_path, model, tokenizer, dataset, config=None, rewards=None, **trainer_kwargs):
    trainer_cls, config_cls = PAIRS[pair]
    args = config_cls(output_dir=str(tmp_path / pair), **{**BASE, "max_steps": 2, **(config or {})})
    trainer = trainer_cls(
        model=model,
        reward_funcs=rewards or [digit_reward],  # random characters: digit counts differ inside a group
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    trainer.train()
    return trainer


def assert_same_training(plain, ours):
    """Parameters equal bit for bit, and every metric TRL logs (train and eval) identical."""
    named = dict(ours.model.named_parameters())
    assert named.keys() == dict(plain.model.named_parameters()).keys()
    for name, param in plain.model.named_parameters():
        assert torch.equal(param, named[name]), name
    assert len(plain.state.log_history) == len(ours.state.log_history)
    for theirs, mine in zip(plain.state.log_history, ours.state.log_history, strict=True):
        for key, value in theirs.items():
            if not key.endswith(TIMING):
                assert key in mine and (mine[key] == value or value != value and mine[key] != mine[key]), key


def test_no_regularizer_trains_bit_for_bit_as_grpo_trainer(make_model, tokenizer, train_dataset, tmp_path):
    """3 optimizer steps, off-policy (num_iterations=2), every diagnostic on at every step (the measured entropy
    change and the parameter-space prediction): the diagnostics are read-only."""
    config = {"max_steps": 3, "num_iterations": 2, "logging_steps": 1}
    plain = train_pair("trl", tmp_path, make_model(), tokenizer, train_dataset, config)
    ours = train_pair("entropy_rl", tmp_path, make_model(), tokenizer, train_dataset, {**config, "dynamics_every": 1})
    assert ours.last_metrics_row["tokens"] > 0 and "dynamics/measured_dH" in ours.last_metrics_row
    assert_same_training(plain, ours)
    assert any(
        not torch.equal(a, b) for a, b in zip(plain.model.parameters(), make_model().parameters(), strict=True)
    )  # moved


def conversational(dataset):
    return dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})


def reward_model(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForSequenceClassification(config)


# name -> (config, what else the trainer gets). Each runs 2 steps through both pairs.
FEATURES = {
    **{f"loss_type={t}": ({"loss_type": t}, {}) for t in LOSS_TYPES},
    "importance_sampling_level=sequence": ({"importance_sampling_level": "sequence", "loss_type": "grpo"}, {}),
    "scale_rewards=batch": ({"scale_rewards": "batch"}, {}),
    "scale_rewards=none": ({"scale_rewards": "none"}, {}),
    "weighted_reward_funcs": (
        {"reward_weights": [1.0, 0.5, 2.0]},
        {"rewards": [digit_reward, length_parity_reward, answer_reward]},
    ),
    "reward_model": ({}, {"rewards": ["reward_model", digit_reward]}),
    "conversational": ({}, {"conversational": True}),
    "peft": ({"learning_rate": 1e-2}, {"peft": True}),
    "num_iterations=2": ({"num_iterations": 2}, {}),
    "steps_per_generation=2": ({"steps_per_generation": 2}, {}),
    "beta=0.04": ({"beta": 0.04}, {"model_dir": True}),
    # Long enough that a few random completions end (EOS) before the limit and keep their tokens.
    "mask_truncated_completions": ({"mask_truncated_completions": True, "max_completion_length": 24}, {}),
    "entropy_coef=0.01": ({"entropy_coef": 0.01}, {}),
    "top_entropy_quantile=0.5": ({"top_entropy_quantile": 0.5}, {}),
    "evaluation": ({"eval_strategy": "steps", "eval_steps": 1, "per_device_eval_batch_size": 8}, {"eval": True}),
}


@pytest.mark.slow
@pytest.mark.parametrize("feature", list(FEATURES))
def test_trls_grpo_features_give_the_same_outcome(
    feature, make_model, tokenizer, train_dataset, tiny_model_dir, tmp_path
):
    config, extra = FEATURES[feature]
    dataset = conversational(train_dataset) if extra.get("conversational") else train_dataset
    trainers = {}
    for pair in PAIRS:
        kwargs = {}
        rewards = [reward_model(tokenizer) if r == "reward_model" else r for r in extra.get("rewards", [])]
        if "reward_model" in extra.get("rewards", []):
            kwargs["reward_processing_classes"] = [tokenizer, None]
        if extra.get("peft"):
            from peft import LoraConfig

            kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        if extra.get("eval"):
            kwargs["eval_dataset"] = dataset.select(range(8))
        model = str(tiny_model_dir) if extra.get("model_dir") else make_model()  # TRL loads the reference by name
        trainers[pair] = train_pair(pair, tmp_path, model, tokenizer, dataset, config, rewards, **kwargs)
    assert_same_training(trainers["trl"], trainers["entropy_rl"])
    if extra.get("eval"):
        assert any("eval_reward" in entry for entry in trainers["trl"].state.log_history)
