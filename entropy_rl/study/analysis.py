"""The numbers of a study: per run (entropy at start and end, accuracy, the law fit and its early prediction), per
method over seeds (mean, spread, comparison with GRPO), and over all runs (the joint law fit, the entropy dynamics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import t as t_distribution

from entropy_rl.errors import EntropyRLError
from entropy_rl.fit import JointFit, LawFit, LawFitError, Pairs, fit_early, fit_joint, fit_law, load_pairs
from entropy_rl.param_prediction import MOMENTUM_PARTS, QUADRANTS, cumulative_windows
from entropy_rl.rundir import DEFAULT_ENTROPY_KEY, Run
from entropy_rl.stats import pearson

from .spec import Study

BASELINE = "none"
PREDICTED, MEASURED = "dynamics/predicted_dH", "dynamics/measured_dH"
PREDICTED_PARAM = "dynamics/predicted_dH_param"  # the parameter-space prediction (entropy_rl/param_prediction.py)
ATTRIBUTION = (*QUADRANTS, "other")  # dynamics/dH_param/<group>, summed over a run's measured steps
# With dynamics_momentum_groups a quadrant also takes what its earlier gradients carry through the optimizer's
# momentum, and `other` the gradient outside the quadrants (now and carried) and weight decay.
MOMENTUM_SHARES = {
    **{name: (f"carried/{name}",) for name in QUADRANTS},
    "other": ("rest", "carried/rest", "weight_decay"),
}
STRONG_R, WEAK_R = 0.7, 0.4  # |Pearson r| at or above: strong; below WEAK_R: weak
WEAK_R2 = 0.5  # a law fit explaining less than half the variance of R is called weak


@dataclass(frozen=True)
class RunResult:
    method: str
    seed: int
    run: Run
    status: str  # what this invocation did with the run
    train_s: float  # recorded seconds, over every invocation that worked on the run
    eval_s: float


@dataclass
class RunAnalysis:
    result: RunResult
    numbers: dict[str, float]  # start_h, end_h, first_acc, final_acc, final_pass, eval_h, a, b, ceiling, r2, ...
    pairs: Pairs | None
    notes: list[str]  # why a fit is missing


Groups = dict[str, list[RunAnalysis]]  # method -> its runs (one per seed), in the study's order


def _edge_mean(values: np.ndarray, fraction: float, last: bool) -> float:
    """Mean of the first (or last) `fraction` of the finite values, at least one."""
    values = values[np.isfinite(values)]
    n = max(1, round(fraction * len(values)))
    return float(np.mean(values[-n:] if last else values[:n])) if len(values) else float("nan")


def eval_curve(run: Run, benchmark: str) -> list[dict[str, Any]]:
    """The run's evaluation rows of one benchmark, by step."""
    return sorted((row for row in run.curve or [] if row.get("benchmark") == benchmark), key=lambda row: row["step"])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (NaN entries skipped; std NaN for one value)."""
    finite = np.array([v for v in values if np.isfinite(v)], dtype=float)
    if not len(finite):
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")


ALPHA = 0.05  # significance level of every test on the page, after Holm's correction


@dataclass(frozen=True)
class Comparison:
    """One number of a method against the baseline's over seeds: the difference of the means with its 95 % interval
    and p-value (Welch's t-test, or a paired t-test for two numbers of the same runs), and the verdict at ALPHA after
    Holm's correction across the comparisons it was made with."""

    diff: float
    ci: tuple[float, float]
    p: float
    p_holm: float
    verdict: str  # "higher", "lower", "no significant difference" or "cannot tell (...)"


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.array([v for v in values if np.isfinite(v)], dtype=float)


def _t_test(diff: float, se: float, df: float) -> tuple[tuple[float, float], float]:
    """95 % interval and two-sided p-value of a difference with standard error `se` and `df` degrees of freedom."""
    if se == 0:  # no spread at all: the difference is exact
        return (diff, diff), 0.0 if diff != 0 else 1.0
    half = float(t_distribution.ppf(0.975, df)) * se
    return (diff - half, diff + half), float(2 * t_distribution.sf(abs(diff) / se, df))


def welch(values: Sequence[float], baseline: Sequence[float]) -> tuple[float, tuple[float, float], float] | None:
    """Difference of the means, its 95 % interval and p-value by Welch's t-test; None with fewer than 2 seeds a side."""
    x, y = _finite(values), _finite(baseline)
    if len(x) < 2 or len(y) < 2:
        return None
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    # Welch-Satterthwaite degrees of freedom
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if se > 0 else len(x) + len(y) - 2
    diff = float(x.mean() - y.mean())
    return (diff, *_t_test(diff, se, df))


def paired(values: Sequence[float], baseline: Sequence[float]) -> tuple[float, tuple[float, float], float] | None:
    """The same for two numbers of the same runs (e.g. final vs earlier accuracy): a paired t-test over seeds."""
    pairs = [(v, b) for v, b in zip(values, baseline, strict=True) if np.isfinite(v) and np.isfinite(b)]
    if len(pairs) < 2:
        return None
    d = np.array([v - b for v, b in pairs])
    diff = float(d.mean())
    return (diff, *_t_test(diff, float(d.std(ddof=1)) / math.sqrt(len(d)), len(d) - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at most the level for any number of comparisons)."""
    order = np.argsort(p_values)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _verdict(diff: float, p_holm: float) -> str:
    if p_holm >= ALPHA:
        return "no significant difference"
    return "higher" if diff > 0 else "lower"


def compare_all(tests: dict[str, tuple[float, tuple[float, float], float] | None]) -> dict[str, Comparison]:
    """Comparisons from test results (name -> welch/paired result), Holm-corrected together."""
    done = {name: result for name, result in tests.items() if result is not None}
    adjusted = dict(zip(done, holm([result[2] for result in done.values()]), strict=True))
    nan = float("nan")
    return {
        name: Comparison(*result, adjusted[name], _verdict(result[0], adjusted[name]))
        if result is not None
        else Comparison(nan, (nan, nan), nan, nan, "cannot tell (fewer than 2 seeds)")
        for name, result in tests.items()
    }


def compare_methods(groups: Groups, key: str) -> dict[str, Comparison]:
    """Every method against the baseline on one number, Welch's test Holm-corrected across the study's methods."""
    base = column(groups[BASELINE], key)
    return compare_all(
        {method: welch(column(analyses, key), base) for method, analyses in groups.items() if method != BASELINE}
    )


def versus_ceiling(groups: Groups, pooled: LawFit) -> dict[str, Comparison]:
    """Every method's mean final accuracy minus the ceiling of the baseline's pooled law: a t-test whose standard
    error adds the seeds' and the fit's (from its 95 % t-interval), on the fewer degrees of freedom of the two
    (conservative), Holm-corrected across the methods."""
    low, high = pooled.ceiling_ci
    fit_df = max(pooled.n - 2, 1)
    fit_se = (high - low) / (2 * float(t_distribution.ppf(0.975, fit_df)))
    tests = {}
    for method, analyses in groups.items():
        values = _finite(column(analyses, "final_acc"))
        if method == BASELINE or len(values) < 2:
            continue
        se = math.sqrt(values.var(ddof=1) / len(values) + fit_se**2)
        diff = float(values.mean()) - pooled.ceiling
        tests[method] = (diff, *_t_test(diff, se, min(len(values) - 1, fit_df)))
    return compare_all(tests)


def strength(r: float | None) -> str:
    if r is None:
        return "undefined (fewer than 3 pairs or a constant series)"
    label = "strong" if abs(r) >= STRONG_R else "moderate" if abs(r) >= WEAK_R else "weak"
    return label if r >= 0 else f"{label}, negative"


def _edge_numbers(run: Run, study: Study) -> dict[str, float]:
    """Entropy at the start and end of training; accuracy at the first and last checkpoint."""
    nan = float("nan")
    entropy = run.column(DEFAULT_ENTROPY_KEY)
    curve = eval_curve(run, study.eval.benchmark)
    last = curve[-1] if curve else {}
    return {
        # accuracy at the middle checkpoint: final - half is what the second half of training still gained
        "half_acc": curve[(len(curve) - 1) // 2]["avg@k"] if curve else nan,
        **_late_gain(curve, study.steps),
        "start_h": _edge_mean(entropy, study.fit.window, last=False),
        "end_h": _edge_mean(entropy, study.fit.window, last=True),
        "first_acc": curve[0]["avg@k"] if curve else nan,
        "final_acc": last.get("avg@k", nan),
        "final_acc_se": last.get("avg@k_se") if last.get("avg@k_se") is not None else nan,
        "final_pass": last.get("pass@k", {}).get(str(last.get("k")), nan),
        "eval_h": last.get("eval_entropy", nan),
    }


LATE_FRACTION = 1 / 3  # a plateau is judged on the checkpoints of the last third of training
LATE_MIN_POINTS = 4  # and needs at least this many of them


def _late_gain(curve: list[dict[str, Any]], steps: int) -> dict[str, float]:
    """What the last third of training still gained in accuracy: the least-squares slope of avg@k over the
    checkpoints from step (1 - LATE_FRACTION)·steps on, times the steps they span (less noisy than the difference of
    two checkpoints); NaN with fewer than LATE_MIN_POINTS such checkpoints."""
    late = [row for row in curve if row["step"] >= (1 - LATE_FRACTION) * steps]
    step = np.array([row["step"] for row in late], dtype=float)
    numbers = {"late_points": float(len(late)), "late_step": float(step[0]) if len(late) else float("nan")}
    if len(late) < LATE_MIN_POINTS:
        return numbers | {"late_gain": float("nan")}
    slope = np.polyfit(step, [row["avg@k"] for row in late], 1)[0]
    return numbers | {"late_gain": float(slope * (step[-1] - step[0]))}


def _attribution_numbers(run: Run) -> dict[str, float]:
    """Entropy change summed over the measured steps: measured, and the parameter-space split by token group."""
    rows = [row for row in run.metrics if row.get(MEASURED) is not None]
    numbers = {"dH_measured": float(sum(row[MEASURED] for row in rows))}
    momentum = bool(rows) and all(f"dynamics/dH_param/{MOMENTUM_PARTS[0]}" in row for row in rows)
    for name in ATTRIBUTION:
        keys = [name, *(MOMENTUM_SHARES[name] if momentum else ())]
        values = [[row.get(f"dynamics/dH_param/{key}") for key in keys] for row in rows]
        if rows and all(v is not None for row in values for v in row):
            numbers[f"dH_{name}"] = float(sum(sum(row) for row in values))
    if momentum:
        numbers["momentum_groups"] = 1.0
    return numbers


def analyse_run(result: RunResult, study: Study) -> RunAnalysis:
    run = result.run
    numbers = _edge_numbers(run, study) | _attribution_numbers(run)
    notes, pairs = [], None
    try:
        # H: the training entropy averaged over the steps since the previous checkpoint, not one batch's
        pairs = load_pairs(
            run, metric=study.fit.metric, benchmark=study.eval.benchmark, entropy_window=study.save_steps
        )
        fit = fit_law(pairs.H, pairs.R, source=pairs.source)
        numbers |= {"a": fit.a, "b": fit.b, "ceiling": fit.ceiling, "r2": fit.r2, "rmse": fit.rmse, "n": fit.n}
        early = fit_early(pairs.H, pairs.R, study.fit.early_fraction, source=pairs.source)
        numbers |= {"early_rmse": early.rmse, "early_n": early.n_fit}
    except EntropyRLError as err:  # a fit that fails or a run file that cannot be read: a note, not a crash
        notes.append(f"{run.label}: {err}")
    return RunAnalysis(result, numbers, pairs, notes)


def by_method(analyses: Sequence[RunAnalysis]) -> Groups:
    groups: Groups = {}
    for analysis in analyses:
        groups.setdefault(analysis.result.method, []).append(analysis)
    return groups


def column(analyses: Sequence[RunAnalysis], key: str) -> list[float]:
    """One number of every run (NaN where the run lacks it)."""
    return [a.numbers.get(key, float("nan")) for a in analyses]


def dynamics(analyses: Sequence[RunAnalysis], key: str = PREDICTED) -> tuple[list[float], list[float]]:
    """Predicted (`key`) and measured entropy changes of every measured step of the runs."""
    pairs = [
        (row[key], row[MEASURED])
        for a in analyses
        for row in a.result.run.metrics
        if row.get(MEASURED) is not None and row.get(key) is not None
    ]
    return [p for p, _ in pairs], [m for _, m in pairs]


def windowed_r(analyses: Sequence[RunAnalysis], key: str, window: int) -> float | None:
    """Pearson r of predicted vs measured change summed over windows of `window` measured steps, within each run."""
    predicted, measured = [], []
    for a in analyses:
        p, m = dynamics([a], key)
        predicted += cumulative_windows(p, window)
        measured += cumulative_windows(m, window)
    return pearson(predicted, measured)


def joint(analyses: Sequence[RunAnalysis]) -> tuple[JointFit | None, str | None]:
    """One law fitted to every run with a fit of its own; or None and why not."""
    usable = [a.pairs for a in analyses if a.pairs is not None and "a" in a.numbers]
    try:
        return fit_joint([(p.H, p.R) for p in usable], source="joint fit of all runs"), None
    except LawFitError as err:
        return None, str(err)
