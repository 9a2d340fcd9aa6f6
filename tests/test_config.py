"""EntropyGRPOConfig's regularizer flags come from the methods' own dataclasses: declared once, next to the method."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from entropy_rl.cli import main
from entropy_rl.config import EntropyGRPOConfig, with_regularizer_fields
from entropy_rl.regularizers import REGISTRY, Regularizer


def method_parameters():
    return [(method, param) for method in REGISTRY.values() for param in dataclasses.fields(method)]


def test_every_method_parameter_is_a_config_field_with_its_default_type_and_help():
    fields = {f.name: f for f in dataclasses.fields(EntropyGRPOConfig)}
    hints = typing.get_type_hints(EntropyGRPOConfig)
    assert method_parameters(), "no registered method declares a parameter"
    for method, param in method_parameters():
        assert param.name.startswith(f"{method.name}_"), "flat config fields are prefixed with the method's name"
        assert param.metadata.get("help"), f"{param.name} has no help text"
        field = fields[param.name]
        assert field.default == param.default
        assert hints[param.name] is typing.get_type_hints(method)[param.name]  # a real type for HfArgumentParser
        assert field.metadata["help"] == f"{method.name}: {param.metadata['help']}"


def test_train_help_lists_every_method_parameter(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for method, param in method_parameters():
        assert f"--{param.name}" in out
        assert f"{method.name}:" in out
    for name in REGISTRY:
        assert name in out  # the --regularizer help names every method


def test_a_new_method_is_one_dataclass(monkeypatch):
    """Registering a method is all it takes for the config to grow its typed, documented flag."""
    from transformers import HfArgumentParser
    from trl import GRPOConfig

    @dataclasses.dataclass
    class Dampen(Regularizer):
        name = "dampen"
        kind = "loss"
        dampen_alpha: float = dataclasses.field(default=0.5, metadata={"help": "how much to dampen."})

    monkeypatch.setitem(REGISTRY, "dampen", Dampen)

    @dataclasses.dataclass
    @with_regularizer_fields
    class Config(GRPOConfig):
        pass

    field = {f.name: f for f in dataclasses.fields(Config)}["dampen_alpha"]
    assert field.default == 0.5 and field.metadata["help"] == "dampen: how much to dampen."
    action = HfArgumentParser(Config)._option_string_actions["--dampen_alpha"]
    assert action.type is float and action.default == 0.5


def test_a_parameter_clashing_with_a_trl_field_is_refused(monkeypatch):
    @dataclasses.dataclass
    class Clash(Regularizer):
        name = "clash"
        kind = "loss"
        learning_rate: float = dataclasses.field(default=1.0, metadata={"help": "clashes."})

    monkeypatch.setitem(REGISTRY, "clash", Clash)
    with pytest.raises(TypeError, match="learning_rate"):

        @dataclasses.dataclass
        @with_regularizer_fields
        class Config(EntropyGRPOConfig):
            pass


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"entropy_coef": 0.01}, "entropy_bonus"),
        ({"use_adaptive_entropy": True}, "entropy_bonus"),
        ({"top_entropy_quantile": 0.2}, "high_entropy_tokens"),
        ({"epsilon_high": 0.28}, "none"),
    ],
)
def test_trls_own_options_keep_their_meaning_without_the_flag(option, named, tmp_path):
    """As in GRPOConfig: the value is kept as given; the run is labelled by the method the option switches on."""
    config = EntropyGRPOConfig(output_dir=str(tmp_path), report_to="none", **option)
    assert all(getattr(config, key) == value for key, value in option.items())
    assert config.regularizer == named
    both = EntropyGRPOConfig(output_dir=str(tmp_path), report_to="none", regularizer="clip_cov", **option)
    assert both.regularizer == "clip_cov" + ("" if named == "none" else f"+{named}")
