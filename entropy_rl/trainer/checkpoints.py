"""Checkpoints of EntropyGRPOTrainer: what a start may resume from or write over (`check_start`), atomic saves
(staged, listed in a manifest, renamed into place, then rotated) and loads that name the file that failed."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

try:  # transformers 5: a function; 4.x has only the Trainer method (the same rule), used below when this is None
    from transformers.trainer_utils import rotate_checkpoints
except ImportError:
    rotate_checkpoints = None

from .. import checkpoint_files, rundir
from ..config import EntropyGRPOConfig
from ..errors import EntropyRLError

logger = logging.getLogger(__name__)
# Spellings of "resume from the newest complete checkpoint in output_dir" (TRL's `True` arrives as a string from a CLI).
LATEST = ("latest", "True", "true")


def check_start(args: EntropyGRPOConfig, resume: str | bool | None) -> str | None:
    """The verified checkpoint to resume from, or None for a fresh start into a directory that holds no run.

    `resume`: a checkpoint folder (verified: CheckpointError names a missing or unreadable file and the previous
    complete checkpoint), "latest" or True (the newest complete checkpoint in output_dir; the ones skipped are
    reported), or None. A start that does not continue output_dir's own run is refused when output_dir holds a run,
    unless args.overwrite_output_dir.
    """
    run_dir = Path(args.output_dir)
    if resume is True or resume in LATEST:
        path, skipped = checkpoint_files.latest_checkpoint(run_dir)
        if args.process_index == 0:
            for line in skipped:
                logger.warning("resume_from_checkpoint=%s: skipped %s", resume, line)
        if path is None:
            detail = f" (skipped: {'; '.join(skipped)})" if skipped else ""
            raise checkpoint_files.CheckpointError(
                f"invalid config: resume_from_checkpoint={resume!r}: no complete checkpoint in {run_dir}{detail}; "
                "allowed: a directory holding a complete checkpoint-<step>/, or start without it"
            )
        _check_steps_left(str(path), args.max_steps)
        return str(path)
    checkpoint = str(checkpoint_files.verify_checkpoint(resume)) if resume else None
    if checkpoint is not None:
        _check_steps_left(checkpoint, args.max_steps)
    own = checkpoint is not None and Path(checkpoint).resolve().parent == run_dir.resolve()
    contents = [] if own or args.overwrite_output_dir else rundir.run_contents(run_dir, args.metrics_file)
    if contents:
        raise rundir.RunDirError(
            f"invalid config: output_dir={str(run_dir)!r} holds a run ({', '.join(contents)}) that this run would "
            "overwrite; allowed: resume it (--resume_from_checkpoint latest), choose another --output_dir, or pass "
            "--overwrite_output_dir true (its files go only when the new run writes its first row)"
        )
    return checkpoint


def _check_steps_left(checkpoint: str, max_steps: int) -> None:
    """Resuming a checkpoint at max_steps would train one step past it (transformers checks the limit after a step)."""
    step = json.loads((Path(checkpoint) / checkpoint_files.TRAINER_STATE_FILE).read_text()).get("global_step", 0)
    if 0 < max_steps <= step:
        raise checkpoint_files.CheckpointError(
            f"invalid config: resume_from_checkpoint={checkpoint!r} is at step {step} and max_steps={max_steps}: "
            "the run is finished; allowed: a larger --max_steps to train on"
        )


@contextmanager
def _naming_checkpoint_file(checkpoint: str | None, what: str) -> Iterator[None]:
    """A checkpoint file that fails to load (verification cannot read every byte) becomes one line naming it."""
    try:
        yield
    except Exception as err:
        if checkpoint is None or isinstance(err, EntropyRLError | torch.OutOfMemoryError):
            raise
        previous = checkpoint_files.previous_complete_checkpoint(checkpoint)
        offer = f"resume from {previous} instead" if previous else "there is no earlier complete checkpoint"
        detail = str(err).splitlines()[0] if str(err) else "no detail"
        raise checkpoint_files.CheckpointError(
            f"cannot resume from {checkpoint}: loading {what} failed ({type(err).__name__}: {detail}); {offer}"
        ) from err


class CheckpointsMixin:
    """EntropyGRPOTrainer's overrides of the Trainer's save, load and train entry points (each calls `super()`)."""

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """TRL's train, after checking what it would resume from or write over (`check_start`)."""
        resume_from_checkpoint = check_start(self.args, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, transformers and TRL write it into RUN_DIR/.staging/checkpoint-<step>/.
        run_dir = super()._get_output_dir(trial)
        return str(checkpoint_files.staging_dir(run_dir)) if self._staging else run_dir

    def _save_checkpoint(self, model, trial):
        """Write the whole checkpoint (model, optimizer, scheduler, RNG, trainer state, TRL's and our state) into
        RUN_DIR/.staging/, list it in a manifest, then rename it into place and only then rotate old ones: a
        checkpoint-<step>/ folder is complete by construction, and the last complete one survives a failed save."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = checkpoint_files.staging_dir(run_dir) / name, run_dir / name
        if self.args.should_save:
            checkpoint_files.clear_staging(run_dir)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
            self._save_own_state(staged)
            self.accelerator.wait_for_everyone()  # every rank's files are there
            if self.args.should_save:
                self._repoint_best_checkpoint(staged, final)
                checkpoint_files.write_manifest(staged, self.state.global_step, self.accelerator.num_processes)
                checkpoint_files.publish_checkpoint(staged, final)
        except Exception as err:
            failure = self._save_failure(err, staged, final)
            if failure is err:
                raise
            raise failure from err  # a full disk or a dead file system: one line naming the file
        finally:
            self._staging = False
        if self.args.should_save:
            limit, best = self.args.save_total_limit, self.state.best_model_checkpoint
            if rotate_checkpoints is None:
                self._rotate_checkpoints(use_mtime=True, output_dir=str(run_dir))
            else:
                rotate_checkpoints(
                    output_dir=str(run_dir), save_total_limit=limit, best_model_checkpoint=best, use_mtime=True
                )
        self.accelerator.wait_for_everyone()

    def _save_own_state(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"generator": self.loss_edits.generator.get_state(), "prompts_drawn": self._sampler.prompts_drawn}
        torch.save(state, folder / checkpoint_files.STATE_FILE.format(rank=self.accelerator.process_index))

    def _repoint_best_checkpoint(self, staged: Path, final: Path) -> None:
        """transformers recorded the best checkpoint's staging path when it is this one: record where it will be."""
        if self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint) == staged:
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(staged / checkpoint_files.TRAINER_STATE_FILE))

    @staticmethod
    def _save_failure(err: Exception, staged: Path, final: Path) -> Exception:
        """Write errors become a CheckpointError naming the file (torch reports a full disk as a RuntimeError
        without a path: the newest file in the staging folder is the one being written); others pass unchanged."""
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        write_error = isinstance(err, OSError) or any(
            mark in text for mark in ("inline_container", "PytorchStreamWriter", "I/O error", "No space left")
        )
        if not write_error:
            return err
        files = [p for p in staged.rglob("*") if p.is_file()] if staged.is_dir() else []
        path = getattr(err, "filename", None) or (max(files, key=lambda p: p.stat().st_mtime) if files else staged)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else text
        free = shutil.disk_usage(staged.parent if staged.parent.exists() else final.parent).free
        if free < 2**20:
            reason += "; the device is full"
        shutil.rmtree(staged, ignore_errors=True)  # a partial checkpoint only takes space
        return checkpoint_files.CheckpointError(
            f"cannot write checkpoint {final.name}: {path}: {reason} ({free / 2**20:.1f} MiB free on that device); "
            f"the complete checkpoints and metrics rows written so far are intact (resume with "
            "--resume_from_checkpoint latest)"
        )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with _naming_checkpoint_file(resume_from_checkpoint, "the model weights"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_rng_state(self, checkpoint):
        with _naming_checkpoint_file(checkpoint, "the RNG state (rng_state*.pth)"):
            super()._load_rng_state(checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with _naming_checkpoint_file(checkpoint, "optimizer.pt / scheduler.pt / the regularizer state"):
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                path = Path(checkpoint) / checkpoint_files.STATE_FILE.format(rank=self.accelerator.process_index)
                state = torch.load(path, weights_only=True)  # tensors only: never unpickle code from a checkpoint
                self.loss_edits.generator.set_state(state["generator"])
                # dynamic sampling's place in the prompt order
                self._sampler.prompts_drawn = state.get("prompts_drawn", 0)
