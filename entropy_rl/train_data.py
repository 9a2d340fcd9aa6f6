"""The training and eval rows of a run: the built-in task, a dataset spec YAML, or TRL's dataset (a Hub id or a local
file), each with a `prompt` column; a source that cannot be read is one ConfigError naming the field."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .config import EntropyGRPOConfig
from .errors import ConfigError, check
from .resources import YAML_SUFFIXES
from .train_args import BUILTIN_DATASET, BUILTIN_TASK_DATASETS, TrainScriptArguments

# Local data files `--dataset_name` accepts, by suffix -> the `datasets` builder that reads them.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


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
