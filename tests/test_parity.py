"""EntropyGRPOTrainer is a GRPOTrainer: the same constructor, and with no regularizer the same training."""

from __future__ import annotations

import inspect

from trl import GRPOTrainer

from entropy_rl.trainer import EntropyGRPOTrainer


def test_the_constructor_takes_grpo_trainers_parameters_with_its_defaults():
    ours = inspect.signature(EntropyGRPOTrainer.__init__).parameters
    trls = inspect.signature(GRPOTrainer.__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [(p.name, p.kind, p.default) for p in trls.values()]
