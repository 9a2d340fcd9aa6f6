"""Training as a library: the script arguments, the built-in default, and one run from parsed arguments to a model.

    script_args, config = parse_train_args(["--config", "recipes/toy/grpo.yaml", "--learning_rate", "5e-5"])
    run_dir = train_run(script_args, config)

A YAML recipe sets any field of TrainScriptArguments or EntropyGRPOConfig; command-line flags override it. The
command `entropy-rl train` (entropy_rl/cli/train.py) adds the accelerate hand-over, the exit codes and the report.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import rundir
from .config import EntropyGRPOConfig
from .errors import ConfigError

# Reward names usable in `reward_funcs`; anything else is a dotted import path `package.module.function`.
REWARDS = {
    "arithmetic": "entropy_rl.toy.arithmetic_reward",
    "math": "entropy_rl.rewards.math_reward",  # final \boxed{} only, math-verify (the papers' reward)
    "math_loose": "entropy_rl.rewards.math_loose_reward",  # the evaluator's fallbacks too (GSM8K-style data)
}

# The built-in default, used when no --config is given: sized for 2 CPU cores (docs/results/default-run.md).
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
class TrainScriptArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model to train (Hub id or local path). Default: the built-in tiny model, warm-started."},
    )
    dataset_name: str = field(
        default="arithmetic",
        metadata={
            "help": "Prompts to train on: 'arithmetic' (built-in task), 'arithmetic_hard' (its problems the "
            "warm-started policy answers wrong greedily, docs/toy.md) or a benchmark name / spec path from eval/ "
            "(its prompt template and gold answers; --dataset_file swaps in another file of the same format)."
        },
    )
    dataset_file: str | None = field(
        default=None,
        metadata={"help": "Local JSONL file replacing the benchmark spec's data source (e.g. a GSM8K train split)."},
    )
    num_train_problems: int = field(
        default=4096, metadata={"help": "Number of problems drawn for the built-in arithmetic tasks."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["arithmetic"],
        metadata={"help": f"Reward functions: names among {sorted(REWARDS)} or dotted import paths."},
    )


def resolve_reward(name: str) -> Callable[..., list[float]]:
    path = REWARDS.get(name, name)
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigError(
            f"invalid config: reward_funcs entry {name!r}; allowed: one of {sorted(REWARDS)} or a dotted import path"
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"invalid config: reward_funcs entry {name!r} cannot be imported ({err})") from err


def build_rewards(script_args: TrainScriptArguments, config: EntropyGRPOConfig) -> list[Callable[..., Any]]:
    """The reward functions of `reward_funcs`, plus TRL's soft overlong punishment when overlong_buffer_len > 0."""
    rewards: list[Callable[..., Any]] = [resolve_reward(name) for name in script_args.reward_funcs]
    if config.overlong_buffer_len > 0:
        from trl.rewards import get_soft_overlong_punishment

        # DAPO Eq. 13, TRL's implementation: L_max = max_completion_length, L_cache = overlong_buffer_len.
        rewards.append(get_soft_overlong_punishment(config.max_completion_length, config.overlong_buffer_len))
    return rewards


def parse_train_args(argv: list[str]) -> tuple[TrainScriptArguments, EntropyGRPOConfig]:
    """(script_args, config) from `entropy-rl train` arguments; without --config, BUILTIN_DEFAULTS underlie them.

    Raises ConfigError for an unknown or abbreviated flag or YAML key and for an invalid value. `--help` and values
    argparse cannot convert end the process through argparse (SystemExit), as in any TRL script.
    """
    from trl import TrlParser

    # No prefix matching: `--learning_rat` must be an error, not silently `--learning_rate`.
    parser = TrlParser((TrainScriptArguments, EntropyGRPOConfig), allow_abbrev=False)
    if "--config" not in argv:
        parser.set_defaults_with_config(**BUILTIN_DEFAULTS)
    try:
        script_args, config = parser.parse_args_and_config(args=argv)
    except ConfigError:
        raise
    except ValueError as err:  # TRL/transformers report unknown flags and their own invalid values as ValueError
        raise ConfigError(str(err)) from err
    return script_args, config


def build_dataset(script_args: TrainScriptArguments, seed: int):
    """Rows with `prompt` and the `answer` column the rewards read."""
    from datasets import Dataset

    if script_args.dataset_name == "arithmetic":
        from .toy import make_problems

        return Dataset.from_list(make_problems(script_args.num_train_problems, split="train", seed=seed))
    if script_args.dataset_name == "arithmetic_hard":
        from .toy import make_hard_problems

        return Dataset.from_list(make_hard_problems(script_args.num_train_problems, split="train", seed=seed))
    from .evaluation.benchmarks import BenchmarkError, load_benchmark

    try:
        benchmark = load_benchmark(script_args.dataset_name, data_file=script_args.dataset_file)
    except BenchmarkError as err:
        raise ConfigError(f"invalid config: dataset_name={script_args.dataset_name!r}: {err}") from err
    rows = []
    for problem in benchmark.problems:
        # A chat-template benchmark becomes a conversational prompt: TRL then applies the tokenizer's template.
        prompt = [{"role": "user", "content": problem["prompt"]}] if benchmark.chat_template else problem["prompt"]
        rows.append({"prompt": prompt, "answer": problem["gold"]})
    return Dataset.from_list(rows)


def load_policy(script_args: TrainScriptArguments):
    """(model, tokenizer) to train: the given checkpoint, or the built-in tiny model warm-started on addition."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if script_args.model_name_or_path is None:
        from .toy import load_toy, warm_start

        return load_toy(warm_start())
    path = script_args.model_name_or_path
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True), AutoTokenizer.from_pretrained(path)


def check_checkpoint(path: str) -> None:
    """Refuse an incomplete or pickle-only checkpoint before any model loads, naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"invalid config: resume_from_checkpoint={path!r} is not a directory")
    weights = [*folder.glob("model.safetensors"), *folder.glob("model.safetensors.index.json")]
    missing = [name for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt") if not (folder / name).exists()]
    if not weights:
        missing.append("model.safetensors")
    if missing:
        raise ConfigError(
            f"invalid config: resume_from_checkpoint={path!r} is incomplete: missing {missing} (only safetensors "
            "weights are loaded; a checkpoint written while the run was killed can be partial: use the previous one)"
        )


def train_run(script_args: TrainScriptArguments, config: EntropyGRPOConfig) -> Path:
    """Train and return the run directory (its metrics file, saved config, checkpoints and final/ model)."""
    from .trainer import EntropyGRPOTrainer

    # Cheap checks first: a typo should not wait for a model to load.
    if config.resume_from_checkpoint:
        check_checkpoint(config.resume_from_checkpoint)
    rewards = build_rewards(script_args, config)
    dataset = build_dataset(script_args, config.seed)
    model, tokenizer = load_policy(script_args)
    trainer = EntropyGRPOTrainer(
        model=model, reward_funcs=rewards, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    run_dir = Path(config.output_dir)
    rundir.write_config(run_dir, {"script": asdict(script_args), **config.to_dict()})
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(str(run_dir / rundir.FINAL_DIR))
    trainer.end()  # trackers closed and, under a launcher, the process group left by every rank together
    return run_dir
