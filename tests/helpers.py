"""Helpers the test modules and the scripts under tests/scripts/ share: reward functions, the tiny GRPO settings, the
two-process launch and the methods' test parameters. Subprocesses name the rewards `helpers.<name>` (tests/ on their
PYTHONPATH)."""

from __future__ import annotations

import sys
from pathlib import Path

# Scripts the tests launch in subprocesses (pytest collects nothing there: conftest's collect_ignore).
SCRIPTS = Path(__file__).parent / "scripts"


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


OFF_POLICY = {"num_iterations": 2}
# Parameters that make a method act visibly in two tiny steps, and the variants tests run besides the registered names;
# a method missing here runs with its defaults.
METHOD_PARAMS = {
    "clip_cov": {"clip_cov_ratio": 0.2, "clip_cov_lb": -5.0},  # wide band, many picks: the test sees them
    "kl_cov": {"kl_cov_ratio": 0.2, **OFF_POLICY},
    "steer_exp_exact": {"regularizer": "steer", "steer_mapping": "exp", "steer_estimator": "exact"},
    "clip_b": {"clip_b_mu": 0.5},
    "clip_v": {"clip_v_mu": 0.5, "clip_v_max_frac": 0.05},
    "clip_b+steer": {"clip_b_mu": 0.5},
}


def registered(*kinds: str) -> list[str]:
    """The names in entropy_rl's regularizer registry, of the given kinds ("loss", "filter", "native"; all when none
    is given): a test that covers every method covers a new one without an edit."""
    from entropy_rl.regularizers import REGISTRY

    return [name for name, cls in REGISTRY.items() if not kinds or cls.kind in kinds]


def fixed_batch(trainer, batch=8, seed=0):
    """A hand-made batch in the shape TRL hands the loss: fixed prompts and completions, masked tails, random
    advantages and rollout log-probs near the model's own."""
    import torch

    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(4, 20, (batch, 5), generator=g)
    completion_ids = torch.randint(4, 20, (batch, 6), generator=g)
    completion_mask = torch.ones(batch, 6, dtype=torch.long)
    completion_mask[0, 3:] = 0
    completion_mask[5, 1:] = 0
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.ones(batch, 11, dtype=torch.long), 6
        )
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones(batch, 5, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(batch, generator=g),
        "old_per_token_logps": logps + 0.3 * torch.randn(batch, 6, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }
