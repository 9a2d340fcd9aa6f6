"""`entropy-rl train`: GRPO with entropy diagnostics and regularizers, with the arguments of TRL's GRPO script.

With no arguments it runs the built-in default on CPU: a tiny model warm-started on two-operand addition, then GRPO.

    entropy-rl train                                       # built-in task: the shipped tiny policy, 500 GRPO steps
    entropy-rl train --config recipes/toy/grpo.yaml --learning_rate 5e-5
    entropy-rl train --config toy/clip_cov                 # a packaged recipe by name, from any directory
    entropy-rl train --list_recipes
    entropy-rl train --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/DeepMath-103K \
        --reward_funcs accuracy_reward --use_peft --regularizer clip_cov       # TRL's flags, plus ours
    entropy-rl train --config RECIPE.yaml --accelerate_config zero2 --num_processes 8   # hands over to accelerate
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m entropy_rl.cli train --config RECIPE.yaml

A YAML recipe sets any field of TrainScriptArguments, EntropyGRPOConfig or TRL's ModelConfig
(entropy_rl/train_args.py); command-line flags override it. Bad input ends with `entropy-rl train: error: ...` and exit
code 2, before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entropy_rl.cli.common import HeldWarnings, run_command
from entropy_rl.cli.launch import maybe_relaunch

COMMAND = "train"
LIST_RECIPES_FLAG = "--list_recipes"


def main(argv: list[str]) -> int:
    return run_command(COMMAND, lambda: _train(argv))


def _train(argv: list[str]) -> int:
    if LIST_RECIPES_FLAG in argv:
        from entropy_rl.resources import list_recipes, recipes_dir

        print(f"recipes in {recipes_dir()} (pass one as --config NAME):")
        print("\n".join(f"  {name}" for name in list_recipes()))
        return 0
    code = maybe_relaunch(argv)  # --accelerate_config NAME|PATH [--num_processes N] hands over to accelerate
    if code is not None:
        return code
    from entropy_rl.train_args import parse_train_args
    from entropy_rl.training import train_run

    with HeldWarnings() as held:  # shown once the input has passed the checks, before the model loads
        script_args, config, model_args = parse_train_args(argv)
        from accelerate import PartialState

        main_process = PartialState().is_main_process
        if main_process:
            print_defaults(argv)
            print_plan(script_args, config, model_args)
        run_dir = train_run(script_args, config, model_args, progress=progress_callback(config), checked=held.release)
    if main_process:
        report(run_dir)
    return 0


def print_plan(script_args: Any, config: Any, model_args: Any) -> None:
    """Before anything loads: what the run will do and where it writes."""
    from entropy_rl.cli.progress import plan_lines

    print("\n".join(plan_lines(script_args, config, model_args)), flush=True)


def progress_callback(config: Any) -> Any:
    """The command's one progress bar (None with --disable_tqdm); transformers' per-save bars are switched off."""
    if config.disable_tqdm:
        return None
    from transformers.utils import logging

    from entropy_rl.cli.progress import TrainProgress

    logging.disable_progress_bar()  # "Writing model shards" at every checkpoint would break the one bar
    return TrainProgress()


def print_defaults(argv: list[str]) -> None:
    """Say at the start which defaults the run's settings come from (TRL's, a recipe's or the built-in task's)."""
    from entropy_rl.train_args import defaults_used

    print(f"entropy-rl train: defaults: {defaults_used(argv)}", flush=True)


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
    from entropy_rl.plot import has_dynamics, plot_dynamics, plot_run
    from entropy_rl.rundir import load_run

    try:
        print(f"plot:    {plot_run(run_dir)}")
        run = load_run(run_dir)
        if has_dynamics(run):
            print(f"         {plot_dynamics(run)}")
    except EntropyRLError as err:  # e.g. diagnostics=False: no entropy to draw; the run itself succeeded
        print(f"plot:    none ({err})")
    window = max(1, len(rows) // 10)
    for label, part in (("first", rows[:window]), ("last", rows[-window:])):
        print(f"{label} {window} steps: " + summary_line(part))
    for line in agreement_lines(rows):
        print(line)


# Measured steps per window of the windowed agreement (cumulative change over this many measured steps).
AGREEMENT_WINDOW = 5


def agreement_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Pearson r of each entropy-change prediction with the measured change, per measured step and per window."""
    from entropy_rl.param_prediction import agreement

    lines = []
    for key, name in (("dynamics/predicted_dH", "logit-space"), ("dynamics/predicted_dH_param", "parameter-space")):
        pairs = [
            (r[key], r["dynamics/measured_dH"]) for r in rows if r.get(key) is not None and "dynamics/measured_dH" in r
        ]
        if not pairs:
            continue
        out = agreement([p for p, _ in pairs], [m for _, m in pairs], AGREEMENT_WINDOW)
        per_step, per_window = (f"{out[k]:.2f}" if out[k] is not None else "n/a" for k in ("r", "r_window"))
        lines.append(
            f"{name} prediction vs measured entropy change: r = {per_step} over {len(pairs)} measured steps, "
            f"r = {per_window} over windows of {AGREEMENT_WINDOW} (cumulative change)"
        )
    return lines


def summary_line(rows: list[dict[str, Any]]) -> str:
    def mean(key: str) -> float:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    return f"entropy {mean('entropy/token_mean'):.3f}  reward {mean('reward'):.3f}  cov {mean('cov/logp_adv'):.3f}"
