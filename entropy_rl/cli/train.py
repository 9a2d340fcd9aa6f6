"""`entropy-rl train`: GRPO with entropy diagnostics and regularizers, configured like a TRL script.

With no arguments it runs the built-in default on CPU: a tiny model warm-started on two-operand addition, then GRPO.

    entropy-rl train                                       # built-in task, ~1.5 min on 2 CPU cores
    entropy-rl train --config recipes/toy/grpo.yaml --learning_rate 5e-5
    entropy-rl train --config RECIPE.yaml --accelerate_config zero2 --num_processes 8   # hands over to accelerate
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m entropy_rl.cli train --config RECIPE.yaml

A YAML recipe sets any field of TrainScriptArguments or EntropyGRPOConfig (entropy_rl/training.py); command-line
flags override it. Bad input ends with `entropy-rl train: error: ...` and exit code 2, before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entropy_rl.cli.common import run_command
from entropy_rl.cli.launch import maybe_relaunch

COMMAND = "train"


def main(argv: list[str]) -> int:
    return run_command(COMMAND, lambda: _train(argv))


def _train(argv: list[str]) -> int:
    code = maybe_relaunch(argv)  # --accelerate_config NAME|PATH [--num_processes N] hands over to accelerate
    if code is not None:
        return code
    from entropy_rl.training import parse_train_args, train_run

    script_args, config = parse_train_args(argv)
    run_dir = train_run(script_args, config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        report(run_dir)
    return 0


def report(run_dir: Path) -> None:
    """Print where the results went and how entropy and reward moved."""
    from entropy_rl.errors import EntropyRLError
    from entropy_rl.jsonl import read_rows
    from entropy_rl.rundir import metrics_path

    path = metrics_path(run_dir)  # the run's own metrics_file, as saved in its config
    rows = read_rows(path)
    print(f"\nmetrics: {path} ({len(rows)} steps)")
    if not rows:
        return
    from entropy_rl.plot import plot_run

    try:
        print(f"plot:    {plot_run(run_dir)}")
    except EntropyRLError as err:  # e.g. diagnostics=False: no entropy to draw; the run itself succeeded
        print(f"plot:    none ({err})")
    window = max(1, len(rows) // 10)
    for label, part in (("first", rows[:window]), ("last", rows[-window:])):
        print(f"{label} {window} steps: " + summary_line(part))


def summary_line(rows: list[dict[str, Any]]) -> str:
    def mean(key: str) -> float:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    return f"entropy {mean('entropy/token_mean'):.3f}  reward {mean('reward'):.3f}  cov {mean('cov/logp_adv'):.3f}"
