"""stat_scope=global: the regularizers' statistics and the diagnostics are the same on 1 and 2 processes (CPU, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("scope_check.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent)}
# accelerate's --cpu flag would start ONE process; --multi_gpu without a GPU gives gloo CPU processes.
TWO_PROCESSES = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
    "0",
]


def run(out: Path, regularizer: str, processes: int) -> list[dict]:
    out.mkdir()
    launcher = TWO_PROCESSES if processes == 2 else [sys.executable]
    done = subprocess.run([*launcher, str(SCRIPT), str(out), regularizer], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", ["clip_cov", "kl_cov", "steer", "clip_b+steer", "clip_v"])
def test_global_scope_identical_on_one_and_two_processes(tmp_path, regularizer):
    (single,) = run(tmp_path / "one", regularizer, 1)
    halves = run(tmp_path / "two", regularizer, 2)
    assert single["edits"], "the regularizer produced no step-level edit"
    for key, rows in single["edits"].items():
        both = torch.tensor(halves[0]["edits"][key] + halves[1]["edits"][key], dtype=torch.float64)
        torch.testing.assert_close(both, torch.tensor(rows, dtype=torch.float64), atol=1e-6, rtol=0, msg=key)
    assert halves[0]["num_items"] == halves[1]["num_items"] == single["num_items"]
    # rank 0 logs the globally reduced metrics: diagnostics and regularizer fractions over the whole batch
    assert halves[0]["metrics"] == pytest.approx(single["metrics"], rel=1e-6, abs=1e-9)
    assert any(key.startswith("reg/") for key in single["metrics"])
