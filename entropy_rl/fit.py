"""The entropy-performance law R = b - a * exp(H) of Cui et al. 2025, fitted to training runs (docs/fit.md).

H is the policy entropy the trainer logs per step (`entropy/seq_mean`, the paper's seq-mean-token-mean entropy), R a
performance measure at the same step: an evaluator benchmark score from curve.jsonl, or the training reward. Given
x = exp(H) the law is linear in (a, b), so the fit is closed-form least squares, and its 95 % intervals are the exact
t-intervals of least squares (Gaussian errors; they reach their nominal coverage, where a bootstrap over steps fell
short: tests/test_fit.py). The ceiling b - a is the performance the law predicts once entropy is exhausted (H = 0).

Library only: runs are read through entropy_rl.rundir; the command `entropy-rl fit` is entropy_rl.cli.fit.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import f as f_distribution
from scipy.stats import t as t_distribution

from .errors import EntropyRLError
from .rundir import CURVE_FILE, DEFAULT_ENTROPY_KEY, Run, load_run, metric_value

MIN_POINTS = 3  # two parameters and one residual degree of freedom: the least that gives a fit at all
# Below this many points the fit is reported with a warning: its intervals are then so wide, and R² so easily high on
# pure noise, that neither says much (perf/fit_small_n.py, table in docs/fit.md).
MIN_RELIABLE_POINTS = 8
CONFIDENCE = 0.95  # two-sided intervals of a, b, the ceiling and the curve
LAW = "R = b - a * exp(H)"
# Metrics read from curve.jsonl; any other metric names a column of the metrics file (e.g. "reward").
CURVE_METRIC = re.compile(r"avg@k|pass@(\d+|k)")


class LawFitError(EntropyRLError):
    """The data cannot give a fit; the message names the file, key or value at fault."""


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
        where = f"{path} step {step} benchmark {name!r} {metric}"
        value = metric_value(_curve_value(row, metric), where)
        if not (math.isnan(value) or 0 <= value <= 1):  # NaN (null) is a missing value, dropped later
            raise LawFitError(f"{where}: {value!r}; allowed: a fraction in [0, 1] (the evaluator writes fractions)")
        by_bench.setdefault(name, {})[step] = value
    if not by_bench:
        raise LawFitError(
            f"{path}: no rows (no checkpoint evaluated yet: run `entropy-rl eval --run`, or use --metric reward)"
        )
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


def _candidate_points(
    run: Run, metric: str, benchmark: str | None, entropy_column: np.ndarray
) -> tuple[str | None, str, np.ndarray, np.ndarray, np.ndarray, int]:
    """(benchmark, where R comes from, steps, H, R, curve steps without a metrics row), NaNs not yet dropped."""
    if not CURVE_METRIC.fullmatch(metric):
        if benchmark is not None:  # it would be ignored: R is then a training metric, not a benchmark score
            raise LawFitError(
                f"--benchmark {benchmark!r} with --metric {metric!r}, a {run.metrics_path.name} column; allowed: "
                f"--benchmark only with a {CURVE_FILE} metric (avg@k, pass@N, pass@k)"
            )
        return None, f"R = {metric} ({run.metrics_path.name})", run.steps, entropy_column, run.column(metric), 0
    bench, series = _curve_series(run, metric, benchmark)
    entropy = dict(zip(run.steps.tolist(), entropy_column.tolist(), strict=True))
    steps = np.array([s for s in series if s in entropy], dtype=int)
    H = np.array([entropy[s] for s in steps])
    R = np.array([series[s] for s in steps])
    return bench, f"R = {bench} {metric} ({CURVE_FILE})", steps, H, R, len(series) - len(steps)


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
    bench, r_src, steps, H, R, unmatched = _candidate_points(run, metric, benchmark, entropy_column)
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
    """Least-squares fit of R = b - a * exp(H), with 95 % t-intervals of a, b and the ceiling b - a."""

    a: float
    b: float
    r2: float  # NaN when R is constant
    rmse: float  # root mean squared residual, in R's units
    n: int
    h_min: float
    h_max: float
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    ceiling_ci: tuple[float, float]
    # What the interval of the fitted R at any entropy needs (`band`): the residual standard error (n - 2 degrees of
    # freedom), the mean of x = exp(H) and its sum of squared deviations.
    resid_sd: float
    x_mean: float
    x_ss: float

    @property
    def few_points(self) -> bool:
        """Fewer points than MIN_RELIABLE_POINTS: R2 and the intervals are not to be trusted (docs/fit.md)."""
        return self.n < MIN_RELIABLE_POINTS

    @property
    def ceiling(self) -> float:
        """Performance predicted at H = 0 (entropy exhausted): b - a."""
        return self.b - self.a

    def half_width(self, x: np.ndarray | float) -> np.ndarray:
        """Half width of the 95 % interval of the fitted R = b - a * x (x = exp(H)): mean-response least squares."""
        t = t_distribution.ppf(0.5 + CONFIDENCE / 2, self.n - 2)
        return t * self.resid_sd * np.sqrt(1 / self.n + (np.asarray(x, dtype=float) - self.x_mean) ** 2 / self.x_ss)

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
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None  # strict JSON has no NaN


def _json_pair(pair: tuple[float, float]) -> list[float]:
    return [float(pair[0]), float(pair[1])]


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


def _interval(centre: float, half_width: float) -> tuple[float, float]:
    return float(centre - half_width), float(centre + half_width)


def fit_law(H: np.ndarray, R: np.ndarray, *, source: str = "fit_law") -> LawFit:
    """Fit R = b - a * exp(H) by least squares, with 95 % t-intervals (n - 2 degrees of freedom)."""
    H, R = np.asarray(H, dtype=float), np.asarray(R, dtype=float)
    _check_points(H, R, source)
    x = np.exp(H)
    a, b = _ols(x, R)
    sse = float(((R - (b - a * x)) ** 2).sum())
    sst = float(((R - R.mean()) ** 2).sum())
    n, x_mean = len(R), float(x.mean())
    x_ss = float(((x - x_mean) ** 2).sum())
    resid_sd = math.sqrt(sse / (n - 2))
    t = float(t_distribution.ppf(0.5 + CONFIDENCE / 2, n - 2))
    # a is minus the slope; b and the ceiling b - a are the fitted R at x = 0 and x = exp(0) = 1.
    a_half = t * resid_sd / math.sqrt(x_ss)
    b_half = t * resid_sd * math.sqrt(1 / n + x_mean**2 / x_ss)
    ceiling_half = t * resid_sd * math.sqrt(1 / n + (1 - x_mean) ** 2 / x_ss)
    return LawFit(
        a=a,
        b=b,
        r2=1.0 - sse / sst if sst > 0 else math.nan,
        rmse=math.sqrt(sse / n),
        n=n,
        h_min=float(H.min()),
        h_max=float(H.max()),
        a_ci=_interval(a, a_half),
        b_ci=_interval(b, b_half),
        ceiling_ci=_interval(b - a, ceiling_half),
        resid_sd=resid_sd,
        x_mean=x_mean,
        x_ss=x_ss,
    )


def predict(fit: LawFit, H: np.ndarray | float) -> np.ndarray:
    """R the law predicts at entropy H."""
    return fit.b - fit.a * np.exp(np.asarray(H, dtype=float))


def band(fit: LawFit, H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise 95 % interval (low, high) of the fitted curve at entropies H.

    At H = 0 it is the ceiling's interval, so a plot can show how uncertain the extrapolation is."""
    centre, half = predict(fit, H), fit.half_width(np.exp(np.asarray(H, dtype=float)))
    return centre - half, centre + half


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


def fit_early(H: np.ndarray, R: np.ndarray, fraction: float, *, source: str = "fit_early") -> Prediction:
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
    fit = fit_law(H[:n_fit], R[:n_fit], source=f"{source} (first {n_fit} points)")
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


def fit_joint(runs: Sequence[tuple[np.ndarray, np.ndarray]], *, source: str = "fit_joint") -> JointFit:
    """Fit one (a, b) to the (H, R) points of all runs; compare with a separate fit per run.

    The paper reports a and b as properties of the model, not of the RL algorithm: runs of one model with different
    regularizers should then share them, and the joint fit should be nearly as good as the separate ones.
    """
    if len(runs) < 2:
        raise LawFitError(f"{source}: a joint fit needs at least 2 runs, got {len(runs)}")
    own = [fit_law(H, R, source=f"{source} run {i}") for i, (H, R) in enumerate(runs)]
    H_all = np.concatenate([np.asarray(H, dtype=float) for H, _ in runs])
    R_all = np.concatenate([np.asarray(R, dtype=float) for _, R in runs])
    joint = fit_law(H_all, R_all, source=f"{source} (all runs)")
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
