"""A toy recipe trains on 2 CPU processes (`entropy-rl train --accelerate_config cpu_2proc`), saves one atomic
checkpoint with both ranks' state and resumes from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_rl import checkpoint_files
from entropy_rl.jsonl import read_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_toy_recipe_runs_on_two_cpu_processes_and_resumes(tmp_path, make_model, tokenizer):
    model_dir = tmp_path / "model"
    make_model().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "entropy_rl.cli",
        "train",
        "--accelerate_config",
        "cpu_2proc",
        "--num_processes",
        "2",
        "--config",
        "recipes/toy/clip_b.yaml",
        "--model_name_or_path",
        str(model_dir),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "16",
        "--num_generations",
        "4",
        "--save_steps",
        "2",
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
    ]
    done = subprocess.run(argv, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # written once, by rank 0
    # Tokens are counted over both ranks: 2 processes x 16 completions of at most 8 tokens.
    assert all(16 < r["tokens"] <= 2 * 16 * 8 for r in rows)
    assert "reg/clip_b/removed_frac" in rows[0]
    # The recipe's in-training curve: evaluated at the end on both processes, one row written by rank 0.
    curve = read_rows(out / "curve.jsonl")
    assert [(r["step"], r["benchmark"], r["num_problems"]) for r in curve] == [(3, "arithmetic", 256)]
    # One atomic checkpoint holding both ranks' RNG and regularizer state, listed in its manifest.
    checkpoint = out / "checkpoint-2"
    manifest = json.loads((checkpoint / checkpoint_files.MANIFEST_FILE).read_text())
    assert manifest["world_size"] == 2 and checkpoint_files.checkpoint_problem(checkpoint) is None
    rank_files = {"rng_state_0.pth", "rng_state_1.pth", "entropy_rl_state_rank0.pt", "entropy_rl_state_rank1.pt"}
    assert rank_files <= set(manifest["files"]) and not (out / checkpoint_files.STAGING_DIR).exists()
    resume = [*argv, "--max_steps", "4", "--resume_from_checkpoint", "latest"]  # the later --max_steps wins
    done = subprocess.run(resume, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert [r["step"] for r in read_rows(out / "metrics.jsonl")] == [1, 2, 3, 4]
