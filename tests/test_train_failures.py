"""Failures during a run end it with one line and leave the run directory usable: a finished run is never emptied by
a new one that fails, rewards that score nothing stop the run, a full disk names the file and keeps the rows."""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from entropy_rl import checkpoint_files, rundir
from entropy_rl.cli import main
from entropy_rl.jsonl import read_rows


def train(model_dir, out, *extra: str) -> int:
    argv = ["train", "--model_name_or_path", str(model_dir), "--output_dir", str(out)]
    argv += ["--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "4"]
    argv += ["--dynamics_every", "0", "--disable_tqdm", "true", "--reward_funcs", "helpers.length_parity_reward"]
    return main([*argv, *extra])


def last_error_line(capsys) -> str:
    # transformers' log handler can hold a stream that an earlier test's capture closed; its complaints are no traceback
    # of ours
    err = re.sub(r"--- Logging error ---.*?\nArguments: [^\n]*\n", "", capsys.readouterr().err, flags=re.S)
    lines = [line for line in err.splitlines() if line.startswith("entropy-rl train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.slow
def test_rerun_into_a_finished_run_keeps_every_row(module_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(module_model_dir, out, "--max_steps", "3", "--save_steps", "2") == 0
    rows, config = read_rows(out / "metrics.jsonl"), (out / rundir.CONFIG_FILE).read_text()
    # Without resuming: refused before anything loads.
    assert train(module_model_dir, out, "--max_steps", "3") == 2
    line = last_error_line(capsys)
    assert "holds a run (metrics.jsonl (3 rows), 2 checkpoints (last: checkpoint-3), final/)" in line, line
    # With the overwrite option, a run that fails at its first step (the reward raises) still loses nothing.
    with pytest.raises(RuntimeError, match="reward service down"):
        train(module_model_dir, out, "--overwrite_output_dir", "true", "--reward_funcs", "helpers.raising_reward")
    assert read_rows(out / "metrics.jsonl") == rows and (out / rundir.CONFIG_FILE).read_text() == config
    assert checkpoint_files.checkpoint_problem(out / "checkpoint-3") is None and (out / "final").is_dir()
    # Once the new run has written its first row, the directory is the new run's.
    assert (
        train(module_model_dir, out, "--overwrite_output_dir", "true", "--max_steps", "1", "--save_strategy", "no") == 0
    )
    assert [r["step"] for r in read_rows(out / "metrics.jsonl")] == [1]
    assert rundir.list_checkpoints(out) == [] and json.loads((out / rundir.CONFIG_FILE).read_text())["max_steps"] == 1


@pytest.mark.slow
def test_rewards_that_score_nothing_are_logged_then_stop_the_run(module_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = train(
        module_model_dir,
        out,
        "--max_steps",
        "6",
        "--max_nan_reward_batches",
        "2",
        "--reward_funcs",
        "helpers.nan_reward",
    )
    assert code == 2
    line = last_error_line(capsys)
    assert "reward_funcs returned NaN/inf for every completion in 2 rollout batches in a row (steps 1-2)" in line
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1] and rows[0]["reward/nan_frac"] == 1.0


@pytest.mark.slow
def test_none_rewards_follow_trl_and_never_stop_the_run(module_model_dir, tmp_path, caplog):
    """None is TRL's 'not applicable': TRL warns and the completion gets advantage 0; the run goes on."""
    out = tmp_path / "run"
    argv = ["--max_steps", "3", "--max_nan_reward_batches", "1", "--reward_funcs", "helpers.none_reward"]
    with caplog.at_level("WARNING"):
        assert train(module_model_dir, out, *argv) == 0
    assert "All reward functions returned None" in caplog.text  # TRL's own warning
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["reward/nan_frac"] == 1.0 for r in rows)


@pytest.mark.slow
def test_full_disk_while_writing_metrics_names_the_file_and_keeps_the_rows(
    module_model_dir, tmp_path, capsys, monkeypatch
):
    import entropy_rl.trainer.metrics_file as trainer_module

    real_append = trainer_module.append_row
    calls = []

    def append_until_full(path, row):
        calls.append(row["step"])
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_append(path, row)

    monkeypatch.setattr(trainer_module, "append_row", append_until_full)
    out = tmp_path / "run"
    assert train(module_model_dir, out, "--max_steps", "5", "--save_strategy", "no") == 2
    line = last_error_line(capsys)
    assert f"cannot write {out / 'metrics.jsonl'} (row of step 3): No space left on device" in line
    assert [r["step"] for r in read_rows(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_full_disk_while_writing_a_checkpoint_names_the_file(module_model_dir, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        if str(f).endswith("checkpoint-2/optimizer.pt"):  # torch reports a full disk like this, naming no file
            with open(f, "wb") as handle:
                handle.write(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    out = tmp_path / "run"
    assert train(module_model_dir, out, "--max_steps", "3", "--save_steps", "1") == 2
    line = last_error_line(capsys)
    assert "cannot write checkpoint checkpoint-2: " in line and "checkpoint-2/optimizer.pt: [enforce fail" in line
    assert [s for s, _ in rundir.list_checkpoints(out)] == [1] and checkpoint_files.checkpoint_problem(
        out / "checkpoint-1"
    ) is None
    assert not (
        out / checkpoint_files.STAGING_DIR / "checkpoint-2"
    ).exists()  # the partial one is cleared to free space
    assert [r["step"] for r in read_rows(out / "metrics.jsonl")] == [1, 2]


def _mount_tmpfs(path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_really_full_disk_stops_the_run_with_one_line(module_model_dir, tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "300k"):  # a checkpoint of the tiny model is ~500 kB; the metrics rows fit
        pytest.skip("needs root to mount a small tmpfs")
    try:
        assert train(module_model_dir, disk / "run", "--max_steps", "3", "--save_steps", "2") == 2
        line = last_error_line(capsys)
        assert "cannot write" in line and str(disk / "run") in line and "MiB free" in line
        assert [r["step"] for r in read_rows(disk / "run" / "metrics.jsonl")] == [1, 2]
    finally:
        gc.collect()  # file handles of the failed save
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: detached even while a handle is open


@pytest.mark.slow
def test_a_file_that_passes_the_checks_but_fails_to_load_is_one_line(module_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(module_model_dir, out, "--max_steps", "2", "--save_steps", "1") == 0
    broken = out / "checkpoint-2"
    torch.save({"not": "an optimizer state"}, broken / "optimizer.pt")  # a valid archive of the wrong content
    checkpoint_files.write_manifest(broken, 2, 1)
    assert checkpoint_files.checkpoint_problem(broken) is None
    assert (
        train(module_model_dir, out, "--max_steps", "3", "--save_steps", "1", "--resume_from_checkpoint", str(broken))
        == 2
    )
    line = last_error_line(capsys)
    assert f"cannot resume from {broken}: loading optimizer.pt / scheduler.pt / the regularizer state failed" in line
    assert f"resume from {out / 'checkpoint-1'} instead" in line
