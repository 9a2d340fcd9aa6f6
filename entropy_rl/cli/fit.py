"""`entropy-rl fit`: fit the entropy-performance law R = b - a * exp(H) to runs, print the tables, write fit.json.

    entropy-rl fit RUN_DIR [RUN_DIR ...] [--metric M] [--benchmark B] [--fit_fraction F] [--joint] [--plot]
    entropy-rl fit --config FIT.yaml         # any option as a YAML key (runs: [RUN_DIR, ...]); flags override it

The fitting is entropy_rl.fit; runs are read through entropy_rl.rundir; this module reads the options (its
dataclasses, parsed as entropy_rl/cli/options.py says), prints the report and writes the JSON report (docs/fit.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from entropy_rl.cli.common import run_command
from entropy_rl.cli.options import CommandParser
from entropy_rl.fit import (
    LAW,
    MIN_RELIABLE_POINTS,
    JointFit,
    LawFit,
    LawFitError,
    Pairs,
    Prediction,
    fit_early,
    fit_joint,
    fit_law,
    load_pairs,
)
from entropy_rl.rundir import DEFAULT_ENTROPY_KEY, Run, common_dir, load_runs

COMMAND = "fit"


# ------------------------------------------------------------------------------------------------ options
@dataclass
class RunArguments:
    """The runs to read; shared by `entropy-rl fit` and `entropy-rl plot` (also as bare RUN_DIR arguments)."""

    runs: list[str] = field(default_factory=list, metadata={"help": "run directories (or give them as RUN_DIR ...)"})


@dataclass
class PairArguments:
    """Options choosing the (H, R) points; shared by `entropy-rl fit` and `entropy-rl plot`. Their field names are
    load_pairs' keyword arguments."""

    metric: str | None = field(
        default=None,
        metadata={
            "help": "R: avg@k, pass@N or pass@k (from curve.jsonl) or a metrics.jsonl key such as reward "
            "(default: avg@k when the run has curve.jsonl, else reward)"
        },
    )
    benchmark: str | None = field(
        default=None,
        metadata={"help": "curve.jsonl benchmark for R (default: the only one, else the mean over all benchmarks)"},
    )
    entropy_key: str = field(
        default=DEFAULT_ENTROPY_KEY, metadata={"help": f"metrics.jsonl key for H (default {DEFAULT_ENTROPY_KEY})"}
    )
    smooth: int = field(
        default=1,
        metadata={"help": "trailing moving average of H and R over N points (default 1: none)", "metavar": "N"},
    )
    entropy_window: int = field(
        default=1,
        metadata={
            "help": "H at a step = trailing mean of the training entropy over N steps (default 1: that step's batch)",
            "metavar": "N",
        },
    )


def warn_if_measures_differ(pairs: Sequence[Pairs], command: str) -> None:
    """Say on stderr when runs measure R differently (a training reward next to a held-out avg@k): the figures then
    draw each measure on its own axes, and their numbers must not be compared with each other."""
    measures = {p.label: p.metric if p.benchmark is None else f"{p.benchmark} {p.metric}" for p in pairs}
    if len(set(measures.values())) > 1:
        listed = ", ".join(f"{label}: {measure}" for label, measure in measures.items())
        print(
            f"entropy-rl {command}: warning: the runs' R are different measures ({listed}); the figures draw each on "
            "its own axes (choose one with --metric / --benchmark to compare them)",
            file=sys.stderr,
        )


@dataclass
class FitArguments:
    """What `entropy-rl fit` does besides fitting each run."""

    fit_fraction: float | None = field(
        default=None, metadata={"help": "also fit the first F of the points and predict the rest", "metavar": "F"}
    )
    joint: bool = field(default=False, metadata={"help": "also fit one (a, b) shared by all runs"})
    output: Path | None = field(
        default=None,
        metadata={
            "help": "JSON report (default: RUN_DIR/fit.json for one run, else fit.json in the deepest directory "
            "holding all)",
            "metavar": "PATH",
        },
    )
    plot: bool = field(default=False, metadata={"help": "also write the figures next to the JSON report"})

    def __post_init__(self) -> None:
        if self.fit_fraction is not None and not 0 < self.fit_fraction < 1:
            raise ValueError(f"invalid fit_fraction={self.fit_fraction}; allowed: a number strictly between 0 and 1")


def build_parser() -> CommandParser:
    return CommandParser(
        COMMAND,
        f"Fit the entropy-performance law {LAW} (Cui et al. 2025) to runs. See docs/fit.md.",
        (RunArguments, PairArguments, FitArguments),
        positional=("runs", "RUN_DIR"),
    )


# ------------------------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class Fits:
    """Everything one `entropy-rl fit` computes: per run its points, fit and early prediction; the joint fit."""

    runs: list[Run]
    pairs: list[Pairs]
    fits: list[LawFit]
    predictions: list[Prediction | None]
    joint: JointFit | None


def _joint(pairs: Sequence[Pairs], joint: bool) -> JointFit | None:
    if not joint:
        return None
    kinds = {(p.metric, p.benchmark) for p in pairs}
    if len(kinds) > 1:
        raise LawFitError(f"--joint needs the same R in every run, got (metric, benchmark) {sorted(kinds)}")
    points = [(p.H, p.R) for p in pairs]
    return fit_joint(points, source="joint fit of all runs")


def compute(run_dirs: Sequence[str], pair: PairArguments, args: FitArguments) -> Fits:
    runs = load_runs(run_dirs)
    pairs = [load_pairs(run, **asdict(pair)) for run in runs]
    fits = [fit_law(p.H, p.R, source=p.source) for p in pairs]
    predictions = [
        fit_early(p.H, p.R, args.fit_fraction, source=p.source) if args.fit_fraction else None for p in pairs
    ]
    return Fits(runs, pairs, fits, predictions, _joint(pairs, args.joint))


# ------------------------------------------------------------------------------------------------ report text
def _fmt_ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _fit_lines(fit: LawFit) -> list[str]:
    lines = [f"    {'':9} {'value':>10}  95% CI", f"    {'a':9} {fit.a:>10.4g}  {_fmt_ci(fit.a_ci)}"]
    lines.append(f"    {'b':9} {fit.b:>10.4g}  {_fmt_ci(fit.b_ci)}")
    lines.append(f"    {'ceiling':9} {fit.ceiling:>10.4g}  {_fmt_ci(fit.ceiling_ci)}")
    lines.append(
        f"    R2 {fit.r2:.4f}   RMSE {fit.rmse:.4g}   n {fit.n}   H in [{fit.h_min:.4g}, {fit.h_max:.4g}] nats"
    )
    if fit.a <= 0:
        lines.append("    note: a <= 0, performance does not rise as entropy falls; the law's premise fails here")
    if fit.few_points:
        lines.append(f"    warning: {few_points_text(fit)}")
    return lines


def few_points_text(fit: LawFit) -> str:
    return (
        f"only {fit.n} points (fewer than {MIN_RELIABLE_POINTS}): R2 and the 95% intervals are unreliable "
        "(docs/fit.md, 'How many points')"
    )


def _run_lines(pairs: Pairs, fit: LawFit, prediction: Prediction | None) -> list[str]:
    lines = [pairs.label, f"  {pairs.source}", *_fit_lines(fit)]
    if prediction is not None:
        lines.append(
            f"  fit on the first {prediction.n_fit} points ({prediction.fraction:g}), predicting the other "
            f"{prediction.n_test}: RMSE {prediction.rmse:.4g}, max |error| {prediction.max_abs_error:.4g}"
        )
        lines.extend(_fit_lines(prediction.fit))
    return lines


def _joint_lines(joint: JointFit, labels: Sequence[str]) -> list[str]:
    lines = ["joint fit (one a, b for all runs)", *_fit_lines(joint.fit)]
    lines.append(
        f"    separate fits: RMSE {joint.separate_rmse:.4g}, R2 {joint.separate_r2:.4f}; "
        f"joint/separate RMSE {joint.rmse_ratio:.2f}x; "
        f"F({joint.df[0]}, {joint.df[1]}) = {joint.f_stat:.4g}, p = {joint.p_value:.3g}"
    )
    lines.append(f"    {'run':30} {'own RMSE':>10} {'joint RMSE':>11}")
    for label, own, shared in zip(labels, joint.own_rmse, joint.joint_rmse, strict=True):
        lines.append(f"    {label:30} {own:>10.4g} {shared:>11.4g}")
    return lines


def report_text(result: Fits) -> str:
    lines = [f"entropy-performance law {LAW}", ""]
    for p, fit, prediction in zip(result.pairs, result.fits, result.predictions, strict=True):
        lines += [*_run_lines(p, fit, prediction), ""]
    if result.joint is not None:
        lines += [*_joint_lines(result.joint, [p.label for p in result.pairs]), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ JSON report
def _run_entry(run: Run, p: Pairs, fit: LawFit, prediction: Prediction | None) -> dict[str, Any]:
    return {
        "run_dir": str(run.path),
        "label": p.label,
        "source": p.source,
        "metric": p.metric,
        "benchmark": p.benchmark,
        "steps": [int(p.steps[0]), int(p.steps[-1])],
        "dropped": p.dropped,
        "unmatched": p.unmatched,
        "fit": fit.to_dict(),
        "prediction": None if prediction is None else prediction.to_dict(),
    }


def report_json(result: Fits, pair: PairArguments, args: FitArguments) -> dict[str, Any]:
    options = {**asdict(pair), "fit_fraction": args.fit_fraction}
    entries = zip(result.runs, result.pairs, result.fits, result.predictions, strict=True)
    labels = [p.label for p in result.pairs]
    return {
        "law": LAW,
        "options": options,
        "runs": [_run_entry(*entry) for entry in entries],
        "joint": None if result.joint is None else result.joint.to_dict(labels),
    }


# ------------------------------------------------------------------------------------------------ command
def _body(argv: list[str]) -> int:
    """Fit, print the tables, write the JSON report (and the figures with --plot)."""
    runs, pair, args = build_parser().parse(argv)
    result = compute(runs.runs, pair, args)
    print(report_text(result))
    for p, fit in zip(result.pairs, result.fits, strict=True):
        if fit.few_points:  # also on stderr, where a script that keeps only the JSON report still sees it
            print(f"entropy-rl {COMMAND}: warning: {p.label}: {few_points_text(fit)}", file=sys.stderr)
    output = args.output or common_dir(runs.runs) / "fit.json"
    report = report_json(result, pair, args)
    if args.plot:
        from entropy_rl.plot import make_plots  # matplotlib costs about a second to import; only --plot needs it

        warn_if_measures_differ(result.pairs, COMMAND)
        joint = None if result.joint is None else result.joint.fit
        paths = make_plots(result.runs, result.pairs, result.fits, output.parent, joint=joint)
        report["plots"] = [str(path) for path in paths]
        print("\n".join(f"wrote {path}" for path in paths))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


def main(argv: list[str]) -> int:
    return run_command(COMMAND, lambda: _body(argv))
