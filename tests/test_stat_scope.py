"""stat_scope=global: the regularizers' statistics and the diagnostics are the same on 1 and 2 processes (CPU, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, registered, two_cpu_processes

SCRIPT = SCRIPTS / "scope_check.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent)}
TWO_PROCESSES = two_cpu_processes()
# Every method that edits the loss (the native ones are TRL options); Clip_B runs paired with steer.
EDITING = [*(name for name in registered("loss", "filter") if name != "clip_b"), "clip_b+steer"]


def run(out: Path, regularizer: str, processes: int, where: str = "rollout") -> list[dict]:
    out.mkdir()
    launcher = TWO_PROCESSES if processes == 2 else [sys.executable]
    command = [*launcher, str(SCRIPT), str(out), regularizer, where]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", EDITING)
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


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", ["clip_b", "clip_v+steer"])
def test_step_edits_taken_in_the_loss_forward_match_the_rollout_pass(tmp_path, regularizer):
    # One micro-batch per rank, on-policy: the loss forward replaces the extra rollout forward, with the same result.
    (rollout,) = run(tmp_path / "rollout", regularizer, 1)
    (single,) = run(tmp_path / "one", regularizer, 1, where="loss")
    halves = run(tmp_path / "two", regularizer, 2, where="loss")
    # TRL's own `entropy` metric averages over its loss mask, which the rollout path shrinks and the loss path keeps.
    ours = {key: value for key, value in single["metrics"].items() if key != "entropy"}
    assert ours == pytest.approx({k: v for k, v in rollout["metrics"].items() if k != "entropy"}, rel=1e-6, abs=1e-9)
    assert halves[0]["metrics"] == pytest.approx(single["metrics"], rel=1e-6, abs=1e-9)
