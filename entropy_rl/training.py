"""Training as a library: TRL's script arguments, the built-in default, and one run from parsed arguments to a model.

    script_args, config, model_args = parse_train_args(["--config", "recipes/toy/grpo.yaml", "--learning_rate", "5e-5"])
    run_dir = train_run(script_args, config, model_args)

The arguments are TRL's own, parsed as trl/scripts/grpo.py parses them: `(TrainScriptArguments, EntropyGRPOConfig,
ModelConfig)` with TrlParser, so `--dataset_name` is a Hub id or a local file, `--model_name_or_path` comes with
ModelConfig's dtype / attention / LoRA / 4- and 8-bit flags, and `--reward_funcs` names reward functions. A YAML recipe
sets any field of the three; command-line flags override it. Two things differ from TRL's script, both additions:
naming neither a model nor a dataset trains the built-in toy (a tiny model on addition) on its own defaults
(BUILTIN_DEFAULTS; any other command line starts from TRL's), and `--config` also takes a packaged recipe's name.
The command `entropy-rl train` (entropy_rl/cli/train.py) adds the accelerate hand-over, the exit codes and the report.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from typing import Any, NoReturn

from trl import ModelConfig, ScriptArguments

from . import locks, rundir
from .config import EntropyGRPOConfig
from .errors import ConfigError, check
from .resources import YAML_SUFFIXES, find_recipe, read_yaml_mapping

# Reward functions usable by name in `reward_funcs`: ours, then TRL's (trl.rewards, as trl/scripts/grpo.py names
# them). Anything else is an import path, `package.module:function` or TRL's dotted `package.module.function`.
REWARDS = {
    "arithmetic": "entropy_rl.toy:arithmetic_reward",
    "math": "entropy_rl.rewards:math_reward",  # the final \boxed{} only, boxes must agree, math-verify
    "math_last_box": "entropy_rl.rewards:math_last_box_reward",  # the last \boxed{}, as verl's scorers
    "math_loose": "entropy_rl.rewards:math_loose_reward",  # the evaluator's fallbacks too (GSM8K-style data)
    "accuracy_reward": "trl.rewards:accuracy_reward",
    "reasoning_accuracy_reward": "trl.rewards:reasoning_accuracy_reward",
    "think_format_reward": "trl.rewards:think_format_reward",
    "get_soft_overlong_punishment": "trl.rewards:get_soft_overlong_punishment",
}
# TRL's script builds this one from a factory with these values; so does this one, for the same command line.
REWARD_FACTORY_KWARGS = {"get_soft_overlong_punishment": {"max_completion_len": 1280, "soft_punish_cache": 256}}
# Local data files `--dataset_name` accepts, by suffix -> the `datasets` builder that reads them.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
BUILTIN_DATASET = "arithmetic"
# Held while a run trains in output_dir; next to it, not in it, so that a refused start writes nothing into a run.
TRAIN_LOCK = ".{name}.train.lock"

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


def _import_path(name: str) -> tuple[str, str]:
    """(module, attribute) of 'pkg.mod:func' or 'pkg.mod.func'."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(
            f"invalid config: reward_funcs entry {name!r}; allowed: one of {sorted(REWARDS)} or an import path "
            "'package.module:function'"
        )
    return module_name, attr


def resolve_reward(name: str) -> Callable[..., list[float]]:
    """The reward function `name` stands for (see REWARDS); an import path may name a module in the cwd, as in TRL."""
    module_name, attr = _import_path(REWARDS.get(name, name))
    if name not in REWARDS and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # trl/scripts/grpo.py does the same for `my_rewards.func`
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"invalid config: reward_funcs entry {name!r} cannot be imported ({err})") from err
    if name in REWARD_FACTORY_KWARGS:
        function = function(**REWARD_FACTORY_KWARGS[name])
    if not callable(function):
        raise ConfigError(f"invalid config: reward_funcs entry {name!r} is {type(function).__name__}, not a function")
    return function


# Keyword arguments TRL 1.16's _calculate_rewards passes every reward function, next to the dataset's other columns.
REWARD_CALL_KEYS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
# Dataset columns TRL does not pass on to reward functions (it passes them as prompts / completions instead).
NOT_PASSED_COLUMNS = ("prompt", "completion", "completion_ids")


def check_reward_signature(name: str, function: Callable[..., Any], columns: list[str] | None) -> None:
    """Refuse, before any model loads, a reward function TRL could not call: TRL calls it with keywords only,
    REWARD_CALL_KEYS plus the dataset's columns (`columns`; None for a stream whose columns are unknown)."""
    allowed = (
        "a function f(prompts, completions, **kwargs) returning one float (or None) per completion, called with "
        "TRL's reward keywords (prompts, completions, completion_ids, trainer_state, log_extra, log_metric and the "
        "dataset's columns)"
    )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise ConfigError(
            f"invalid config: reward_funcs entry {name!r} has no Python signature to call; allowed: {allowed}"
        ) from None
    keys = [*REWARD_CALL_KEYS, *(c for c in columns or [] if c not in NOT_PASSED_COLUMNS)]
    try:
        (signature.bind if columns is not None else signature.bind_partial)(**dict.fromkeys(keys))
    except TypeError as err:
        raise ConfigError(
            f"invalid config: reward_funcs entry {name!r} takes {signature} and cannot be called with TRL's reward "
            f"arguments ({err}); allowed: {allowed}"
        ) from None


def build_rewards(script_args: TrainScriptArguments, config: EntropyGRPOConfig) -> list[Callable[..., Any]]:
    """The reward functions of `reward_funcs`, plus the soft overlong punishment when overlong_buffer_len > 0."""
    rewards: list[Callable[..., Any]] = [resolve_reward(name) for name in script_args.reward_funcs]
    if config.overlong_buffer_len > 0:
        from .rewards import soft_overlong_punishment

        # DAPO Eq. 13: L_max = max_completion_length, L_cache = overlong_buffer_len, times verl's penalty_factor.
        rewards.append(
            soft_overlong_punishment(
                config.max_completion_length, config.overlong_buffer_len, config.overlong_penalty_factor
            )
        )
    return rewards


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
            "the built-in task's (entropy_rl.training.BUILTIN_DEFAULTS; a model or dataset of your own starts from "
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


def build_dataset(script_args: TrainScriptArguments, seed: int):
    """The training rows: a `prompt` column, and the columns the rewards read (`answer` for ours)."""
    name = script_args.dataset_name
    if name is None:
        raise ConfigError("invalid config: dataset_name=None; allowed: a Hub id, a local file, 'arithmetic' or a spec")
    if script_args.dataset_file and not name.endswith(YAML_SUFFIXES):
        raise ConfigError(
            f"invalid config: dataset_file={script_args.dataset_file!r} with dataset_name={name!r}; allowed: only "
            "with a dataset spec YAML (otherwise pass the file itself as --dataset_name)"
        )
    if name == BUILTIN_DATASET:
        from datasets import Dataset

        from .toy import make_problems

        count = script_args.num_train_problems
        check(count >= 1, "num_train_problems", count, "an integer >= 1 (the training set would be empty)")
        return Dataset.from_list(make_problems(count, split="train", seed=seed))
    if name == "arithmetic_hard":
        from datasets import Dataset

        from .toy import make_hard_problems

        return Dataset.from_list(make_hard_problems(script_args.num_train_problems, split="train", seed=seed))
    if name.endswith(YAML_SUFFIXES):
        return _spec_dataset(script_args)
    return _trl_dataset(script_args)


def _spec_dataset(script_args: TrainScriptArguments):
    """A dataset spec in the benchmark format: its prompt template applied, its gold answers as `answer`."""
    from datasets import Dataset

    from .evaluation.benchmarks import BenchmarkError, load_benchmark

    try:
        benchmark = load_benchmark(script_args.dataset_name, data_file=script_args.dataset_file)
    except BenchmarkError as err:
        raise ConfigError(f"invalid config: dataset_name={script_args.dataset_name!r}: {err}") from err
    rows = []
    for problem in benchmark.problems:
        # A chat-template spec becomes a conversational prompt: TRL then applies the tokenizer's template.
        prompt = [{"role": "user", "content": problem["prompt"]}] if benchmark.chat_template else problem["prompt"]
        rows.append({"prompt": prompt, "answer": problem["gold"]})
    return Dataset.from_list(rows)


def _trl_dataset(script_args: TrainScriptArguments, field_name: str = "dataset_name"):
    """As trl/scripts/grpo.py: `load_dataset(dataset_name, dataset_config)[dataset_train_split]`; a file by suffix.

    `field_name="dataset_test_split"`: the eval set instead, a local file named by it or that split of the dataset.
    """
    from datasets import load_dataset

    name = script_args.dataset_name
    evaluating = field_name == "dataset_test_split"
    split = script_args.dataset_test_split if evaluating else script_args.dataset_train_split
    path = Path(split if evaluating and Path(split).expanduser().is_file() else name).expanduser()
    value = split if evaluating else name
    try:
        if path.is_file():
            builder = LOCAL_FORMATS.get(path.suffix.lower())
            if builder is None:
                suffix, allowed = path.suffix, sorted(LOCAL_FORMATS)
                raise ConfigError(f"invalid config: {field_name}={value!r} has suffix {suffix!r}; allowed: {allowed}")
            if evaluating and path != Path(split).expanduser():
                raise ConfigError(
                    f"invalid config: dataset_test_split={split!r} with the local file dataset_name={name!r} (one "
                    "file is one split); allowed: the eval file itself as --dataset_test_split"
                )
            if path.stat().st_size < 2**20 and not path.read_bytes().strip():  # `datasets` says only "StopIteration"
                raise ConfigError(f"invalid config: {field_name}={value!r} is empty; allowed: a file of rows")
            # One file is one split: it is the training split whatever dataset_train_split says.
            streaming = script_args.dataset_streaming
            with _quiet_datasets():  # a local file: no "Generating train split" bar before a one-line error
                dataset = load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
        else:
            dataset = load_dataset(
                name, name=script_args.dataset_config, split=split, streaming=script_args.dataset_streaming
            )
    except ConfigError:
        raise
    except Exception as err:  # unknown id, offline, missing split, unreadable file: one line, naming the field
        # `datasets` wraps a parse error of a local file in "An error occurred while generating the dataset".
        cause = err.__cause__ or err.__context__
        reason = _first_line(err) + (f" ({_first_line(cause)})" if cause is not None else "")
        raise ConfigError(
            f"invalid config: {field_name}={value!r} (dataset {name!r}, config {script_args.dataset_config!r}, split "
            f"{split!r}) could not be loaded: {reason}"
        ) from err
    if "prompt" not in (dataset.column_names or []):
        raise ConfigError(
            f"invalid config: {field_name}={value!r} has no 'prompt' column (columns: {dataset.column_names}); "
            "allowed: a dataset in TRL's prompt-only format"
        )
    return dataset


def build_eval_dataset(script_args: TrainScriptArguments, config: EntropyGRPOConfig, seed: int):
    """TRL's eval set, when eval_strategy is not 'no' (as trl/scripts/grpo.py): `dataset_test_split` of the same
    dataset, a local file named by it, or the built-in task's test split."""
    if config.eval_strategy == "no":
        return None
    name, split = script_args.dataset_name, script_args.dataset_test_split
    if name in BUILTIN_TASK_DATASETS and not Path(split).expanduser().is_file():
        from datasets import Dataset

        from .toy import make_problems

        return Dataset.from_list(make_problems(config.per_device_eval_batch_size * 4, split="test", seed=seed))
    if name is not None and name.endswith(YAML_SUFFIXES) and not Path(split).expanduser().is_file():
        raise ConfigError(
            f"invalid config: dataset_test_split={split!r} with the dataset spec dataset_name={name!r} (one set of "
            "problems); allowed: a local file as --dataset_test_split"
        )
    return _trl_dataset(script_args, "dataset_test_split")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """`datasets` without its progress bars and logs for the duration (restored after): its failure to parse a file
    is logged, then raised; the raised error is the one line reported."""
    from datasets.utils import logging as datasets_logging

    shown, verbosity = datasets_logging.is_progress_bar_enabled(), datasets_logging.get_verbosity()
    datasets_logging.disable_progress_bar()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(verbosity)
        if shown:
            datasets_logging.enable_progress_bar()


def _model_init_kwargs(model_args: ModelConfig, config: EntropyGRPOConfig) -> dict[str, Any]:
    """What trl/scripts/grpo.py passes to from_pretrained, the user's --model_init_kwargs winning; safetensors only."""
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "trust_remote_code": config.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        "use_safetensors": True,  # never unpickle weights from a model folder
    }
    kwargs.update(config.model_init_kwargs or {})
    return kwargs


def _check_toy_model_args(model_args: ModelConfig, config: EntropyGRPOConfig) -> None:
    """Loading flags that only apply to a checkpoint on disk or the Hub are refused for the built-in model."""
    refused = {
        "model_init_kwargs": config.model_init_kwargs,
        "attn_implementation": model_args.attn_implementation,
        "load_in_4bit": model_args.load_in_4bit or None,
        "load_in_8bit": model_args.load_in_8bit or None,
    }
    for name, value in refused.items():
        if value is not None:
            raise ConfigError(
                f"invalid config: {name}={value!r} without model_name_or_path; allowed: only with a checkpoint "
                "(the built-in toy model is built in code; it takes --dtype and --use_peft)"
            )


def load_policy(model_args: ModelConfig, config: EntropyGRPOConfig) -> tuple[Any, Any]:
    """(model, tokenizer) for the trainer: a model id for TRL to load with model_init_kwargs, or the built-in model.

    For a model id the tokenizer is None: TRL loads the processing class from the same id, as in its own script.
    """
    if model_args.model_name_or_path is not None:
        config.model_init_kwargs = _model_init_kwargs(model_args, config)
        return model_args.model_name_or_path, None
    _check_toy_model_args(model_args, config)
    from .toy import load_toy

    model, tokenizer = load_toy()  # the shipped warm-started policy
    if model_args.dtype not in (None, "auto", "float32"):
        import torch

        model = model.to(getattr(torch, model_args.dtype))
    return model, tokenizer


def peft_and_quantization(model_args: ModelConfig) -> dict[str, Any]:
    """TRL's `peft_config` and `quantization_config` trainer arguments from ModelConfig (None when not asked for)."""
    from trl import get_peft_config, get_quantization_config

    try:
        peft_config = get_peft_config(model_args)
    except ValueError as err:  # peft not installed
        raise ConfigError(f"invalid config: use_peft=True needs peft: pip install 'entropy-rl[peft]' ({err})") from err
    try:
        quantization_config = get_quantization_config(model_args)
    except PackageNotFoundError as err:  # transformers 4.x reads bitsandbytes' version while building the config
        flag = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
        raise ConfigError(f"invalid config: {flag}=True needs bitsandbytes: pip install bitsandbytes") from err
    return {"peft_config": peft_config, "quantization_config": quantization_config}


def check_model_path(name: str | None) -> None:
    """Before anything loads: a missing local folder, or a Hub id that is malformed or, offline, not cached."""
    if name is None:
        return
    folder = Path(name).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"invalid config: model_name_or_path={name!r} is a folder without config.json; allowed: a folder "
                "written by save_pretrained, or a Hub id"
            )
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise ConfigError(f"invalid config: model_name_or_path={name!r}: no such local folder")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ConfigError(
            f"invalid config: model_name_or_path={name!r} is neither a local folder nor a Hub id (org/name)"
        ) from err
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ConfigError(
            f"invalid config: model_name_or_path={name!r}: no such local folder, and as a Hub id it is not in the "
            "local cache while HF_HUB_OFFLINE is set"
        )


def train_run(
    script_args: TrainScriptArguments,
    config: EntropyGRPOConfig,
    model_args: ModelConfig | None = None,
    progress: Any = None,
    checked: Callable[[], None] | None = None,
) -> Path:
    """Train and return the run directory (its metrics file, saved config, checkpoints and final/ model).

    `progress`, a TrainerCallback (the command's, entropy_rl/cli/progress.py), replaces transformers' progress bar.
    `checked` is called once the input has passed every check, before the model loads. A second train_run on the
    same output_dir while this one runs is refused (a lock file next to it, TRAIN_LOCK).
    """
    model_args = model_args or ModelConfig()
    # Cheap checks first: a typo, a broken checkpoint or a finished run in the way should not wait for a model.
    rundir.check_writable(config.output_dir)
    with contextlib.ExitStack() as held:
        if config.process_index == 0:  # one lock per run; the other ranks of a launch are its own processes
            run_dir = Path(config.output_dir).resolve()
            lock = run_dir.parent / TRAIN_LOCK.format(name=run_dir.name)
            refusal = (
                f"invalid config: output_dir={config.output_dir!r} is being trained by another entropy-rl train "
                f"process (it holds {lock}); allowed: another --output_dir, or wait until that run ends"
            )
            held.enter_context(locks.lock_or_refuse(lock, refusal))
        return _train_checked(script_args, config, model_args, progress, checked)


def _train_checked(
    script_args: TrainScriptArguments,
    config: EntropyGRPOConfig,
    model_args: ModelConfig,
    progress: Any,
    checked: Callable[[], None] | None,
) -> Path:
    """train_run's body, under the output folder's lock."""
    from .trainer import EntropyGRPOTrainer, check_start

    checkpoint = check_start(config, config.resume_from_checkpoint)
    check_model_path(model_args.model_name_or_path)
    functions = build_rewards(script_args, config)
    extra = peft_and_quantization(model_args)
    dataset = build_dataset(script_args, config.seed)
    if len(dataset) == 0:
        raise ConfigError(f"invalid config: dataset_name={script_args.dataset_name!r} holds no training problem")
    eval_dataset = build_eval_dataset(script_args, config, config.seed)
    for name, function in zip(script_args.reward_funcs, functions, strict=False):
        check_reward_signature(name, function, dataset.column_names)
    if config.curve_benchmarks:  # an unknown or unreadable benchmark is refused now, not after the model loads
        from .training_curve import load_curve_benchmarks

        load_curve_benchmarks(config)
    rewards: list[Any] = list(functions)
    if script_args.reward_model_name_or_path:
        rewards.insert(0, script_args.reward_model_name_or_path)  # TRL loads it, as in its script
    if config.dynamic_sampling:  # a metric no reward function has is refused now, not after the model loads
        from trl.trainer.utils import get_callable_name

        from .dynamic_sampling import metric_column

        names = [r.split("/")[-1] if isinstance(r, str) else get_callable_name(r) for r in rewards]
        metric_column(config.dynamic_sampling_metric, names)
    if checked is not None:
        checked()
    model, tokenizer = load_policy(model_args, config)
    callbacks = [progress] if progress is not None else None  # first: it runs before the trainer's own callbacks
    trainer = EntropyGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    if progress is not None:
        from transformers.trainer import DEFAULT_PROGRESS_CALLBACK

        trainer.remove_callback(DEFAULT_PROGRESS_CALLBACK)
    run_dir = Path(config.output_dir)
    trainer.saved_config = saved_settings(script_args, config, model_args)  # written when the first step is done
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(run_dir / rundir.FINAL_DIR))
    if config.push_to_hub:  # as trl/scripts/grpo.py
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()  # trackers closed and, under a launcher, the process group left by every rank together
    return run_dir


def saved_settings(script_args: TrainScriptArguments, config: EntropyGRPOConfig, model_args: ModelConfig) -> dict:
    """The run's saved config: the training fields at the top, the script and model arguments under their names."""
    return {"script": asdict(script_args), "model": asdict(model_args), **config.to_dict()}
