"""Shared fixtures: a tiny random policy and a reward with spread, so that advantages and gradients are non-zero.

Plain helpers live in tests/helpers.py; this file holds only fixtures and pytest hooks."""

from __future__ import annotations

import os

import pytest
from helpers import length_parity_reward, save_tiny_model
from hypothesis import settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `pytest --hypothesis-profile=long`: the long fuzzing campaign of tests/test_cli_fuzz.py (docs/reliability.md).
settings.register_profile("long", max_examples=1000, deadline=None)
# scripts/ holds what the tests launch in subprocesses, not tests.
collect_ignore = ["scripts"]


@pytest.fixture(scope="session")
def tokenizer():
    from entropy_rl.toy import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def make_model(tokenizer):
    from entropy_rl.toy import build_model

    return lambda seed=0: build_model(tokenizer, hidden_size=32, num_layers=2, seed=seed)


@pytest.fixture()
def tiny_model_dir(tmp_path):
    """A tiny local checkpoint (weights and tokenizer), as `--model_name_or_path` / `model="path"` would name one."""
    return save_tiny_model(tmp_path / "model")


@pytest.fixture(scope="module")
def module_model_dir(tmp_path_factory):
    """The same tiny checkpoint, written once for a module whose tests only read it."""
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def fresh_accelerate_state():
    """Training and the evaluator create accelerate's process-wide PartialState; drop it after the module that asks for
    this, so later test modules start clean."""
    yield
    from accelerate.state import PartialState

    PartialState._reset_state()


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
