"""Run by tests/test_stat_scope.py under 1 or 2 processes: step-level edits and diagnostics on one fixed global batch.

Each process takes its slice of the same global batch, runs the trainer's step-level regularizer path and its loss
path, and writes what it got to OUT_DIR/rank<r>.json. With stat_scope=global everything must match across process
counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

GLOBAL_ROWS = 16


def fixed_global_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    completion_mask = (torch.arange(6)[None, :] < torch.randint(1, 7, (GLOBAL_ROWS, 1), generator=g)).long()
    return {
        "prompt_ids": torch.randint(4, 20, (GLOBAL_ROWS, 5), generator=g),
        "prompt_mask": torch.ones(GLOBAL_ROWS, 5, dtype=torch.long),
        "completion_ids": torch.randint(4, 20, (GLOBAL_ROWS, 6), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.randn(GLOBAL_ROWS, generator=g),
    }


def main(out_dir: str, regularizer: str, where: str) -> None:
    """where: "rollout" takes the step-level edits in the extra rollout-policy forward, "loss" in the loss forward."""
    from datasets import Dataset

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.regularizers import parameter_names, parse_names
    from entropy_rl.toy import build_model, build_tokenizer, make_problems
    from entropy_rl.trainer import EntropyGRPOTrainer

    tokenizer = build_tokenizer()
    method_params = {
        "clip_cov_ratio": 0.1,
        "clip_cov_lb": -5.0,
        "kl_cov_ratio": 0.1,
        "clip_b_mu": 0.5,
        "clip_v_mu": 0.5,
        "clip_v_max_frac": 0.05,
    }
    # Only the selected methods' parameters: one of a method that is not selected is refused.
    selected = {name for method in parse_names(regularizer) for name in parameter_names(method)}
    params = {key: value for key, value in method_params.items() if key in selected}
    params["num_iterations"] = 2 if "kl_cov" in regularizer else 1
    args = EntropyGRPOConfig(
        output_dir=out_dir,
        regularizer=regularizer,
        stat_scope="global",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
        dynamics_every=0,
        **params,
    )
    trainer = EntropyGRPOTrainer(
        model=build_model(tokenizer, hidden_size=32, num_layers=2),
        reward_funcs=[lambda completions, **kw: [0.0]],
        args=args,
        train_dataset=Dataset.from_list(make_problems(8)),
        processing_class=tokenizer,
    )
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    rows = slice(rank * GLOBAL_ROWS // world, (rank + 1) * GLOBAL_ROWS // world)
    batch = {key: value[rows] for key, value in fixed_global_batch().items()}
    batch["num_items_in_batch"] = fixed_global_batch()["completion_mask"].sum()
    trainer.model.train()
    trainer.loss_edits.rollout_at_loss = where == "loss"
    if where == "rollout":
        trainer._rollout_edits(batch)
    trainer.current_gradient_accumulation_steps = 1
    trainer._compute_loss(trainer.model, batch)  # records the diagnostics' token sums of this slice
    trainer.state.global_step = 1
    trainer._finish_step()
    edits = {
        key: batch[key].tolist() for key in ("entropy_rl_weight", "entropy_rl_penalty", "tool_mask") if key in batch
    }
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps({"edits": edits, "metrics": metrics, "num_items": float(batch["num_items_in_batch"])})
    )
    trainer.end()  # every rank leaves the process group together


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
