"""Every script under perf/ runs end to end at a tiny size, so that none breaks unnoticed between measurements."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_TRAINER = ["--vocab", "64", "--hidden", "32", "--layers", "1", "--batch", "8", "--length", "4"]

# script -> arguments of a tiny run; {tmp} is a fresh folder. Output files named here must exist afterwards.
SMOKE: dict[str, list[str]] = {
    "overhead.py": [*TINY_TRAINER, "--steps", "2", "--warmup", "1", "--blocks", "2", "--configs",
                    "trl_null,diagnostics,clip_cov", "--workdir", "{tmp}/work", "--output", "{tmp}/out.json"],
    "added_work.py": ["--curves", "--vocab", "200,300", "--hidden", "16", "--length", "4,8", "--layers", "1",
                      "--batch", "4", "--output", "{tmp}/curves.json", "--markdown", "{tmp}/out.md"],
    "gpu_check.py": ["--dry-run", "--output-dir", "{tmp}/check"],
    "host_syncs.py": ["--methods", "none,clip_v", "--steps", "1", "--device", "cpu", "--output", "{tmp}/out.json"],
    "fit_small_n.py": ["--trials", "5", "--sizes", "3,5"],
    "dynamics_overhead.py": ["--steps", "3", "--every", "2", "--markdown", "{tmp}/out.md"],
    "dynamics_step_size.py": ["--methods", "grpo", "--learning_rates", "1e-4", "--steps", "6", "--workers", "1",
                              "--markdown", "{tmp}/out.md"],
    # No tiny size: these run the whole default run three times, time README's commands from a clean clone in a fresh
    # virtual environment, or train the default run for its attribution. Their imports and arguments are checked.
    "default_run.py": ["--help"],
    "readme_commands.py": ["--help"],
    "momentum_attribution.py": ["--help"],
    "two_process_exit.py": ["--launches", "1", "--out", "{tmp}/exit.json"],
    "sigkill_campaign.py": ["--kills", "1", "--in_save", "0", "--max_steps", "12", "--save_steps", "2",
                            "--work", "{tmp}/work", "--out", "{tmp}/out.json"],
}  # fmt: skip


def test_every_perf_script_has_a_smoke_run():
    assert sorted(SMOKE) == sorted(p.name for p in (REPO / "perf").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_perf_script_runs_at_a_tiny_size(script, tmp_path):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in SMOKE[script]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "perf")}
    done = subprocess.run(
        [sys.executable, str(REPO / "perf" / script), *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for arg in args:
        if arg.startswith(str(tmp_path)) and Path(arg).suffix in (".json", ".md", ".png"):
            assert Path(arg).stat().st_size > 0, arg
