"""The run directory: the one place that knows its file names and how to read and repair them.

    RUN_DIR/
      entropy_rl_config.json   the saved config (its `metrics_file` names the metrics file)
      metrics.jsonl            one row per optimizer step, written by the trainer (name: config.metrics_file)
      checkpoint-<step>/       complete checkpoints; `entropy-rl eval --run` scores each of them (their files, the
                               staging folder and the checks before a resume: entropy_rl.checkpoint_files)
      curve.jsonl              one row per evaluated (checkpoint, benchmark): written during training
                               (curve_benchmarks) or by `entropy-rl eval --run`
      eval/                    the evaluator's per-problem outputs
      final/                   the trained model

Training, evaluation, fitting and the study read and write runs through this module, never by file name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EntropyRLError
from .jsonl import append_row, keep_rows, read_rows, rewrite_rows

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "curve.jsonl"
CONFIG_FILE = "entropy_rl_config.json"
FINAL_DIR = "final"
EVAL_DIR = "eval"
DEFAULT_ENTROPY_KEY = "entropy/seq_mean"  # the paper's seq-mean-token-mean entropy, H of the law
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR, then the step
CHECKPOINT_NAME = re.compile(CHECKPOINT_PREFIX + r"(\d+)")

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class RunDirError(EntropyRLError):
    """A run directory or one of its files is missing or unreadable; the message names the file, row or key."""


# ------------------------------------------------------------------------------------------------ saved config
def read_config(run_dir: PathLike) -> dict[str, Any]:
    """The saved config; {} when it is missing or unreadable (it only names the metrics file and labels the run)."""
    try:
        config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def write_config(run_dir: PathLike, data: dict[str, Any]) -> Path:
    """Write RUN_DIR/entropy_rl_config.json (values JSON cannot hold are written as their str()); returns its path.

    Written to a sibling and renamed, so that a kill or a full disk never leaves a torn config."""
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


def metrics_path(run_dir: PathLike, config: dict[str, Any] | None = None) -> Path:
    """The run's metrics file: the saved config's `metrics_file` (or `config`'s, when given), else metrics.jsonl."""
    config = read_config(run_dir) if config is None else config
    return Path(run_dir) / str(config.get("metrics_file") or METRICS_FILE)


def continue_metrics(path: PathLike, step: int) -> list[dict[str, Any]]:
    """Cut a metrics file back to the rows of steps <= `step` (the step a resumed run continues from); return them."""
    return keep_rows(path, lambda row: row.get("step", math.inf) <= step)


# ------------------------------------------------------------------------------------------------ reading runs
def metric_value(value: Any, where: str) -> float:
    """A logged number as float; null (the trainer's NaN/inf: a degenerate step, not a broken file) becomes NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RunDirError(f"{where}: expected a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Run:
    """One run directory as read from disk: metrics rows (one per step, in step order) and curve.jsonl rows."""

    path: Path
    label: str
    metrics_path: Path
    metrics: list[dict[str, Any]]
    curve: list[dict[str, Any]] | None  # None when the run has no curve.jsonl

    @property
    def steps(self) -> np.ndarray:
        return np.array([row["step"] for row in self.metrics], dtype=int)

    def has(self, key: str) -> bool:
        return any(key in row for row in self.metrics)

    def column(self, key: str) -> np.ndarray:
        """Values of `key` per step, NaN where the step logged null or omitted it."""
        if not self.has(key):
            keys = sorted({k for row in self.metrics for k in row})
            raise RunDirError(f"{self.metrics_path}: key {key!r} is in no row; keys present: {', '.join(keys)}")
        return np.array(
            [metric_value(row.get(key), f"{self.metrics_path} step {row['step']} key {key!r}") for row in self.metrics]
        )


def _read_objects(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file that must exist; a torn last line is ignored, any other bad line is an error."""
    if not path.is_file():
        raise RunDirError(f"{path}: file not found")
    try:
        rows = read_rows(path)
    except ValueError as err:
        raise RunDirError(str(err)) from err
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise RunDirError(f"{path}: row {number} is {row!r}, expected a JSON object")
    return rows


def _label(run_dir: Path, config: dict[str, Any]) -> str:
    name = run_dir.resolve().name
    if config.get("regularizer") is None:
        return name
    label = str(config["regularizer"])
    return label if config.get("seed") is None else f"{label} seed {config['seed']}"


def _metrics_by_step(path: Path) -> list[dict[str, Any]]:
    by_step: dict[int, dict[str, Any]] = {}
    for row in _read_objects(path):
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise RunDirError(f"{path}: key 'step' must be an integer, got {step!r} in row {row}")
        by_step[step] = row  # a step logged twice (resumed run): the later row is the one training continued from
    return [by_step[s] for s in sorted(by_step)]


def load_run(run_dir: PathLike) -> Run:
    """Read RUN_DIR's metrics file (required), curve.jsonl (optional) and config (metrics file name, label).

    Read only: a torn last line is skipped, not repaired, so reading a run while it is being written is safe.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    config = read_config(path)
    metrics = metrics_path(path, config)
    curve_path = path / CURVE_FILE
    curve = _read_objects(curve_path) if curve_path.exists() else None
    return Run(path, _label(path, config), metrics, _metrics_by_step(metrics), curve)


def load_runs(run_dirs: Sequence[PathLike]) -> list[Run]:
    """load_run for each directory, with labels made unique (the directory name is appended to repeats)."""
    runs = [load_run(d) for d in run_dirs]
    repeated = {run.label for run in runs if [r.label for r in runs].count(run.label) > 1}
    return [
        dataclasses.replace(run, label=f"{run.label} ({run.path.resolve().name})") if run.label in repeated else run
        for run in runs
    ]


def common_dir(run_dirs: Sequence[PathLike]) -> Path:
    """Where outputs about these runs go by default: the run directory itself, or the deepest one holding them all."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    return Path(os.path.commonpath([Path(d).resolve() for d in run_dirs]))


def train_entropy_by_step(run_dir: PathLike) -> dict[int, float | None]:
    """`entropy/seq_mean` per step from the run's metrics file ({} with a warning when it cannot be read)."""
    try:
        run = load_run(run_dir)
    except RunDirError as error:
        logger.warning("train_entropy will be null: %s", error)
        return {}
    return {row["step"]: row.get(DEFAULT_ENTROPY_KEY) for row in run.metrics}


# ------------------------------------------------------------------------------------------------ checkpoints, curve
def list_checkpoints(run_dir: PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every RUN_DIR/checkpoint-<step>/ directory, in step order."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_NAME.fullmatch(p.name))]
    return sorted(found)


def _curve_file(run_dir_or_path: PathLike) -> Path:
    path = Path(run_dir_or_path)
    return path / CURVE_FILE if path.is_dir() else path


def read_curve(run_dir_or_path: PathLike) -> list[dict[str, Any]]:
    """Rows of curve.jsonl ([] when there is none), for its writer: a torn last line (killed mid-append) is dropped
    and the file rewritten without it, so that the next append starts on a fresh line instead of gluing onto the
    fragment. Readers that do not append use load_run, which never rewrites."""
    path = _curve_file(run_dir_or_path)
    if not path.is_file():
        return []
    rows = _read_objects(path)
    if path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        if torn:
            rewrite_rows(path, rows)
    return rows


def continue_curve(run_dir: PathLike, step: int) -> list[dict[str, Any]]:
    """Cut curve.jsonl back to the rows of steps <= `step` (where a resumed run continues; later rows were made by
    the weights the resume discards and are redone) and drop a torn last line; return the rows kept."""
    return keep_rows(Path(run_dir) / CURVE_FILE, lambda row: row.get("step", math.inf) <= step)


def append_curve_row(run_dir: PathLike, row: dict[str, Any]) -> None:
    """Append one row to RUN_DIR/curve.jsonl; flushed to the OS, so a kill loses at most this row."""
    append_row(Path(run_dir) / CURVE_FILE, row)


def run_contents(run_dir: PathLike, metrics_file: str | None = None) -> list[str]:
    """What of a run RUN_DIR holds (metrics rows, checkpoints, final/), for refusing to train over it; [] if nothing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    names = {metrics_path(run_dir).name} | ({metrics_file} if metrics_file else set())
    for name in sorted(names):
        try:
            rows = len(read_rows(run_dir / name))
        except ValueError:  # a damaged file is still a run's file
            rows = -1
        if rows:
            found.append(f"{name} ({rows} rows)" if rows > 0 else f"{name} (unreadable)")
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoints (last: {checkpoints[-1][1].name})")
    if (run_dir / FINAL_DIR).exists():
        found.append(f"{FINAL_DIR}/")
    return found


def start_rows(run_dir: PathLike, metrics_file: str, step: int) -> list[dict[str, Any]]:
    """Make RUN_DIR the continuing run's when its first new row is about to be written; return the rows kept.

    A run resumed at `step` keeps rows and checkpoints up to `step`: later ones belong to the future it replaces. A
    run starting at step 0 (overwrite_output_dir, or a directory holding no run) also drops the old final/ model,
    the old metrics file and curve.jsonl. Done this late so that a run that fails before its first step loses nothing.
    """
    run_dir = Path(run_dir)
    path = run_dir / metrics_file
    if step == 0:
        old = metrics_path(run_dir)
        if old != path and old.is_file():
            old.unlink()
        shutil.rmtree(run_dir / FINAL_DIR, ignore_errors=True)
        shutil.rmtree(run_dir / EVAL_DIR, ignore_errors=True)
    for checkpoint_step, checkpoint in list_checkpoints(run_dir):
        if checkpoint_step > step:
            shutil.rmtree(checkpoint, ignore_errors=True)
    curve = run_dir / CURVE_FILE
    if curve.is_file():
        keep_rows(curve, lambda row: row.get("step", math.inf) <= step)
    return continue_metrics(path, step)


def check_writable(run_dir: PathLike) -> Path:
    """Create RUN_DIR if needed and prove a file can be written there, before a model loads for nothing."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunDirError(
            f"invalid config: output_dir={str(run_dir)!r} is not writable ({err.strerror or err}); allowed: a "
            "directory this user can create and write"
        ) from err
    return run_dir
