"""Training as a library: one run from parsed arguments to a model.

    script_args, config, model_args = train_args.parse_train_args(["--config", "recipes/toy/grpo.yaml"])
    run_dir = train_run(script_args, config, model_args)

The arguments are parsed in entropy_rl/train_args.py, the reward functions found in entropy_rl/reward_loading.py and
the rows read in entropy_rl/train_data.py; this module checks the whole input, loads the policy and trains it under
the output folder's lock. The command `entropy-rl train` (entropy_rl/cli/train.py) adds the accelerate hand-over, the
exit codes and the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from typing import Any

from trl import ModelConfig

from . import locks, rundir
from .config import EntropyGRPOConfig
from .errors import ConfigError
from .reward_loading import check_reward_signature, resolve_reward
from .train_args import TrainScriptArguments
from .train_data import build_dataset, build_eval_dataset

# Held while a run trains in output_dir; next to it, not in it, so that a refused start writes nothing into a run.
TRAIN_LOCK = ".{name}.train.lock"


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
