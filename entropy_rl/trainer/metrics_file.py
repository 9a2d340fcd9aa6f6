"""The run's metrics.jsonl as EntropyGRPOTrainer writes it: a resumed run continues its rows, each step appends one
flushed row, and a failed write names the file and the free space."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import EntropyRLError
from ..jsonl import append_row, read_rows


class MetricsFile:
    """Rows of `metrics.jsonl` (or `metrics_file`) in `output_dir`, one per optimizer step; only the main process
    (`is_main`) reads or writes the file."""

    def __init__(self, output_dir: str, metrics_file: str, *, is_main: bool):
        self.run_dir = Path(output_dir)
        self.name = metrics_file
        self.path = rundir.metrics_path(output_dir, {"metrics_file": metrics_file})
        self.is_main = is_main
        self.started = False  # the first step of this train() call makes the run directory this run's
        self.start_step = 0  # the step train() started from (the resumed checkpoint's)
        self._step_started = time.perf_counter()

    def open(self, start_step: int) -> list[dict[str, Any]] | None:
        """The rows the run continues from (none on a fresh start; None off the main process); nothing is rewritten
        before the first new row."""
        self.started = False
        self.start_step = start_step
        if not self.is_main:
            return None
        kept = [row for row in read_rows(self.path) if row.get("step", math.inf) <= start_step] if start_step else []
        self._step_started = time.perf_counter()
        return kept

    def start(self, config: dict[str, Any]) -> None:
        """After the first new step: rows and checkpoints after the resumed step (all, on a fresh start) go and
        `config` is written. A run that fails before its first step leaves the directory as it found it."""
        self.started = True
        if not self.is_main:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rundir.start_rows(self.run_dir, self.name, self.start_step)
            rundir.write_config(self.run_dir, config)
        except OSError as err:
            raise self._write_failure(err, "the run's first row") from err

    def write(self, step: int, epoch: float | None, metrics: dict[str, float]) -> None:
        """Append and flush the row of `step`: its step, epoch and wall time, then `metrics`."""
        if not self.is_main:
            return
        now = time.perf_counter()
        row = {"step": step, "epoch": epoch, "wall_time": now - self._step_started, **metrics}
        self._step_started = now
        try:
            append_row(self.path, row)
        except OSError as err:  # a full disk: stop with the file named; a torn last line is ignored by readers
            raise self._write_failure(err, f"row of step {step}") from err

    def _write_failure(self, err: OSError, what: str) -> EntropyRLError:
        """A full disk (or another OS error) while writing the run directory: one line naming the file."""
        free = shutil.disk_usage(self.run_dir).free
        return rundir.RunDirError(
            f"cannot write {err.filename or self.path} ({what}): {err.strerror or err} ({free / 2**20:.1f} MiB free on "
            "that device); the rows written so far are intact"
        )
