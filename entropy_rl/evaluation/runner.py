"""Evaluate a model on math benchmarks, or every checkpoint of a run (the entropy-performance curve).

Per benchmark: avg@k, unbiased pass@k, mean response length (tokens) and mean token entropy of the responses at the
sampling temperature. Problems are cut into batches once, globally; whole batches are sharded over processes and
every sample draws from its own seeded generator, so results do not depend on the number of processes.
A run's checkpoints and curve.jsonl are found and written through entropy_rl.rundir.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entropy_rl import rundir
from entropy_rl.evaluation.benchmarks import Benchmark, Sampling, load_benchmark
from entropy_rl.evaluation.generation import generate_records, load_checkpoint_model, process_state
from entropy_rl.evaluation.scoring import score_records
from entropy_rl.grading import Grader

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Results = dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]  # benchmark -> (metrics, per-problem records)


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate; ``None`` overrides keep each benchmark's own default."""

    batch_size: int = 32  # sequences per generate() call
    seed: int = 0
    k: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    pass_ks: tuple[int, ...] = ()  # reported besides pass@1 and pass@k
    progress: bool = True

    @classmethod
    def from_options(cls, options: Any, prefix: str = "", **given: Any) -> EvalSettings:
        """The settings named `prefix + field` on `options` (a command's arguments, a config), then `given`; a
        field that `options` lacks keeps its default. The one place every command and the training curve build them."""
        found = {f.name: getattr(options, prefix + f.name) for f in fields(cls) if hasattr(options, prefix + f.name)}
        return cls(**{**found, **given})

    def sampling(self, benchmark: Benchmark) -> Sampling:
        default = benchmark.sampling
        return Sampling(
            k=self.k if self.k is not None else default.k,
            temperature=self.temperature if self.temperature is not None else default.temperature,
            top_p=self.top_p if self.top_p is not None else default.top_p,
        )


# ------------------------------------------------------------------------------------------------- one benchmark
def _grade(records: list[dict[str, Any]], grader: Grader) -> None:
    """Add each record's extracted answers, correctness and grading status (one grading pass over all samples)."""
    grades = grader.grade_many([(sample, r["gold"]) for r in records for sample in r["samples"]])
    position = 0
    for record in records:
        mine = grades[position : position + len(record["samples"])]
        position += len(mine)
        record["extracted"] = [grade.extracted for grade in mine]
        record["correct"] = [grade.correct for grade in mine]
        record["status"] = [grade.status for grade in mine]


def _generate_my_share(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark, settings: EvalSettings, llm: Any
) -> list[dict[str, Any]]:
    """Ungraded records of this process's share of the benchmark's batches."""
    import torch
    from tqdm import tqdm

    state = process_state()
    sampling = settings.sampling(benchmark)
    per_batch = max(1, settings.batch_size // sampling.k)
    problems = benchmark.problems
    batches = [problems[i : i + per_batch] for i in range(0, len(problems), per_batch)]
    options = {"sampling": sampling, "seed": settings.seed, "llm": llm}
    # `is None`, not `or`: a 0 must not silently become the default (the command rejects it).
    options["max_new_tokens"] = benchmark.max_new_tokens if settings.max_new_tokens is None else settings.max_new_tokens
    records: list[dict[str, Any]] = []
    with state.split_between_processes(batches) as my_batches, torch.inference_mode():
        bar = tqdm(
            total=sum(len(batch) for batch in my_batches),
            desc=f"{benchmark.name} (rank 0 of {state.num_processes})" if state.num_processes > 1 else benchmark.name,
            unit="problem",
            disable=not (settings.progress and state.is_main_process),
        )
        for batch in my_batches:
            records.extend(generate_records(model, tokenizer, benchmark, batch, **options))
            bar.update(len(batch))
        bar.close()
    return records


def evaluate_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    grader: Grader,
    settings: EvalSettings,
    llm: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-problem records) of one benchmark; every process must call it, all get the full results."""
    from accelerate.utils import gather_object

    records = _generate_my_share(model, tokenizer, benchmark, settings, llm)
    _grade(records, grader)
    records = gather_object(records)
    sampling = settings.sampling(benchmark)
    metrics = {"benchmark": benchmark.name, **score_records(records, settings.pass_ks)}
    metrics |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "source": benchmark.source}
    return metrics, records


# ------------------------------------------------------------------------------------------------ one checkpoint
def _write_outputs(output_dir: Path, results: Results) -> None:
    """<output_dir>/<benchmark>.jsonl (one line per problem) and summary.json (metrics, merged with earlier ones)."""
    from entropy_rl.jsonl import rewrite_rows

    output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name, (metrics, records) in results.items():
        rewrite_rows(output_dir / f"{name}.jsonl", records)
        summary[name] = metrics
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, summary_path)  # readers never see a half-written summary


def evaluate_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmarks: Sequence[Benchmark | str],
    *,
    settings: EvalSettings | None = None,
    grader: Grader | None = None,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    llm: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory model on benchmarks (objects or names); returns {benchmark: metrics} on every process.

    Callable from a trainer callback on all ranks (the model unwrapped, e.g. ``accelerator.unwrap_model``): it
    switches the model to eval mode and back, and only the main process writes ``output_dir``.
    """
    settings = settings or EvalSettings()
    loaded = [b if isinstance(b, Benchmark) else load_benchmark(b, data_dir=data_dir, limit=limit) for b in benchmarks]
    own_grader = grader is None
    grader = grader or Grader()
    was_training = model.training
    model.eval()
    try:
        results = {b.name: evaluate_benchmark(model, tokenizer, b, grader, settings, llm) for b in loaded}
    finally:
        model.train(was_training)
        if own_grader:
            grader.close()
    if output_dir is not None and process_state().is_main_process:
        _write_outputs(Path(output_dir), results)
    return {name: metrics for name, (metrics, _) in results.items()}


# ------------------------------------------------------------------------------------------------------ a run
CURVE_METRICS = ("eval_entropy", "avg@k", "avg@k_se", "k", "pass@k", "mean_length", "num_problems")


def curve_row(step: int, checkpoint: str, metrics: dict[str, Any], train_entropy: float | None) -> dict[str, Any]:
    """One curve.jsonl row: a benchmark's metrics at a step (checkpoint: the step's checkpoint directory name)."""
    row = {"step": step, "checkpoint": checkpoint, "benchmark": metrics["benchmark"]}
    return row | {"train_entropy": train_entropy} | {key: metrics[key] for key in CURVE_METRICS}


def _done_pairs(run_dir: Path) -> set[tuple[str | None, str | None]]:
    """(checkpoint, benchmark) pairs already in curve.jsonl; the main process alone reads (and repairs) the file."""
    from accelerate.utils import broadcast_object_list

    done: list[Any] = [None]
    if process_state().is_main_process:
        done = [{(row.get("checkpoint"), row.get("benchmark")) for row in rundir.read_curve(run_dir)}]
    return broadcast_object_list(done)[0]


def _release_memory() -> None:
    import torch

    gc.collect()  # free this checkpoint's weights before the next one is loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_run(
    run_dir: str | Path,
    benchmarks: Sequence[Benchmark],
    *,
    settings: EvalSettings,
    grader: Grader,
    output_dir: str | Path | None = None,
    dtype: str = "auto",
) -> list[dict[str, Any]]:
    """Evaluate every RUN_DIR/checkpoint-<step>/ on `benchmarks`, appending one curve.jsonl row per pair.

    Pairs already in curve.jsonl are skipped, so an interrupted evaluation resumes where it stopped. Per-problem
    outputs go to ``output_dir/checkpoint-<step>/`` (default RUN_DIR/eval). Returns the rows added.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise rundir.RunDirError(f"{run_dir}: run directory not found")
    checkpoints = rundir.list_checkpoints(run_dir)
    if not checkpoints:
        raise rundir.RunDirError(f"{run_dir}: no checkpoint-<step>/ directories to evaluate")
    out_root = Path(output_dir) if output_dir is not None else run_dir / rundir.EVAL_DIR
    state = process_state()
    done = _done_pairs(run_dir)
    train_entropy = rundir.train_entropy_by_step(run_dir)
    added = []
    for step, checkpoint in checkpoints:
        todo = [b for b in benchmarks if (checkpoint.name, b.name) not in done]
        if not todo:
            continue
        model, tokenizer = load_checkpoint_model(checkpoint, state.device, dtype)
        results = evaluate_checkpoint(
            model, tokenizer, todo, settings=settings, grader=grader, output_dir=out_root / checkpoint.name
        )
        for metrics in results.values():
            row = curve_row(step, checkpoint.name, metrics, train_entropy.get(step))
            if state.is_main_process:
                rundir.append_curve_row(run_dir, row)  # flushed: a kill loses at most this row
            added.append(row)
        del model, tokenizer
        _release_memory()
    return added
