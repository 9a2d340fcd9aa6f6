"""How well the first-order entropy predictions track the measured change as the step size grows.

    python perf/dynamics_step_size.py [--methods grpo,clip_cov] [--learning_rates 1e-4,2e-4] [--steps 100]
                                      [--workers 2] [--markdown docs/results/dynamics-step-size.md]

Trains each toy recipe (recipes/toy/<method>.yaml) on the hard task (`arithmetic_hard`, 16 prompts x 8 completions,
the hard study's batch) at each learning rate, measuring the entropy change every 2nd step, and reports the Pearson r
of each prediction with the measured change, per measured step and over windows of 5
(entropy_rl.param_prediction.agreement).
The parameter-space prediction is exact to first order, so what it misses is the second-order term, which grows with
the step: under Adam the step is about lr per parameter whatever the gradient, so its relative error grows about
linearly with lr, and most where the first-order change is small (regularizers that hold entropy).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from entropy_rl.jsonl import read_rows
from entropy_rl.param_prediction import agreement

REPO = Path(__file__).resolve().parents[1]
WINDOW = 5


def train(out: Path, method: str, lr: str, steps: int) -> list[dict]:
    command = [sys.executable, "-m", "entropy_rl.cli", "train", "--config", str(REPO / f"recipes/toy/{method}.yaml")]
    command += ["--dataset_name", "arithmetic_hard", "--per_device_train_batch_size", "128", "--learning_rate", lr]
    command += ["--max_steps", str(steps), "--dynamics_every", "2", "--save_strategy", "no", "--eval_steps", "1000"]
    command += ["--output_dir", str(out), "--disable_tqdm", "true", "--logging_steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return [row for row in read_rows(out / "metrics.jsonl") if "dynamics/measured_dH" in row]


def row(method: str, lr: str, measured_rows: list[dict]) -> str:
    measured = [r["dynamics/measured_dH"] for r in measured_rows]
    cells = [f"`{method}`", lr, str(len(measured))]
    for key in ("dynamics/predicted_dH", "dynamics/predicted_dH_param"):
        fit = agreement([r[key] for r in measured_rows], measured, WINDOW)
        cells += ["–" if r is None else f"{r:.2f}" for r in (fit["r"], fit["r_window"])]  # None: too few steps
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="grpo,clip_cov")
    parser.add_argument("--learning_rates", default="1e-4,2e-4")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    grid = [(m, lr) for m in args.methods.split(",") for lr in args.learning_rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.workers) as pool:
        runs = pool.map(lambda job: train(Path(tmp) / f"{job[0]}-{job[1]}", *job, args.steps), grid)
        lines = [row(m, lr, rows) for (m, lr), rows in zip(grid, runs, strict=True)]
    header = [
        "| recipe | learning rate | measured steps | logit-space r | logit-space r, windows of 5 "
        "| parameter-space r | parameter-space r, windows of 5 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    text = "\n".join(header + lines) + f"\n\n{args.steps} steps per run, the entropy change measured every 2nd step.\n"
    print(text)
    if args.markdown:
        title = "# The first-order entropy predictions against the step size\n\n"
        source = "Written by `python perf/dynamics_step_size.py` (docs/metrics.md explains the columns).\n\n"
        args.markdown.write_text(title + source + text)


if __name__ == "__main__":
    main()
