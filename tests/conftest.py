"""Shared fixtures: a tiny random policy and a reward with spread, so that advantages and gradients are non-zero."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `pytest --hypothesis-profile=long`: the long fuzzing campaign of tests/test_cli_fuzz.py (docs/reliability.md).
settings.register_profile("long", max_examples=1000, deadline=None)


def length_parity_reward(completions, **kwargs) -> list[float]:
    """Deterministic reward with variance inside every group of a random policy."""
    return [float(len(c) % 2) for c in completions]


def none_reward(completions, **kwargs) -> list[None]:
    """A reward function that scores nothing (TRL reads None as NaN: no reward for the completion)."""
    return [None] * len(completions)


def nan_reward(completions, **kwargs) -> list[float]:
    """A broken reward function: a NaN value (not TRL's None) for every completion."""
    return [float("nan")] * len(completions)


def raising_reward(completions, **kwargs) -> list[float]:
    raise RuntimeError("reward service down")


def two_cpu_processes(port: int | str = 0) -> list[str]:
    """`accelerate launch` of 2 gloo CPU processes: --multi_gpu without CUDA gives MULTI_CPU (--cpu would start one)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "--main_process_port", str(port)]


@pytest.fixture(scope="session")
def tokenizer():
    from entropy_rl.toy import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def make_model(tokenizer):
    from entropy_rl.toy import build_model

    return lambda seed=0: build_model(tokenizer, hidden_size=32, num_layers=2, seed=seed)


@pytest.fixture()
def tiny_model_dir(tmp_path, make_model, tokenizer):
    """A tiny local checkpoint (weights and tokenizer), as `--model_name_or_path` / `model="path"` would name one."""
    path = tmp_path / "model"
    make_model().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def train_dataset():
    from datasets import Dataset

    from entropy_rl.toy import make_problems

    return Dataset.from_list(make_problems(64, split="train", seed=0))


@pytest.fixture()
def make_trainer(make_model, tokenizer, train_dataset):
    """An EntropyGRPOTrainer on the tiny model and the toy problems, rewarded by length parity; `args` as given."""
    from entropy_rl.trainer import EntropyGRPOTrainer

    def build(args, **kwargs):
        return EntropyGRPOTrainer(
            model=make_model(),
            reward_funcs=[length_parity_reward],
            args=args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            **kwargs,
        )

    return build


TINY_GRPO = dict(
    learning_rate=1e-3,
    per_device_train_batch_size=16,
    num_generations=4,
    max_completion_length=6,
    beta=0.0,
    bf16=False,
    gradient_checkpointing=False,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    seed=0,
    use_cpu=True,
    disable_tqdm=True,
)
