"""The per-run summaries a study page is computed from, small enough to commit: <doc_dir>/<name>_runs/.

A run directory (checkpoints, ~60 metrics per step) is too big to commit, so the page could not be regenerated or
audited without training again. `write_summaries` keeps, per run, what the page reads: the saved config (the run's
label, metrics file name and start time), curve.jsonl (the held-out evaluations), the recorded times and the metrics
file cut down to the keys the page reads. Each <method>/seed<k>/ is a run directory `rundir.load_run` reads, and
study.json holds the study's command line and config, so `read_summaries` gives the page everything it had.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropy_rl.errors import ConfigError
from entropy_rl.fit import CURVE_METRIC
from entropy_rl.jsonl import rewrite_rows
from entropy_rl.param_prediction import MOMENTUM_PARTS
from entropy_rl.rundir import CONFIG_FILE, CURVE_FILE, DEFAULT_ENTROPY_KEY, load_run, metrics_path

from .analysis import ATTRIBUTION, MEASURED, PREDICTED, PREDICTED_PARAM, RunResult
from .plan import TIME_FILE
from .spec import SUMMARY_RECORD as RECORD_FILE
from .spec import Study, build_study, summary_dir

STATUS = "read from the summary"  # the page's "this invocation" column for a run re-rendered from its summary
# The metrics the analysis, the figures and the page read (analysis.py, figures.py); every other key is dropped.
SUMMARY_KEYS = (
    "step",
    DEFAULT_ENTROPY_KEY,
    MEASURED,
    PREDICTED,
    PREDICTED_PARAM,
    *(f"dynamics/dH_param/{name}" for name in (*ATTRIBUTION, *MOMENTUM_PARTS)),
)


@dataclass(frozen=True)
class Summaries:
    """What a page is rendered from: the study as it was run, its runs, and the command line and config shown."""

    study: Study
    results: list[RunResult]
    argv: list[str]
    data: dict[str, Any]
    problems: int  # benchmark problems evaluated


def summary_keys(study: Study) -> tuple[str, ...]:
    # A law fitted to a training metric (e.g. fit.metric: reward) reads that column too.
    return SUMMARY_KEYS if CURVE_METRIC.fullmatch(study.fit.metric) else (*SUMMARY_KEYS, study.fit.metric)


def _reduce(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The row's `keys`, values as logged (a null too: some readers tell a key logged as null from one not logged).
    The dynamics keys only on a step that measured the entropy change: the page pairs predictions with measurements
    (analysis.dynamics), so the logit-space prediction logged on every other step is never read."""
    measured = row.get(MEASURED) is not None
    return {key: row[key] for key in keys if key in row and (measured or not key.startswith("dynamics/"))}


def _write_run(result: RunResult, target: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """One run's summary; returns the copied files' modification times (git does not keep them)."""
    source = result.run.path
    target.mkdir(parents=True)
    copied = [name for name in (CONFIG_FILE, CURVE_FILE) if (source / name).is_file()]
    for name in copied:
        shutil.copy2(source / name, target / name)  # copy2: the page's wall-clock line reads the file times
    rows = [_reduce(row, keys) for row in result.run.metrics]  # as the run was read: one per step, in order
    rewrite_rows(target / result.run.metrics_path.name, rows)
    # The times the page shows (execute.py read them from the run's own study_time.json).
    (target / TIME_FILE).write_text(json.dumps({"train_s": result.train_s, "eval_s": result.eval_s}, indent=2) + "\n")
    return {name: (source / name).stat().st_mtime for name in copied}


def write_summaries(
    study: Study, results: list[RunResult], argv: list[str], data: dict[str, Any], problems: int
) -> Path:
    """Write <doc_dir>/<name>_runs/ afresh from the analysed runs: <method>/seed<k>/ per run, and study.json with the
    command line, the study config as used and the problem count. Returns the directory."""
    directory = summary_dir(study)
    staging = directory.with_name(directory.name + ".tmp")  # a failed write leaves the previous summaries whole
    shutil.rmtree(staging, ignore_errors=True)
    keys = summary_keys(study)
    file_times = {
        f"{r.method}/seed{r.seed}": _write_run(r, staging / r.method / f"seed{r.seed}", keys) for r in results
    }
    record = {"argv": list(argv), "data": data, "problems": problems, "file_times": file_times}
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def _read_run(directory: Path, method: str, seed: int, file_times: dict[str, dict[str, float]]) -> RunResult:
    run_dir = directory / method / f"seed{seed}"
    needed = (CONFIG_FILE, metrics_path(run_dir).name, TIME_FILE)
    if missing := [name for name in needed if not (run_dir / name).is_file()]:
        raise ConfigError(
            f"{run_dir}: the summary of `{method}` seed {seed} is missing {', '.join(missing)}; the study writes "
            "<doc_dir>/<name>_runs/ with its page: run it without --from_summaries to write them again"
        )
    # A checkout stamps files with its own time: put back the times recorded for the page's wall-clock line.
    for name, mtime in file_times.get(f"{method}/seed{seed}", {}).items():
        if (run_dir / name).is_file():
            os.utime(run_dir / name, (mtime, mtime))
    times = json.loads((run_dir / TIME_FILE).read_text())
    return RunResult(method, seed, load_run(run_dir), STATUS, times["train_s"], times["eval_s"])


def read_summaries(directory: Path, recipes: Path) -> Summaries:
    """The summaries under `directory` (as written by `write_summaries`), every method x seed of the study they
    record; the study's recipes resolve against `recipes` (the study YAML's folder). A missing file is a ConfigError
    naming it."""
    record_path = directory / RECORD_FILE
    if not record_path.is_file():
        raise ConfigError(
            f"{record_path}: not found; the study writes <doc_dir>/<name>_runs/ with its page: run the study "
            "without --from_summaries first"
        )
    record = json.loads(record_path.read_text())
    study = build_study(record["data"], recipes)
    file_times = record.get("file_times", {})
    results = [_read_run(directory, m.name, seed, file_times) for m in study.methods for seed in range(study.seeds)]
    return Summaries(study, results, record["argv"], record["data"], record["problems"])
