"""Run by tests/test_dynamic_sampling.py under 1 or 2 processes: two GRPO steps with dynamic sampling on.

The reward depends only on the prompt and on the row's position in its group, never on the sampled text or on how
rows are split over processes: prompts marked `flat` score 0.0 for every completion (no spread: dropped), the others
alternate 0.0 / 1.0 (spread: kept). So one and two processes must keep exactly the same groups. Each process writes
the prompts and advantages of every batch it trained on to OUT_DIR/rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from pathlib import Path

GROUP = 4
GLOBAL_ROWS = 16  # 4 prompts x 4 completions per step, on 1 or 2 processes


def position_reward(completions, flat, **kwargs) -> list[float]:
    # Called on each process's rows; groups are GROUP consecutive rows and never straddle the two processes here.
    return [0.0 if is_flat else float(i % 2) for i, is_flat in enumerate(flat)]


def main(out_dir: str, regularizer: str, max_rounds: str, at_cap: str) -> None:
    import torch.distributed as dist
    from datasets import Dataset

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.toy import build_model, build_tokenizer, make_problems
    from entropy_rl.trainer import EntropyGRPOTrainer

    class Recording(EntropyGRPOTrainer):
        batches: list[dict] = []

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            prompts = self._tokenizer.batch_decode(output["prompt_ids"], skip_special_tokens=True)
            advantages = output["advantages"].tolist()
            self.batches.append({"prompts": prompts, "advantages": advantages})
            return output

    tokenizer = build_tokenizer()
    # One prompt in three has spread: a full batch of 4 groups takes several rounds.
    problems = [{**p, "flat": i % 3 != 0} for i, p in enumerate(make_problems(48, seed=3))]
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate's launcher
    # Clip-Cov's parameters only where it is selected (a parameter of an unselected method is refused).
    clip_cov = {"clip_cov_ratio": 0.2, "clip_cov_lb": -5.0} if "clip_cov" in regularizer.split("+") else {}
    args = EntropyGRPOConfig(
        output_dir=out_dir,
        regularizer=regularizer,
        dynamic_sampling=True,
        dynamic_sampling_max_rounds=int(max_rounds),
        dynamic_sampling_at_cap=at_cap,
        per_device_train_batch_size=GLOBAL_ROWS // processes,  # the same global batch on 1 and 2 processes
        num_generations=GROUP,
        max_completion_length=4,
        max_steps=2,
        learning_rate=1e-3,
        loss_type="dapo",
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        dynamics_every=1,
        **clip_cov,
    )
    trainer = Recording(
        model=build_model(tokenizer, hidden_size=32, num_layers=2),
        reward_funcs=[position_reward],
        args=args,
        train_dataset=Dataset.from_list(problems),
        processing_class=tokenizer,
    )
    trainer.train()
    group = weakref.ref(dist.distributed_c10d._get_default_group()) if dist.is_initialized() else None
    trainer.end()  # every rank leaves the process group, and nothing may keep it (and its threads) alive
    released = group is None or group() is None
    rank = trainer.accelerator.process_index
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"batches": Recording.batches, "released": released}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
