"""Running a study's plan: train what is not finished, evaluate what is not evaluated, one run after the other.

The seconds spent training and evaluating each run are summed over invocations in RUN_DIR/study_time.json (the page's
time table); an invocation killed while training is credited with the time until its last metrics row. Progress
lines go to a `report` callback (the command prints them). `run_workers` runs several copies of the command at once,
each on a share of the runs still to train.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from entropy_rl.errors import ConfigError
from entropy_rl.evaluation.benchmarks import Benchmark
from entropy_rl.evaluation.runner import EvalSettings, evaluate_run
from entropy_rl.grading import Grader
from entropy_rl.locks import file_lock
from entropy_rl.rundir import load_run, metrics_path
from entropy_rl.training import train_run

from .analysis import RunResult
from .plan import TIME_FILE, Planned, is_restored, plan_run
from .spec import Study

RESTORED_STATUS = "restored from its summary"  # a finished run whose directory the study rebuilt from its summary
TRAINING_SINCE = "training_since"  # in study_time.json while an invocation trains the run (epoch seconds)


def eval_settings(study: Study, benchmark: Benchmark) -> EvalSettings:
    """The evaluator's settings for the study; a bad sampling (k > 1 at temperature 0) fails here, before training."""
    settings = EvalSettings.from_options(study.eval, progress=False)
    settings.sampling(benchmark)
    return settings


def _read_times(run_dir: Path) -> dict[str, float]:
    path = run_dir / TIME_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_times(run_dir: Path, times: dict[str, float]) -> None:
    (run_dir / TIME_FILE).write_text(json.dumps(times, indent=2) + "\n")


def add_time(run_dir: Path, key: str, seconds: float) -> dict[str, float]:
    """Add `seconds` to the run's recorded `key` ("train_s" or "eval_s"); return all its recorded times."""
    times = _read_times(run_dir)
    times[key] = times.get(key, 0.0) + seconds
    _write_times(run_dir, times)
    return times


def start_training_clock(run_dir: Path) -> None:
    """Mark that an invocation starts training the run, first crediting one that was killed while training it.

    A killed invocation never adds its seconds, so its mark is still there: it trained from the mark until its last
    metrics row (flushed every step), and that time is added to train_s. Steps after its last checkpoint are trained
    again on resume, and counted again, as they were spent again."""
    times = _read_times(run_dir)
    if (since := times.pop(TRAINING_SINCE, None)) is not None:
        metrics = metrics_path(run_dir)
        last_row = metrics.stat().st_mtime if metrics.is_file() else since
        times["train_s"] = times.get("train_s", 0.0) + max(0.0, last_row - since)
    times[TRAINING_SINCE] = time.time()
    _write_times(run_dir, times)


def stop_training_clock(run_dir: Path, seconds: float) -> None:
    """The invocation finished training the run in `seconds`: record them and clear its mark."""
    times = _read_times(run_dir)
    times.pop(TRAINING_SINCE, None)
    times["train_s"] = times.get("train_s", 0.0) + seconds
    _write_times(run_dir, times)


def planned_status(plan: Planned) -> str:
    """What training a run in the plan's state does, for the page's "this invocation" column."""
    if plan.state == "finished":
        return RESTORED_STATUS if is_restored(plan.run_dir) else "skipped (finished)"
    if plan.state == "summarized":
        return RESTORED_STATUS
    return "trained" if plan.state == "new" else f"resumed from {Path(str(plan.config.resume_from_checkpoint)).name}"


def _train(study: Study, plan: Planned, problems: int, head: str, report: Callable[[str], None]) -> str:
    """Train the run unless it is finished; what was done.

    Under a lock per run, and planned again once it is held: another study process writing to the same output folder
    may have trained the run (or part of it) since this one planned, and must neither be overwritten nor repeated.
    """
    if plan.state == "finished":
        return planned_status(plan)
    plan.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(plan.run_dir.parent / f".{plan.run_dir.name}.lock"):
        method = next(method for method in study.methods if method.name == plan.method)
        plan = plan_run(study, method, plan.seed, problems)
        status = planned_status(plan)
        if plan.state == "finished":
            return f"{status} by another process"
        report(f"{head}: training ({status})")
        plan.run_dir.mkdir(exist_ok=True)
        start_training_clock(plan.run_dir)
        started = time.perf_counter()
        train_run(plan.script_args, plan.config, plan.model_args)
        stop_training_clock(plan.run_dir, time.perf_counter() - started)
    return status


def execute(
    study: Study,
    plans: Sequence[Planned],
    benchmark: Benchmark,
    settings: EvalSettings,
    report: Callable[[str], None] = lambda line: None,
    done_by_workers: dict[tuple[str, int], str] | None = None,
) -> list[RunResult]:
    """Train what is not finished and evaluate what is not evaluated, one run after the other.

    `done_by_workers`: (method, seed) -> what worker processes of this invocation did with the run (they trained it,
    so this process finds it finished), reported instead of "skipped"."""
    results = []
    with Grader(workers=study.eval.grading_workers) as grader:  # one set of grading processes for every run
        for i, plan in enumerate(plans, start=1):
            head = f"[{i}/{len(plans)}] {plan.method} seed {plan.seed}"
            status = _train(study, plan, len(benchmark.problems), head, report)
            status = (done_by_workers or {}).get((plan.method, plan.seed), status)
            started = time.perf_counter()
            # A restored run has no checkpoints left: its summary kept every evaluation.
            restored = is_restored(plan.run_dir)
            added = [] if restored else evaluate_run(plan.run_dir, [benchmark], settings=settings, grader=grader)
            times = add_time(plan.run_dir, "eval_s", 0.0 if restored else time.perf_counter() - started)
            train_s, eval_s = times.get("train_s", 0.0), times["eval_s"]
            report(
                f"{head}: {status}; {len(added)} checkpoints evaluated now; recorded train {train_s:.0f} s, "
                f"eval {eval_s:.0f} s"
            )
            results.append(RunResult(plan.method, plan.seed, load_run(plan.run_dir), status, train_s, eval_s))
    return results


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch on `threads` threads and no transformers progress bars (a "Loading weights" bar per checkpoint would
    drown the per-run lines) for the duration; both restored afterwards."""
    import torch
    from transformers.utils import logging as hf_logging

    before, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if bars:
            hf_logging.enable_progress_bar()


def run_workers(commands: Sequence[Sequence[str]]) -> None:
    """Run the command lines as child processes all at once and wait for every one; a failed one is an error."""
    children = [subprocess.Popen(list(command)) for command in commands]
    codes = [child.wait() for child in children]
    if any(codes):
        raise ConfigError(f"a study worker failed (exit codes {codes}); re-run the command to resume")
