"""The run's metrics.jsonl as EntropyGRPOTrainer writes it: a resumed run continues its rows, each step appends one
flushed row, and a failed write names the file and the free space."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from .. import rundir
from ..errors import EntropyRLError
from ..jsonl import append_row, read_rows


class MetricsFileMixin:
    """Rows of `metrics.jsonl` (or `metrics_file`), one per optimizer step, written by the main process."""

    def _open_metrics_file(self) -> None:
        """Read the rows the (possibly resumed) run continues from; nothing is rewritten before the first new row."""
        self._rows_started = False
        self._start_step = start = self.state.global_step
        if not self.accelerator.is_main_process:
            return
        kept = [row for row in read_rows(self._metrics_path) if row.get("step", math.inf) <= start] if start else []
        measured = [r for r in kept if "dynamics/measured_dH" in r]
        self._dynamics = ([r["dynamics/predicted_dH"] for r in measured], [r["dynamics/measured_dH"] for r in measured])
        param = [r.get("dynamics/predicted_dH_param") for r in measured]
        self._dynamics_param = [x for x in param if x is not None]
        self._step_started = time.perf_counter()

    def _start_rows(self) -> None:
        """After the first new step: rows and checkpoints after the resumed step (all, on a fresh start) go and the
        config is written. A run that fails before its first step leaves the directory as it found it."""
        self._rows_started = True
        if not self.accelerator.is_main_process:
            return
        run_dir = Path(self.args.output_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            rundir.start_rows(run_dir, self.args.metrics_file, self._start_step)
            rundir.write_config(run_dir, self.saved_config or self.args.to_dict())
        except OSError as err:
            raise self._write_failure(err, self._metrics_path, "the run's first row") from err

    def _write_failure(self, err: OSError, path: Path, what: str) -> EntropyRLError:
        """A full disk (or another OS error) while writing the run directory: one line naming the file."""
        free = shutil.disk_usage(self.args.output_dir).free
        return rundir.RunDirError(
            f"cannot write {err.filename or path} ({what}): {err.strerror or err} ({free / 2**20:.1f} MiB free on "
            "that device); the rows written so far are intact"
        )

    def _write_row(self, step: int, row: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        now = time.perf_counter()
        full = {"step": step, "epoch": self.state.epoch, "wall_time": now - self._step_started}
        self._step_started = now
        full.update(self._rollout_metrics)
        full.update(row)
        try:
            append_row(self._metrics_path, full)
        except OSError as err:  # a full disk: stop with the file named; a torn last line is ignored by readers
            raise self._write_failure(err, self._metrics_path, f"row of step {step}") from err
