"""The entropy-reward curve built during training: the current policy on math benchmarks every few steps.

`CurveCallback` runs the evaluator (entropy_rl.evaluation.runner.evaluate_checkpoint: same sampling, grading, avg@k,
pass@k and response entropy as `entropy-rl eval`) on the model being trained, every `eval_steps` (else `save_steps`)
optimizer steps and at the end. Each training process evaluates its share of the problems and one gather joins them;
generation uses the trainer's backend (transformers, or TRL's colocated vLLM engine when `use_vllm`). One row per
benchmark is appended to RUN_DIR/curve.jsonl with the training entropy of that step, in the format of
`entropy-rl eval --run`, named after the step's checkpoint: with the same seed both give the same row, and an offline
evaluation of the run skips the pairs already there. Evaluation draws from its own seeded generators and leaves the
training RNG alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from . import rundir
from .errors import ConfigError, EntropyRLError
from .evaluation.benchmarks import Benchmark, load_benchmark
from .evaluation.runner import EvalSettings, curve_row, evaluate_checkpoint
from .grading import Grader

if TYPE_CHECKING:
    from .config import EntropyGRPOConfig


def curve_settings(args: EntropyGRPOConfig) -> EvalSettings:
    """The evaluator's settings from the trainer's `curve_*` fields."""
    return EvalSettings.from_options(args, "curve_", pass_ks=tuple(args.curve_pass_ks), progress=False)


def load_curve_benchmarks(args: EntropyGRPOConfig) -> list[Benchmark]:
    """The curve's benchmarks, loaded and checked against the sampling overrides before training starts."""
    settings = curve_settings(args)
    benchmarks = []
    for name in args.curve_benchmarks:
        try:
            benchmark = load_benchmark(name, limit=args.curve_limit)
            settings.sampling(benchmark)  # e.g. curve_k 4 on a greedy benchmark
        except EntropyRLError as err:
            raise ConfigError(f"invalid config: curve_benchmarks entry {name!r}: {err}") from err
        benchmarks.append(benchmark)
    return benchmarks


class CurveCallback(TrainerCallback):
    """Evaluates the policy every `args.curve_every` steps and at the end; appends the rows to curve.jsonl."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.benchmarks = load_curve_benchmarks(trainer.args)
        self.settings = curve_settings(trainer.args)
        self.every = int(trainer.args.curve_every)
        self.run_dir = Path(trainer.args.output_dir)
        self.grader: Grader | None = None
        self.last_step = -1  # the last step evaluated, so that the end does not repeat it

    def on_train_begin(self, args, state, control, **kwargs):
        """Continue curve.jsonl where the (possibly resumed) run stands, and fill a gap at the resume step."""
        from accelerate.utils import broadcast_object_list

        step = state.global_step
        done: list[Any] = [set()]
        if self.trainer.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            kept = rundir.continue_curve(self.run_dir, step)  # rows past the checkpoint resumed from are redone
            done = [{row.get("benchmark") for row in kept if row.get("step") == step}]
        done_here = broadcast_object_list(done)[0]
        if step > 0 and step % self.every == 0:
            # Killed after this checkpoint was saved but before its rows were written: evaluate what is missing.
            entropy = rundir.train_entropy_by_step(self.run_dir).get(step)
            self._evaluate(step, [b for b in self.benchmarks if b.name not in done_here], entropy)
            self.last_step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self._evaluate_now(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step != self.last_step:
            self._evaluate_now(state.global_step)
        if self.grader is not None:
            self.grader.close()
            self.grader = None

    def _evaluate_now(self, step: int) -> None:
        # The trainer's step-end callback ran first: its last metrics row is this step's.
        entropy = self.trainer.last_metrics_row.get(rundir.DEFAULT_ENTROPY_KEY)
        self._evaluate(step, self.benchmarks, entropy)
        self.last_step = step

    def _evaluate(self, step: int, benchmarks: list[Benchmark], train_entropy: float | None) -> None:
        if not benchmarks:
            return
        from trl.models.utils import unwrap_model_for_generation

        trainer = self.trainer
        started = time.perf_counter()
        if self.grader is None:
            self.grader = Grader()
        checkpoint = f"{rundir.CHECKPOINT_PREFIX}{step}"
        out_dir = self.run_dir / rundir.EVAL_DIR / checkpoint
        gather = getattr(trainer.args, "ds3_gather_for_generation", True)
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator, gather) as model:
            results = evaluate_checkpoint(
                model,
                getattr(trainer.processing_class, "tokenizer", trainer.processing_class),  # a processor's own
                benchmarks,
                settings=self.settings,
                grader=self.grader,
                output_dir=out_dir,
                llm=trainer.vllm_engine(),
            )
        seconds = time.perf_counter() - started
        trainer.log_curve_seconds(seconds)
        if trainer.accelerator.is_main_process:
            for metrics in results.values():
                row = curve_row(step, checkpoint, metrics, train_entropy) | {"eval_seconds": seconds}
                rundir.append_curve_row(self.run_dir, row)  # flushed: a kill loses at most this row
