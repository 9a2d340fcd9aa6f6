"""A run killed hard (SIGKILL) between checkpoints and resumed loses no metrics row, duplicates none, and continues
exactly like an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entropy_rl.jsonl import read_rows

TESTS = Path(__file__).parent


def train_command(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "entropy_rl.cli",
        "train",
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--reward_funcs",
        "helpers.length_parity_reward",
        "--max_steps",
        "24",
        "--save_steps",
        "6",
        "--per_device_train_batch_size",
        "16",
        "--num_generations",
        "4",
        "--max_completion_length",
        "6",
        "--learning_rate",
        "1e-3",
        "--dynamics_every",
        "3",
        "--regularizer",
        "clip_cov",
        "--clip_cov_ratio",
        "0.1",
        "--clip_cov_lb",
        "-5",
        "--disable_tqdm",
        "true",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_and_resume_continue_metrics_exactly(tmp_path, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(train_command(tiny_model_dir, reference), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_command(tiny_model_dir, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Kill once a checkpoint exists and a row after it was written, before the run ends.
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        checkpoints = sorted(int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*"))
        rows = read_rows(killed / "metrics.jsonl")
        if checkpoints and rows and rows[-1]["step"] > checkpoints[-1] and rows[-1]["step"] < 24:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed between checkpoints"
    last = max(int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*"))
    assert read_rows(killed / "metrics.jsonl")[-1]["step"] > last  # rows past the checkpoint exist

    resumed = subprocess.run(
        train_command(tiny_model_dir, killed, "--resume_from_checkpoint", str(killed / f"checkpoint-{last}")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_rows(killed / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 25))  # no gap, no duplicate
    expected = read_rows(reference / "metrics.jsonl")
    skip = {"wall_time"}
    for got, want in zip(rows, expected, strict=True):
        assert {k: v for k, v in got.items() if k not in skip} == pytest.approx(
            {k: v for k, v in want.items() if k not in skip}, rel=1e-5, abs=1e-7
        ), got["step"]
