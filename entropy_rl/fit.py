"""The entropy-performance law R = b - a * exp(H) of Cui et al. 2025, fitted to training runs (docs/fit.md).

    entropy-rl fit RUN_DIR [RUN_DIR ...] [--metric M] [--benchmark B] [--fit-fraction F] [--joint] [--plot]

H is the policy entropy the trainer logs per step (`entropy/seq_mean`, the paper's seq-mean-token-mean entropy), R a
performance measure at the same step: an evaluator benchmark score from curve.jsonl, or the training reward. Given
x = exp(H) the law is linear in (a, b), so the fit is closed-form least squares; intervals come from a bootstrap over
steps. The ceiling b - a is the performance the law predicts once entropy is exhausted (H = 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import f as f_distribution

from .jsonl import read_rows

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "curve.jsonl"
CONFIG_FILE = "entropy_rl_config.json"
DEFAULT_ENTROPY_KEY = "entropy/seq_mean"
MIN_POINTS = 3
CI_PERCENTILES = (2.5, 97.5)  # two-sided 95 % percentile-bootstrap interval
LAW = "R = b - a * exp(H)"
# Metrics read from curve.jsonl; any other --metric names a column of metrics.jsonl (e.g. "reward").
CURVE_METRIC = re.compile(r"avg@k|pass@(\d+|k)")


class LawFitError(ValueError):
    """The data cannot give a fit; the message names the file, key or value at fault."""


# ------------------------------------------------------------------------------------------------ reading runs
@dataclass(frozen=True)
class Run:
    """One run directory as read from disk: metrics.jsonl rows (one per step, in step order) and curve.jsonl rows."""

    path: Path
    label: str
    metrics_path: Path
    metrics: list[dict[str, Any]]
    curve: list[dict[str, Any]] | None

    @property
    def steps(self) -> np.ndarray:
        return np.array([row["step"] for row in self.metrics], dtype=int)

    def has(self, key: str) -> bool:
        return any(key in row for row in self.metrics)

    def column(self, key: str) -> np.ndarray:
        """Values of `key` per step, NaN where the step logged null or omitted it."""
        if not self.has(key):
            keys = sorted({k for row in self.metrics for k in row})
            raise LawFitError(f"{self.metrics_path}: key {key!r} is in no row; keys present: {', '.join(keys)}")
        return np.array(
            [_number(row.get(key), f"{self.metrics_path} step {row['step']} key {key!r}") for row in self.metrics]
        )


def _number(value: Any, where: str) -> float:
    # The trainer writes NaN/inf as null (JSON has neither): a degenerate step, dropped later, not a broken file.
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LawFitError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LawFitError(f"{path}: file not found")
    try:
        rows = read_rows(path)
    except ValueError as err:
        raise LawFitError(str(err)) from err
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise LawFitError(f"{path}: row {number} is {row!r}, expected a JSON object")
    return rows


def _read_config(run_dir: Path) -> dict[str, Any]:
    # Only labels and the metrics file name come from the config, so a missing or unreadable one is not fatal.
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _label(run_dir: Path, config: dict[str, Any]) -> str:
    name = run_dir.resolve().name
    if config.get("regularizer") is None:
        return name
    label = str(config["regularizer"])
    return label if config.get("seed") is None else f"{label} seed {config['seed']}"


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read RUN_DIR's metrics.jsonl (required), curve.jsonl (optional) and config (for the label)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise LawFitError(f"{path}: run directory not found")
    config = _read_config(path)
    metrics_path = path / str(config.get("metrics_file") or METRICS_FILE)
    by_step: dict[int, dict[str, Any]] = {}
    for row in _read(metrics_path):
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise LawFitError(f"{metrics_path}: key 'step' must be an integer, got {step!r} in row {row}")
        by_step[step] = row  # a step logged twice (resumed run): the later row is the one training continued from
    curve_path = path / CURVE_FILE
    curve = _read(curve_path) if curve_path.exists() else None
    return Run(path, _label(path, config), metrics_path, [by_step[s] for s in sorted(by_step)], curve)


def load_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[Run]:
    """load_run for each directory, with labels made unique (the directory name is appended to repeats)."""
    runs = [load_run(d) for d in run_dirs]
    repeated = {run.label for run in runs if [r.label for r in runs].count(run.label) > 1}
    return [
        dataclasses.replace(run, label=f"{run.label} ({run.path.resolve().name})") if run.label in repeated else run
        for run in runs
    ]


def common_dir(run_dirs: Sequence[str | os.PathLike[str]]) -> Path:
    """Where outputs about these runs go by default: the run directory itself, or the deepest one holding them all."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    return Path(os.path.commonpath([Path(d).resolve() for d in run_dirs]))


# ------------------------------------------------------------------------------------------------ (H, R) pairs
@dataclass(frozen=True)
class Pairs:
    """The (step, H, R) points of one run that the law is fitted to, in step order, all finite."""

    label: str
    source: str  # where H and R come from and what was dropped, for tables and error messages
    entropy_key: str
    metric: str
    benchmark: str | None  # None when R is a metrics.jsonl column
    steps: np.ndarray
    H: np.ndarray
    R: np.ndarray
    dropped: int  # candidate steps dropped because H or R was null/NaN/inf
    unmatched: int  # curve.jsonl steps with no metrics.jsonl row (so no H)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start): a point never sees later steps."""
    values = np.asarray(values, dtype=float)
    if window <= 1:
        return values
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)
    return (cumsum[end] - cumsum[start]) / (end - start)


def _curve_value(row: dict[str, Any], metric: str) -> Any:
    if metric == "avg@k":
        return row.get("avg@k")
    table = row.get("pass@k")
    k = metric.removeprefix("pass@")
    return table.get(str(row.get("k")) if k == "k" else k) if isinstance(table, dict) else None


def _curve_series(run: Run, metric: str, benchmark: str | None) -> tuple[str, dict[int, float]]:
    """(benchmark name, step -> R) from curve.jsonl; without --benchmark, one benchmark or the mean over all."""
    path = run.path / CURVE_FILE
    if run.curve is None:
        raise LawFitError(f"{path}: file not found; it is needed for --metric {metric} (--metric reward needs none)")
    by_bench: dict[str, dict[int, float]] = {}
    for row in run.curve:
        step, name = row.get("step"), row.get("benchmark")
        if isinstance(step, bool) or not isinstance(step, int) or not isinstance(name, str):
            raise LawFitError(f"{path}: row {row} lacks an integer 'step' or a string 'benchmark'")
        raw = _curve_value(row, metric)
        by_bench.setdefault(name, {})[step] = _number(raw, f"{path} step {step} benchmark {name!r} {metric}")
    if benchmark is not None and benchmark not in by_bench:
        raise LawFitError(f"{path}: no rows for benchmark {benchmark!r}; benchmarks present: {', '.join(by_bench)}")
    names = [benchmark] if benchmark is not None else sorted(by_bench)
    # The mean only covers steps every benchmark was evaluated at, so each point averages the same benchmarks.
    steps = sorted(set.intersection(*(set(by_bench[n]) for n in names)))
    if not steps:
        raise LawFitError(f"{path}: benchmarks {', '.join(names)} share no evaluated step; choose one with --benchmark")
    series = {step: float(np.mean([by_bench[n][step] for n in names])) for step in steps}
    if all(math.isnan(v) for v in series.values()):
        raise LawFitError(f"{path}: no row of benchmark(s) {', '.join(names)} has a value for {metric}")
    return (names[0] if len(names) == 1 else f"mean of {', '.join(names)}"), series


def load_pairs(
    run: Run | str | os.PathLike[str],
    *,
    metric: str | None = None,
    benchmark: str | None = None,
    entropy_key: str = DEFAULT_ENTROPY_KEY,
    smooth: int = 1,
    entropy_window: int = 1,
) -> Pairs:
    """(H, R) per step of a run: H = `entropy_key` from metrics.jsonl, R = `metric`.

    metric: "avg@k", "pass@N" or "pass@k" (a benchmark score from curve.jsonl), or any metrics.jsonl column such as
    "reward"; default "avg@k" when the run has curve.jsonl, else "reward". Steps with a null/NaN/inf H or R are dropped
    (counted in `dropped`). smooth > 1 replaces H and R by trailing moving averages over that many points, for the
    per-step training reward, whose batch noise would otherwise dominate the fit. entropy_window > 1 takes H at a step
    as the trailing mean of the training entropy over that many steps (one rollout batch's entropy is noisy; an
    evaluation at a checkpoint reflects the policy of the recent steps).
    """
    run = run if isinstance(run, Run) else load_run(run)
    if metric is None:
        metric = "avg@k" if run.curve is not None else "reward"
    if smooth < 1 or entropy_window < 1:
        raise LawFitError(f"smooth and entropy_window must be >= 1, got {smooth} and {entropy_window}")
    entropy_column = moving_average(run.column(entropy_key), entropy_window)
    h_src = f"H = {entropy_key} ({run.metrics_path.name})"
    if entropy_window > 1:
        h_src += f" averaged over the last {entropy_window} steps"
    if CURVE_METRIC.fullmatch(metric):
        bench, series = _curve_series(run, metric, benchmark)
        r_src = f"R = {bench} {metric} ({CURVE_FILE})"
        entropy = dict(zip(run.steps.tolist(), entropy_column.tolist(), strict=True))
        steps = np.array([s for s in series if s in entropy], dtype=int)
        unmatched = len(series) - len(steps)
        H = np.array([entropy[s] for s in steps])
        R = np.array([series[s] for s in steps])
    else:
        bench, unmatched = None, 0
        r_src = f"R = {metric} ({run.metrics_path.name})"
        steps, H, R = run.steps, entropy_column, run.column(metric)
    finite = np.isfinite(H) & np.isfinite(R)
    dropped = int((~finite).sum())
    source = f"{run.path}: {h_src}, {r_src}"
    if dropped:
        source += f"; {dropped} of {len(finite)} steps dropped for a null/NaN/inf H or R"
    if unmatched:
        source += f"; {unmatched} {CURVE_FILE} steps have no {run.metrics_path.name} row"
    if not finite.any():
        raise LawFitError(f"{source}: no step has both H and R")
    return Pairs(
        label=run.label,
        source=source,
        entropy_key=entropy_key,
        metric=metric,
        benchmark=bench,
        steps=steps[finite],
        H=moving_average(H[finite], smooth),
        R=moving_average(R[finite], smooth),
        dropped=dropped,
        unmatched=unmatched,
    )


# ------------------------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class LawFit:
    """Least-squares fit of R = b - a * exp(H); *_ci are 95 % bootstrap intervals (None without bootstrap)."""

    a: float
    b: float
    r2: float  # NaN when R is constant
    rmse: float  # root mean squared residual, in R's units
    n: int
    h_min: float
    h_max: float
    a_ci: tuple[float, float] | None = None
    b_ci: tuple[float, float] | None = None
    ceiling_ci: tuple[float, float] | None = None
    n_bootstrap: int = 0  # resamples that gave a fit (those with constant entropy cannot)

    @property
    def ceiling(self) -> float:
        """Performance predicted at H = 0 (entropy exhausted): b - a."""
        return self.b - self.a

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "ceiling": self.ceiling,
            "r2": _json_float(self.r2),
            "rmse": self.rmse,
            "n": self.n,
            "h_range": [self.h_min, self.h_max],
            "a_ci95": _json_pair(self.a_ci),
            "b_ci95": _json_pair(self.b_ci),
            "ceiling_ci95": _json_pair(self.ceiling_ci),
            "n_bootstrap": self.n_bootstrap,
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None  # strict JSON has no NaN


def _json_pair(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [float(pair[0]), float(pair[1])]


def _is_constant(x: np.ndarray) -> bool:
    # Relative tolerance: a frozen policy's entropy can still differ in the last bits between steps.
    return float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of y = b - a * x; the centred closed form stays accurate when x = exp(H) is far from 0."""
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    return -slope, float(y.mean() - slope * x.mean())


def _check_points(H: np.ndarray, R: np.ndarray, source: str) -> None:
    if H.ndim != 1 or H.shape != R.shape:
        raise LawFitError(f"{source}: H and R must be 1-D and of equal length, got shapes {H.shape} and {R.shape}")
    with np.errstate(over="ignore"):
        bad = ~(np.isfinite(H) & np.isfinite(R) & np.isfinite(np.exp(H)))
    if bad.any():
        i = int(np.argmax(bad))
        raise LawFitError(
            f"{source}: {int(bad.sum())} of {len(H)} points are NaN/inf or overflow exp(H) (first: index {i}, "
            f"H={H[i]!r}, R={R[i]!r}); drop them first"
        )
    if len(H) < MIN_POINTS:
        raise LawFitError(f"{source}: {len(H)} point(s); the fit needs at least {MIN_POINTS}")
    if _is_constant(np.exp(H)):
        raise LawFitError(
            f"{source}: entropy is constant (H = {H[0]:.6g} at all {len(H)} points), so exp(H) has zero variance "
            "and a cannot be told apart from b"
        )


def fit_law(H: np.ndarray, R: np.ndarray, *, bootstrap: int = 0, seed: int = 0, source: str = "fit_law") -> LawFit:
    """Fit R = b - a * exp(H) by least squares; with bootstrap > 0, 95 % intervals from that many step resamples."""
    H, R = np.asarray(H, dtype=float), np.asarray(R, dtype=float)
    _check_points(H, R, source)
    x = np.exp(H)
    a, b = _ols(x, R)
    sse = float(((R - (b - a * x)) ** 2).sum())
    sst = float(((R - R.mean()) ** 2).sum())
    draws = _bootstrap(x, R, bootstrap, seed)
    intervals = {}
    if len(draws):
        for name, values in (("a_ci", draws[:, 0]), ("b_ci", draws[:, 1]), ("ceiling_ci", draws[:, 1] - draws[:, 0])):
            lo, hi = np.percentile(values, CI_PERCENTILES)
            intervals[name] = (float(lo), float(hi))
    return LawFit(
        a=a,
        b=b,
        r2=1.0 - sse / sst if sst > 0 else math.nan,
        rmse=math.sqrt(sse / len(R)),
        n=len(R),
        h_min=float(H.min()),
        h_max=float(H.max()),
        n_bootstrap=len(draws),
        **intervals,
    )


def _bootstrap(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """[m, 2] array of (a, b) refitted on `resamples` draws of the points with replacement, skipping degenerate ones."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        if not _is_constant(x[idx]):
            draws.append(_ols(x[idx], y[idx]))
    return np.array(draws).reshape(-1, 2)


def predict(fit: LawFit, H: np.ndarray | float) -> np.ndarray:
    """R the law predicts at entropy H."""
    return fit.b - fit.a * np.exp(np.asarray(H, dtype=float))


def _rmse(fit: LawFit, H: np.ndarray, R: np.ndarray) -> float:
    return float(np.sqrt(np.mean((R - predict(fit, H)) ** 2)))


@dataclass(frozen=True)
class Prediction:
    """A fit on the first `n_fit` points (step order) judged on how well it predicts the remaining `n_test`."""

    fraction: float
    fit: LawFit
    n_fit: int
    n_test: int
    rmse: float  # on the held-out points
    max_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "fit_fraction": self.fraction,
            "n_fit": self.n_fit,
            "n_test": self.n_test,
            "rmse": self.rmse,
            "max_abs_error": self.max_abs_error,
            "fit": self.fit.to_dict(),
        }


def fit_early(
    H: np.ndarray, R: np.ndarray, fraction: float, *, bootstrap: int = 0, seed: int = 0, source: str = "fit_early"
) -> Prediction:
    """Fit on the first floor(fraction * n) points (H, R in step order) and predict the rest: the paper's claim that
    early training already determines the later entropy-performance trade-off."""
    if not 0 < fraction < 1:
        raise LawFitError(f"{source}: fit fraction must be strictly between 0 and 1, got {fraction}")
    H, R = np.asarray(H, dtype=float), np.asarray(R, dtype=float)
    n_fit = math.floor(fraction * len(H))
    if n_fit < MIN_POINTS or n_fit >= len(H):
        raise LawFitError(
            f"{source}: the first {fraction:g} of {len(H)} points is {n_fit}; that needs to be at least {MIN_POINTS} "
            "and leave points to predict"
        )
    fit = fit_law(H[:n_fit], R[:n_fit], bootstrap=bootstrap, seed=seed, source=f"{source} (first {n_fit} points)")
    errors = R[n_fit:] - predict(fit, H[n_fit:])
    return Prediction(
        fraction=fraction,
        fit=fit,
        n_fit=n_fit,
        n_test=len(errors),
        rmse=float(np.sqrt(np.mean(errors**2))),
        max_abs_error=float(np.abs(errors).max()),
    )


@dataclass(frozen=True)
class JointFit:
    """One (a, b) shared by several runs, against a separate fit per run."""

    fit: LawFit
    own_rmse: list[float]  # per run, under its own fit
    joint_rmse: list[float]  # per run, under the shared fit
    separate_rmse: float  # all points, each under its own run's fit
    separate_r2: float  # same, against the mean of all points (comparable to fit.r2)
    f_stat: float  # Chow test of "all runs share (a, b)"; large F / small p: they do not
    df: tuple[int, int]
    p_value: float

    @property
    def rmse_ratio(self) -> float:
        """How many times larger the joint fit's RMSE is than that of the separate fits."""
        return self.fit.rmse / self.separate_rmse if self.separate_rmse > 0 else math.nan

    def to_dict(self, labels: Sequence[str]) -> dict[str, Any]:
        return {
            "fit": self.fit.to_dict(),
            "separate_rmse": self.separate_rmse,
            "separate_r2": _json_float(self.separate_r2),
            "rmse_ratio": _json_float(self.rmse_ratio),
            "per_run": [
                {"label": label, "own_rmse": own, "joint_rmse": joint}
                for label, own, joint in zip(labels, self.own_rmse, self.joint_rmse, strict=True)
            ],
            "f_test": {"F": _json_float(self.f_stat), "df": list(self.df), "p_value": _json_float(self.p_value)},
        }


def fit_joint(
    runs: Sequence[tuple[np.ndarray, np.ndarray]], *, bootstrap: int = 0, seed: int = 0, source: str = "fit_joint"
) -> JointFit:
    """Fit one (a, b) to the (H, R) points of all runs; compare with a separate fit per run.

    The paper reports a and b as properties of the model, not of the RL algorithm: runs of one model with different
    regularizers should then share them, and the joint fit should be nearly as good as the separate ones.
    """
    if len(runs) < 2:
        raise LawFitError(f"{source}: a joint fit needs at least 2 runs, got {len(runs)}")
    own = [fit_law(H, R, source=f"{source} run {i}") for i, (H, R) in enumerate(runs)]
    H_all = np.concatenate([np.asarray(H, dtype=float) for H, _ in runs])
    R_all = np.concatenate([np.asarray(R, dtype=float) for _, R in runs])
    joint = fit_law(H_all, R_all, bootstrap=bootstrap, seed=seed, source=f"{source} (all runs)")
    sse_own = sum(f.rmse**2 * f.n for f in own)
    sse_joint = joint.rmse**2 * joint.n
    sst = float(((R_all - R_all.mean()) ** 2).sum())
    # Nested models: 2 shared parameters against 2 per run.
    df = (2 * (len(runs) - 1), len(R_all) - 2 * len(runs))
    with np.errstate(divide="ignore", invalid="ignore"):
        f_stat = float(np.float64(sse_joint - sse_own) / df[0] / (np.float64(sse_own) / df[1]))
    return JointFit(
        fit=joint,
        own_rmse=[f.rmse for f in own],
        joint_rmse=[_rmse(joint, np.asarray(H, dtype=float), np.asarray(R, dtype=float)) for H, R in runs],
        separate_rmse=math.sqrt(sse_own / len(R_all)),
        separate_r2=1.0 - sse_own / sst if sst > 0 else math.nan,
        f_stat=f_stat,
        df=df,
        p_value=float(f_distribution.sf(f_stat, *df)) if df[1] > 0 else math.nan,
    )


# ------------------------------------------------------------------------------------------------ command line
def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """Options choosing the (H, R) points; shared by `entropy-rl fit` and `entropy-rl plot`."""
    parser.add_argument(
        "--metric",
        help="R: avg@k, pass@N or pass@k (from curve.jsonl) or a metrics.jsonl key such as reward "
        "(default: avg@k when the run has curve.jsonl, else reward)",
    )
    parser.add_argument(
        "--benchmark", help="curve.jsonl benchmark for R (default: the only one, else the mean over all benchmarks)"
    )
    parser.add_argument(
        "--entropy-key", default=DEFAULT_ENTROPY_KEY, help=f"metrics.jsonl key for H (default {DEFAULT_ENTROPY_KEY})"
    )
    parser.add_argument(
        "--smooth",
        type=int,
        default=1,
        metavar="N",
        help="trailing moving average of H and R over N points (default 1: none)",
    )
    parser.add_argument(
        "--entropy-window",
        type=int,
        default=1,
        metavar="N",
        help="H at a step = trailing mean of the training entropy over N steps (default 1: that step's batch)",
    )


def pair_options(args: argparse.Namespace) -> dict[str, Any]:
    """load_pairs keyword arguments from the options of add_pair_arguments."""
    return {
        "metric": args.metric,
        "benchmark": args.benchmark,
        "entropy_key": args.entropy_key,
        "smooth": args.smooth,
        "entropy_window": args.entropy_window,
    }


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-rl fit",
        description=f"Fit the entropy-performance law {LAW} (Cui et al. 2025) to runs. See docs/fit.md.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    add_pair_arguments(parser)
    parser.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="resamples for 95%% intervals (0: none; default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--fit-fraction", type=_fraction, metavar="F", help="also fit the first F of the points and predict the rest"
    )
    parser.add_argument("--joint", action="store_true", help="also fit one (a, b) shared by all runs")
    parser.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="JSON report (default: RUN_DIR/fit.json for one run, else fit.json in the deepest directory holding all)",
    )
    parser.add_argument("--plot", action="store_true", help="also write the figures next to the JSON report")
    return parser


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _fit_lines(fit: LawFit) -> list[str]:
    lines = [f"    {'':9} {'value':>10}  95% CI", f"    {'a':9} {fit.a:>10.4g}  {_fmt_ci(fit.a_ci)}"]
    lines.append(f"    {'b':9} {fit.b:>10.4g}  {_fmt_ci(fit.b_ci)}")
    lines.append(f"    {'ceiling':9} {fit.ceiling:>10.4g}  {_fmt_ci(fit.ceiling_ci)}")
    lines.append(
        f"    R2 {fit.r2:.4f}   RMSE {fit.rmse:.4g}   n {fit.n}   H in [{fit.h_min:.4g}, {fit.h_max:.4g}] nats"
    )
    if fit.a <= 0:
        lines.append("    note: a <= 0, performance does not rise as entropy falls; the law's premise fails here")
    return lines


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


def _report(args: argparse.Namespace) -> None:
    """Fit, print the tables, write the JSON report (and the figures with --plot)."""
    runs = load_runs(args.run_dirs)
    pairs = [load_pairs(run, **pair_options(args)) for run in runs]
    fits = [fit_law(p.H, p.R, bootstrap=args.bootstrap, seed=args.seed, source=p.source) for p in pairs]
    predictions = [
        fit_early(p.H, p.R, args.fit_fraction, bootstrap=args.bootstrap, seed=args.seed, source=p.source)
        if args.fit_fraction
        else None
        for p in pairs
    ]
    joint = None
    if args.joint:
        kinds = {(p.metric, p.benchmark) for p in pairs}
        if len(kinds) > 1:
            raise LawFitError(f"--joint needs the same R in every run, got (metric, benchmark) {sorted(kinds)}")
        joint = fit_joint(
            [(p.H, p.R) for p in pairs], bootstrap=args.bootstrap, seed=args.seed, source="joint fit of all runs"
        )

    labels = [p.label for p in pairs]
    lines = [f"entropy-performance law {LAW}", ""]
    for p, fit, prediction in zip(pairs, fits, predictions, strict=True):
        lines += [*_run_lines(p, fit, prediction), ""]
    if joint is not None:
        lines += [*_joint_lines(joint, labels), ""]
    print("\n".join(lines))

    output = args.output or common_dir(args.run_dirs) / "fit.json"
    report: dict[str, Any] = {
        "law": LAW,
        "options": {
            **pair_options(args),
            "bootstrap": args.bootstrap,
            "seed": args.seed,
            "fit_fraction": args.fit_fraction,
        },
        "runs": [
            {
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
            for run, p, fit, prediction in zip(runs, pairs, fits, predictions, strict=True)
        ],
        "joint": None if joint is None else joint.to_dict(labels),
    }
    if args.plot:
        from .plot import make_plots  # matplotlib costs about a second to import; only --plot needs it

        paths = make_plots(runs, pairs, fits, output.parent, joint=None if joint is None else joint.fit)
        report["plots"] = [str(path) for path in paths]
        print("\n".join(f"wrote {path}" for path in paths))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        _report(args)
    except LawFitError as err:
        print(f"entropy-rl fit: error: {err}", file=sys.stderr)
        return 2
    return 0
