"""`entropy-rl plot`: entropy and performance vs step, and R vs H with the fitted law, for one or more runs.

    entropy-rl plot RUN_DIR [RUN_DIR ...] [--out DIR] [--metric M] [--benchmark B] [--smooth N]

writes entropy_vs_step.png, performance_vs_step.png and law_fit.png (runs overlaid, labelled by regularizer and seed)
into --out (default: the run directory, or the deepest directory holding all of them) and prints their paths. For
each run that measured its entropy change it also writes dynamics.png (one run) or dynamics_<i>.png: covariance,
predicted vs measured entropy change and the attribution by token group.
The figures are entropy_rl.plot's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from entropy_rl.cli.common import run_command
from entropy_rl.cli.fit import add_pair_arguments, pair_options, warn_if_measures_differ
from entropy_rl.cli.options import command_parser
from entropy_rl.fit import LawFit, LawFitError, Pairs, fit_law, load_pairs
from entropy_rl.plot import has_dynamics, make_plots, plot_dynamics
from entropy_rl.rundir import common_dir, load_runs

COMMAND = "plot"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        COMMAND, "Entropy and performance vs step, and R vs H with the fitted law, for one or more runs."
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output directory (default: the run, or the deepest one holding all)"
    )
    add_pair_arguments(parser)
    return parser


def _fit_or_none(pairs: Pairs) -> LawFit | None:
    # A viewer should still draw runs too short or too flat to fit; it says why the curve is missing.
    try:
        return fit_law(pairs.H, pairs.R, source=pairs.source)
    except LawFitError as err:
        print(f"entropy-rl {COMMAND}: no fitted curve: {err}", file=sys.stderr)
        return None


def _body(args: argparse.Namespace) -> int:
    runs = load_runs(args.run_dirs)
    pairs = [load_pairs(run, **pair_options(args)) for run in runs]
    warn_if_measures_differ(pairs, COMMAND)
    out = args.out or common_dir(args.run_dirs)
    paths = make_plots(runs, pairs, [_fit_or_none(p) for p in pairs], out)
    measured = [run for run in runs if has_dynamics(run)]
    for i, run in enumerate(measured):
        paths.append(plot_dynamics(run, Path(out) / ("dynamics.png" if len(runs) == 1 else f"dynamics_{i}.png")))
    print("\n".join(str(path) for path in paths))
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return run_command(COMMAND, lambda: _body(args))
