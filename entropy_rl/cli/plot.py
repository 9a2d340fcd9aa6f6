"""`entropy-rl plot`: entropy and performance vs step, and R vs H with the fitted law, for one or more runs.

    entropy-rl plot RUN_DIR [RUN_DIR ...] [--out DIR] [--metric M] [--benchmark B] [--smooth N]
    entropy-rl plot --config PLOT.yaml       # any option as a YAML key (runs: [RUN_DIR, ...]); flags override it

writes entropy_vs_step.png, performance_vs_step.png and law_fit.png (runs overlaid, labelled by regularizer and seed)
into --out (default: the run directory, or the deepest directory holding all of them) and prints their paths. For
each run that measured its entropy change it also writes dynamics.png (one run) or dynamics_<i>.png: covariance,
predicted vs measured entropy change and the attribution by token group.
The figures are entropy_rl.plot's.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from entropy_rl.cli.common import run_command
from entropy_rl.cli.fit import PairArguments, RunArguments, warn_if_measures_differ
from entropy_rl.cli.options import CommandParser
from entropy_rl.fit import LawFit, LawFitError, Pairs, fit_law, load_pairs
from entropy_rl.plot import has_dynamics, make_plots, plot_dynamics
from entropy_rl.rundir import common_dir, load_runs

COMMAND = "plot"


@dataclass
class PlotArguments:
    """Where `entropy-rl plot` writes its figures."""

    out: Path | None = field(
        default=None,
        metadata={"help": "output directory (default: the run, or the deepest one holding all)", "metavar": "DIR"},
    )


def build_parser() -> CommandParser:
    return CommandParser(
        COMMAND,
        "Entropy and performance vs step, and R vs H with the fitted law, for one or more runs.",
        (RunArguments, PlotArguments, PairArguments),
        positional=("runs", "RUN_DIR"),
    )


def _fit_or_none(pairs: Pairs) -> LawFit | None:
    # A viewer should still draw runs too short or too flat to fit; it says why the curve is missing.
    try:
        return fit_law(pairs.H, pairs.R, source=pairs.source)
    except LawFitError as err:
        print(f"entropy-rl {COMMAND}: no fitted curve: {err}", file=sys.stderr)
        return None


def _body(argv: list[str]) -> int:
    run_dirs, args, pair = build_parser().parse(argv)
    runs = load_runs(run_dirs.runs)
    pairs = [load_pairs(run, **asdict(pair)) for run in runs]
    warn_if_measures_differ(pairs, COMMAND)
    out = args.out or common_dir(run_dirs.runs)
    paths = make_plots(runs, pairs, [_fit_or_none(p) for p in pairs], out)
    measured = [run for run in runs if has_dynamics(run)]
    for i, run in enumerate(measured):
        paths.append(plot_dynamics(run, Path(out) / ("dynamics.png" if len(runs) == 1 else f"dynamics_{i}.png")))
    print("\n".join(str(path) for path in paths))
    return 0


def main(argv: list[str]) -> int:
    return run_command(COMMAND, lambda: _body(argv))
