"""Faults around a real run (docs/reliability.md): a second `entropy-rl train` on the same output folder while the first
trains, and hostile pickles (`rng_state.pth`, `training_args.bin`) planted in one of its checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from entropy_rl import checkpoint_files, rundir, training
from entropy_rl.cli import main

STEPS = 6
RUN_ARGS = ["--max_steps", str(STEPS), "--save_steps", "3", "--logging_steps", "1", "--curve_benchmarks", ""]
RUN_ARGS += ["--disable_tqdm", "true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rows(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


GATE_ENV = "ENTROPY_RL_TEST_GATE"


def gated_reward(completions, trainer_state, **kwargs) -> list[float]:
    """The toy's reward, except that from step 2 on it waits for the file $ENTROPY_RL_TEST_GATE: the first run is
    then surely still training while the second one starts."""
    gate = Path(os.environ[GATE_ENV])
    deadline = time.monotonic() + 600
    while trainer_state.global_step >= 1 and not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return [float(len(c) % 2) for c in completions]


@pytest.fixture(scope="module")
def contested_run(tmp_path_factory):
    """A toy run trained by one process while a second `entropy-rl train --overwrite_output_dir true` starts on the
    same folder after the first row: (run folder, second start's exit code and stderr, first process's result)."""
    root = tmp_path_factory.mktemp("contested")
    run, gate = root / "run", root / "gate"
    env = {**ENV, GATE_ENV: str(gate), "PYTHONPATH": str(Path(__file__).parent)}
    first = subprocess.Popen(
        [sys.executable, "-m", "entropy_rl.cli", "train", "--output_dir", str(run), *RUN_ARGS]
        + ["--reward_funcs", "test_faults.gated_reward"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not rows(run) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before the second could start: " + first.stderr.read()[-2000:]
    second = subprocess.run(
        [sys.executable, "-m", "entropy_rl.cli", "train", "--output_dir", str(run), *RUN_ARGS]
        + ["--overwrite_output_dir", "true"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    gate.touch()
    out, err = first.communicate(timeout=600)
    return run, second, (first.returncode, err)


@pytest.mark.slow
def test_a_second_train_on_the_same_folder_is_refused_and_the_first_finishes_untouched(contested_run):
    run, second, (first_code, first_err) = contested_run
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and "is being trained by another entropy-rl train process" in second.stderr
    assert first_code == 0, first_err[-3000:]
    assert rows(run) == list(range(1, STEPS + 1)), "every step of the first run exactly once"
    assert (run / rundir.FINAL_DIR).is_dir() and (run / "checkpoint-6").is_dir()


class Hostile:
    """Unpickling this runs a shell command: what a planted checkpoint file would do if it were unpickled."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.slow
def test_hostile_pickles_in_a_checkpoint_are_never_unpickled(contested_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(contested_run[0], run)
    checkpoint = run / "checkpoint-3"
    sentinel = tmp_path / "executed"
    for name in ("rng_state.pth", "training_args.bin"):
        torch.save(Hostile(sentinel), checkpoint / name)
    (checkpoint / checkpoint_files.MANIFEST_FILE).unlink()  # and a manifest that lists the planted files' sizes
    checkpoint_files.write_manifest(checkpoint, 3, 1)
    argv = ["--output_dir", str(run), *RUN_ARGS, "--resume_from_checkpoint", str(checkpoint)]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    # The model has loaded by then (transformers reads the RNG state when training starts): one error line, no trace.
    errors = [line for line in err.splitlines() if line.startswith("entropy-rl train: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "checkpoint-3: loading the RNG state (rng_state*.pth) failed (UnpicklingError" in errors[0]
    assert not sentinel.exists(), "a pickle from the checkpoint was executed"
    assert rows(run) == list(range(1, STEPS + 1)), "the refused resume removed no row"


def test_the_lock_is_next_to_the_run_not_in_it(tmp_path, capsys, monkeypatch):
    # In-process: a held lock refuses the start before anything is read or written in the folder.
    from entropy_rl import locks

    monkeypatch.setattr(training, "load_policy", lambda *a, **k: pytest.fail("the model loaded"))
    run = tmp_path / "run"
    run.mkdir()
    with locks.file_lock(tmp_path / training.TRAIN_LOCK.format(name="run")):
        assert main(["train", "--output_dir", str(run), *RUN_ARGS]) == 2
    assert "is being trained by another entropy-rl train process" in capsys.readouterr().err
    assert list(run.iterdir()) == []


def nan_after_two_steps(completions, trainer_state, **kwargs) -> list[float]:
    """A reward service that works for two steps, then returns NaN for everything."""
    if trainer_state.global_step >= 2:
        return [float("nan")] * len(completions)
    return [float(len(c) % 2) for c in completions]


@pytest.mark.slow
def test_rewards_that_turn_nan_mid_run_stop_it_and_keep_the_rows_before(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(run), "--max_steps", "8"]
    argv += ["--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "4"]
    argv += ["--dynamics_every", "0", "--disable_tqdm", "true", "--reward_funcs", "test_faults.nan_after_two_steps"]
    argv += ["--max_nan_reward_batches", "2", "--save_steps", "2", "--curve_benchmarks", ""]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("entropy-rl train: error:")]
    assert len(lines) == 1 and "NaN/inf for every completion in 2 rollout batches in a row (steps 3-4)" in lines[0]
    from entropy_rl.jsonl import read_rows

    kept = read_rows(run / "metrics.jsonl")
    assert [r["step"] for r in kept] == [1, 2, 3] and [r["reward/nan_frac"] for r in kept] == [0.0, 0.0, 1.0]
    assert checkpoint_files.latest_checkpoint(run)[0] == run / "checkpoint-2", (
        "the last good checkpoint stays resumable"
    )


def test_every_rank_waits_for_the_final_save_before_leaving_the_process_group(tmp_path, tiny_model_dir, monkeypatch):
    """Only the main process writes final/; a rank that left the process group while it still wrote aborted the
    launch (exit -6, "terminate called without an active exception"). The trainer's end() waits for every rank
    before it leaves."""
    from accelerate import Accelerator

    from entropy_rl.trainer import EntropyGRPOTrainer

    calls: list[str] = []
    for owner, name in (
        (EntropyGRPOTrainer, "save_model"),
        (EntropyGRPOTrainer, "end"),
        (Accelerator, "wait_for_everyone"),
        (Accelerator, "end_training"),
    ):
        original = getattr(owner, name)

        def recorded(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "run")]
    argv += ["--max_steps", "1", "--per_device_train_batch_size", "8", "--num_generations", "4"]
    argv += [
        "--max_completion_length",
        "4",
        "--save_strategy",
        "no",
        "--curve_benchmarks",
        "",
        "--disable_tqdm",
        "true",
    ]
    assert main(argv) == 0
    last_save = len(calls) - 1 - calls[::-1].index("save_model")
    assert calls[last_save:] == ["save_model", "end", "wait_for_everyone", "end_training"], calls[last_save:]
