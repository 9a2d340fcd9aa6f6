"""EntropyGRPOConfig's regularizer flags: written-out copies of the methods' own dataclass fields, checked against them;
a method without written-out fields is configured through regularizer_kwargs."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from trl import GRPOConfig

from entropy_rl.cli import main
from entropy_rl.config import ConfigError, EntropyGRPOConfig
from entropy_rl.regularizers import REGISTRY, Regularizer
from entropy_rl.train_args import parse_train_args

TRL_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)}


def method_parameters():
    return [(method, param) for method in REGISTRY.values() for param in dataclasses.fields(method)]


def written_out():
    """The config fields that are copies of a registered method's parameter."""
    fields = {f.name: f for f in dataclasses.fields(EntropyGRPOConfig)}
    return {param.name: fields[param.name] for _, param in method_parameters() if param.name in fields}


def drift() -> list[str]:
    """Where EntropyGRPOConfig's written-out regularizer fields and the registered methods' fields disagree."""
    fields = {f.name: f for f in dataclasses.fields(EntropyGRPOConfig)}
    hints = typing.get_type_hints(EntropyGRPOConfig)
    problems, owner = [], {}
    for method, param in method_parameters():
        owner[param.name] = method.name
        if not param.name.startswith(f"{method.name}_"):
            problems.append(f"{param.name}: not prefixed with the method's name {method.name}_")
        if not param.metadata.get("help"):
            problems.append(f"{param.name}: no help text")
        if param.name in TRL_FIELDS:
            problems.append(f"{param.name}: clashes with TRL's field of the same name")
        if param.name not in fields:
            continue  # set through regularizer_kwargs
        field = fields[param.name]
        if (field.default, field.default_factory) != (param.default, param.default_factory):
            problems.append(f"{param.name}: default {field.default!r} in the config, {param.default!r} in the method")
        if hints[param.name] is not typing.get_type_hints(method)[param.name]:  # a real type for HfArgumentParser
            problems.append(f"{param.name}: type {hints[param.name]} in the config")
        if field.metadata.get("help") != f"{method.name}: {param.metadata.get('help')}":
            problems.append(f"{param.name}: help {field.metadata.get('help')!r} in the config")
    # A written-out field ("<method>_<param>", help "<method>: ...") whose method no longer declares it.
    for name, field in fields.items():
        method = field.metadata.get("help", "").partition(":")[0]
        if name.startswith(f"{method}_") and name not in TRL_FIELDS and owner.get(name) != method:
            problems.append(f"{name}: written out for {method}, which declares no such parameter")
    return problems


def test_written_out_regularizer_fields_match_the_methods_fields():
    assert method_parameters(), "no registered method declares a parameter"
    assert written_out(), "no regularizer parameter is written out"
    assert drift() == []


def test_every_method_parameter_is_written_out_or_reachable_through_regularizer_kwargs(tmp_path):
    flagged = written_out()
    for method in REGISTRY.values():
        params = {param.name: param.default for param in dataclasses.fields(method)}
        config = EntropyGRPOConfig(
            output_dir=str(tmp_path),
            report_to="none",
            regularizer=method.name,
            num_iterations=2,  # KL-Cov needs off-policy updates
            regularizer_kwargs={name: value for name, value in params.items() if name not in flagged},
        )
        regularizer = config.edit_schedule().regularizer
        assert all(getattr(regularizer, name) == value for name, value in params.items())


def test_drift_fails_loudly(monkeypatch):
    @dataclasses.dataclass
    class Renamed(Regularizer):  # clip_b whose clip_b_mu became clip_b_z: the config's copy is left behind
        name = "clip_b"
        kind = "filter"
        clip_b_z: float = dataclasses.field(default=2.5, metadata={"help": "z-score."})

    @dataclasses.dataclass
    class Clash(Regularizer):
        name = "clash"
        kind = "loss"
        learning_rate: float = dataclasses.field(default=1.0, metadata={"help": "clashes."})

    monkeypatch.setitem(REGISTRY, "clip_b", Renamed)
    monkeypatch.setitem(REGISTRY, "clash", Clash)
    problems = drift()
    assert "clip_b_mu: written out for clip_b, which declares no such parameter" in problems
    assert any(problem.startswith("learning_rate: clashes with TRL's field") for problem in problems)


def test_train_help_lists_every_written_out_parameter(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name, field in written_out().items():
        assert f"--{name}" in out
        assert field.metadata["help"].partition(":")[0] + ":" in out
    assert "--regularizer_kwargs" in out
    for name in REGISTRY:
        assert name in out  # the --regularizer help names every method


@dataclasses.dataclass
class Dampen(Regularizer):
    name = "dampen"
    kind = "loss"
    dampen_alpha: float = dataclasses.field(default=0.5, metadata={"help": "how much to dampen."})


def test_a_new_method_is_one_dataclass_configured_through_regularizer_kwargs(monkeypatch, tmp_path):
    """Registering a method is all it takes: its parameters come in regularizer_kwargs, no config field needed."""
    monkeypatch.setitem(REGISTRY, "dampen", Dampen)
    assert drift() == []
    config = EntropyGRPOConfig(
        output_dir=str(tmp_path), report_to="none", regularizer="dampen", regularizer_kwargs={"dampen_alpha": 0.7}
    )
    assert config.edit_schedule().regularizer.dampen_alpha == 0.7
    default = EntropyGRPOConfig(output_dir=str(tmp_path), regularizer="dampen").edit_schedule().regularizer
    assert default.dampen_alpha == 0.5

    common = ["--regularizer", "dampen", "--output_dir", str(tmp_path)]
    _, config, _ = parse_train_args([*common, "--regularizer_kwargs", json.dumps({"dampen_alpha": 0.7})])
    assert config.regularizer_kwargs == {"dampen_alpha": 0.7} and config.edit_schedule().regularizer.dampen_alpha == 0.7
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("regularizer: dampen\nregularizer_kwargs:\n  dampen_alpha: 0.7\n")
    _, config, _ = parse_train_args(["--config", str(recipe), "--output_dir", str(tmp_path)])
    assert config.regularizer_kwargs == {"dampen_alpha": 0.7} and config.edit_schedule().regularizer.dampen_alpha == 0.7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            '{"dampen_beta": 1}',
            "regularizer_kwargs={'dampen_beta': 1}; allowed: parameters of regularizer='dampen' without a flag of "
            "their own: ['dampen_alpha']",
        ),
        (
            '{"clip_cov_ratio": 0.1}',
            "regularizer_kwargs={'clip_cov_ratio': 0.1}; allowed: parameters without a flag of their own (set "
            "--clip_cov_ratio instead)",
        ),
        ('{"dampen_alpha": ', "regularizer_kwargs='{\"dampen_alpha\": '; allowed: a JSON object"),
        ("[1, 2]", "regularizer_kwargs='[1, 2]'; allowed: a JSON object"),
        ('{"dampen_alpha": NaN}', "regularizer_kwargs['dampen_alpha']=nan; allowed: a finite number"),
        ("dampen_alpha=0.7", "regularizer_kwargs='dampen_alpha=0.7'; allowed: a JSON object"),
    ],
)
def test_bad_regularizer_kwargs_are_refused_naming_the_field(kwargs, message, monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, "dampen", Dampen)
    argv = ["--regularizer", "dampen", "--regularizer_kwargs", kwargs, "--output_dir", str(tmp_path)]
    with pytest.raises(ConfigError, match="invalid config") as refused:
        parse_train_args(argv)
    assert message in str(refused.value)


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
