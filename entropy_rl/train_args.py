"""The arguments of a training run, parsed as trl/scripts/grpo.py parses them.

    script_args, config, model_args = parse_train_args(["--config", "recipes/toy/grpo.yaml", "--learning_rate", "5e-5"])

`(TrainScriptArguments, EntropyGRPOConfig, ModelConfig)` with TrlParser, so `--dataset_name` is a Hub id or a local
file, `--model_name_or_path` comes with ModelConfig's dtype / attention / LoRA / 4- and 8-bit flags, and
`--reward_funcs` names reward functions. A YAML recipe sets any field of the three; command-line flags override it.
Two things differ from TRL's script, both additions: naming neither a model nor a dataset trains the built-in toy (a
tiny model on addition) on its own defaults (BUILTIN_DEFAULTS; any other command line starts from TRL's), and
`--config` also takes a packaged recipe's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from trl import ModelConfig, ScriptArguments

from .config import EntropyGRPOConfig
from .errors import ConfigError
from .resources import find_recipe, read_yaml_mapping
from .reward_loading import REWARDS

BUILTIN_DATASET = "arithmetic"


# The built-in task: the toy model (no --model_name_or_path) on one of these datasets.
BUILTIN_TASK_DATASETS = (BUILTIN_DATASET, "arithmetic_hard")


# The built-in task's defaults, used only for it and without --config: sized for 2 CPU cores
# (docs/results/default-run.md). A command line naming a model or another dataset starts from TRL's defaults.
BUILTIN_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/toy-default",
    "max_steps": 500,
    "learning_rate": 1e-4,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 64,
    "num_generations": 8,
    "max_completion_length": 8,
    "temperature": 1.0,
    "beta": 0.0,
    "gradient_checkpointing": False,
    "logging_steps": 25,
    "save_strategy": "steps",
    "save_steps": 100,
    "report_to": "none",
    "seed": 0,
    "ddp_find_unused_parameters": False,
    # The entropy-reward curve during training: held-out accuracy every 50 steps (docs/evaluation.md).
    "curve_benchmarks": ["arithmetic"],
    "eval_steps": 50,
}


@dataclass
class TrainScriptArguments(ScriptArguments):
    """TRL's ScriptArguments (dataset_name, dataset_config, splits, streaming) plus rewards and the built-in task."""

    dataset_name: str | None = field(
        default=BUILTIN_DATASET,
        metadata={
            "help": "Prompts to train on, as in TRL: a Hub dataset id (with --dataset_config and "
            "--dataset_train_split) or a local file (.jsonl, .json, .parquet, .csv) or folder, with a `prompt` "
            "column; the other columns reach the reward functions. Also: 'arithmetic' (the built-in task, default), "
            "'arithmetic_hard' (its problems the warm-started policy answers wrong greedily, docs/toy.md) "
            "or a dataset spec YAML in the benchmark format (recipes/data/*.yaml: prompt template and gold answers)."
        },
    )
    dataset_file: str | None = field(
        default=None,
        metadata={"help": "Local JSONL file replacing the data source of a dataset spec YAML (--dataset_name *.yaml)."},
    )
    num_train_problems: int = field(
        default=4096, metadata={"help": "Number of problems drawn for the built-in arithmetic tasks."}
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Reward model (Hub id or local path), scored by TRL next to the reward functions."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["arithmetic"],
        metadata={
            "help": f"Reward functions: names among {sorted(REWARDS)}, or an import path 'package.module:function' "
            "(or TRL's 'package.module.function'); modules in the current directory are found."
        },
    )


def _resolve_config_flag(argv: list[str]) -> list[str]:
    """argv with `--config NAME` replaced by the recipe file it names (a path, or a packaged recipe's name)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = str(find_recipe(out[i + 1]))
        elif arg.startswith("--config="):
            out[i] = "--config=" + str(find_recipe(arg.partition("=")[2]))
    return out


def check_config_file(argv: list[str]) -> None:
    """A `--config` file that is missing or not YAML: one line with file and line, before TRL opens it."""
    if "--config" not in argv:
        return
    index = argv.index("--config") + 1
    if index >= len(argv):
        raise ConfigError("invalid config: --config needs a YAML file")
    read_yaml_mapping(Path(argv[index]), "--config")


def _argparse_error(message: str) -> NoReturn:
    raise ConfigError(f"invalid config: {message} (see entropy-rl train --help)")


def _has_config(argv: list[str]) -> bool:
    return any(arg == "--config" or arg.startswith("--config=") for arg in argv)


def builtin_task(argv: list[str]) -> bool:
    """Whether `argv` trains the built-in task on its own defaults: no --config, no model, no dataset of one's own."""
    import argparse

    if _has_config(argv):
        return False
    names = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    names.add_argument("--model_name_or_path", "--model-name-or-path")
    names.add_argument("--dataset_name", "--dataset-name", default=BUILTIN_DATASET)
    known, _ = names.parse_known_args(argv)
    return known.model_name_or_path is None and known.dataset_name in BUILTIN_TASK_DATASETS


def defaults_used(argv: list[str]) -> str:
    """Which defaults underlie the run's settings, in words (printed at the start of `entropy-rl train`)."""
    if _has_config(argv):
        return "the recipe's (--config), over TRL's GRPOConfig defaults and entropy-rl's own"
    if builtin_task(argv):
        return (
            "the built-in task's (entropy_rl.train_args.BUILTIN_DEFAULTS; a model or dataset of your own starts from "
            "TRL's)"
        )
    return "TRL's GRPOConfig defaults, as `trl grpo` parses them, plus entropy-rl's own fields"


def parse_train_args(argv: list[str]) -> tuple[TrainScriptArguments, EntropyGRPOConfig, ModelConfig]:
    """(script_args, config, model_args) from `entropy-rl train` arguments, in trl/scripts/grpo.py's order.

    BUILTIN_DEFAULTS underlie them only for the built-in task (`builtin_task`); otherwise the defaults are TRL's (and
    a recipe's, with --config). Raises ConfigError for a missing or malformed --config file, an
    unknown or abbreviated flag or YAML key, a value argparse cannot convert and an invalid value. `--help` ends the
    process through argparse, as in any TRL script.
    """
    from trl import TrlParser

    resolved = _resolve_config_flag(argv)
    check_config_file(resolved)
    # No prefix matching: `--learning_rat` must be an error, not silently `--learning_rate`.
    parser = TrlParser((TrainScriptArguments, EntropyGRPOConfig, ModelConfig), allow_abbrev=False)
    parser.error = _argparse_error  # one line instead of argparse's 200-line usage text and exit code 2
    if builtin_task(argv):
        parser.set_defaults_with_config(**BUILTIN_DEFAULTS)
    try:
        script_args, config, model_args = parser.parse_args_and_config(args=resolved)
    except ConfigError:
        raise
    except ValueError as err:  # TRL/transformers report unknown flags and their own invalid values as ValueError
        raise ConfigError(str(err)) from err
    return script_args, config, model_args
