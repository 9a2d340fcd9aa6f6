"""What `entropy-rl train` says while it runs: the plan before the first step, then one bar with the ETA.

The library never prints for the user (docs/architecture.md): this callback is the command's, handed to `train_run`,
which lets it replace transformers' own bar.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

# Steps timed before the estimate is printed; the first step (compilation, allocator, first rollout) is left out.
ESTIMATE_AFTER = 10


def plan_lines(script_args: Any, config: Any, model_args: Any) -> list[str]:
    """What the run will do, from its parsed arguments: model, task, steps, evaluation, run folder."""
    from entropy_rl.toy import POLICY_DIR

    if model_args.model_name_or_path is None:
        model = f"the built-in toy policy (warm-started, shipped in {POLICY_DIR})"
    else:
        model = model_args.model_name_or_path
    steps = f"{config.max_steps} steps" if config.max_steps > 0 else f"{config.num_train_epochs:g} epochs"
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    lines = [
        f"model:    {model}",
        f"task:     {script_args.dataset_name}, reward {' + '.join(script_args.reward_funcs)}",
        f"training: GRPO, {steps} of {per_step} completions per device ({config.num_generations} per prompt), "
        f"lr {config.learning_rate:g}, regularizer {config.regularizer}",
    ]
    if config.curve_benchmarks:
        lines.append(
            f"held-out: {', '.join(config.curve_benchmarks)} every {config.curve_every:g} steps and at the end"
        )
    lines.append(f"run:      {config.output_dir}")
    return lines


class TrainProgress(TrainerCallback):
    """One bar over the optimizer steps, with the latest reward and entropy; names the held-out evaluations while
    they run and prints, after the first steps, how long the rest should take on this machine."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.start_step = 0
        self.timed_from: float | None = None
        self.phase = "training"

    def _show(self, phase: str) -> None:
        self.phase = phase
        self.bar.set_description_str(phase)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.phase, dynamic_ncols=True)
            self.start_step = state.global_step

    def on_step_begin(self, args, state, control, **kwargs):
        if self.bar is not None and self.phase != "training":
            self._show("training")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        done = state.global_step - self.start_step
        if done == 1:
            self.timed_from = time.perf_counter()
        elif done == ESTIMATE_AFTER + 1 and self.timed_from is not None:
            per_step = (time.perf_counter() - self.timed_from) / ESTIMATE_AFTER
            left = per_step * (state.max_steps - state.global_step)
            self.bar.write(f"about {_duration(left)} to go on this machine ({per_step:.2f} s per step)")
        # The trainer's curve evaluation runs after this callback at such steps (training_curve.CurveCallback).
        every = getattr(args, "curve_every", None)
        if getattr(args, "curve_benchmarks", None) and every and state.global_step % every == 0:
            self._show(f"evaluating held-out {', '.join(args.curve_benchmarks)}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        shown = {"reward": logs.get("reward"), "entropy": logs.get("entropy/token_mean", logs.get("entropy"))}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if isinstance(v, float)}, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.close()
        self.bar = None
        every = getattr(args, "curve_every", None)
        if getattr(args, "curve_benchmarks", None) and every and state.global_step % every != 0:
            print(f"evaluating held-out {', '.join(args.curve_benchmarks)} at the last step ...", flush=True)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"
