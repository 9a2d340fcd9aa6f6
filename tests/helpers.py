"""Helpers the test modules and the scripts under tests/scripts/ share: reward functions, the tiny GRPO settings and
the two-process launch. Subprocesses name the rewards as `helpers.<name>` (tests/ on their PYTHONPATH)."""

from __future__ import annotations

import sys
from pathlib import Path


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


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A tiny local checkpoint (weights and tokenizer) in `path`, as `--model_name_or_path` would name one."""
    from entropy_rl.toy import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden_size=32, num_layers=2, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
