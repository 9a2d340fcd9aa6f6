"""The study page's four figures: entropy and held-out accuracy per method over steps (mean ± std band over seeds),
predicted vs measured entropy change, and accuracy vs entropy with the joint law fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from entropy_rl.fit import JointFit, Pairs, moving_average
from entropy_rl.plot import ENTROPY_UNIT, STEP_UNIT, plot_law, save_figure, series_color
from entropy_rl.rundir import DEFAULT_ENTROPY_KEY
from entropy_rl.stats import pearson

from .analysis import MEASURED, PREDICTED, PREDICTED_PARAM, Groups, RunAnalysis, dynamics, eval_curve
from .spec import Study


def _band(ax: Axes, steps: np.ndarray, rows: list[np.ndarray], color: str, label: str) -> None:
    """Mean over seeds as a line, ± one standard deviation as a band (no band for one seed)."""
    matrix = np.vstack(rows)
    mean = np.nanmean(matrix, axis=0)
    ax.plot(steps, mean, color=color, lw=1.5, label=label)
    if len(rows) > 1:
        std = np.nanstd(matrix, axis=0, ddof=1)
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, lw=0)


def _finish(fig: Figure, ax: Axes, path: Path, **labels: str) -> Path:
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return save_figure(fig, path)


def plot_entropy_bands(groups: Groups, window: int, path: Path) -> Path:
    """Training entropy per method (trailing mean over `window` steps), mean ± std over seeds."""
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for i, (method, analyses) in enumerate(groups.items()):
        rows = [moving_average(a.result.run.column(DEFAULT_ENTROPY_KEY), window) for a in analyses]
        _band(ax, analyses[0].result.run.steps, rows, series_color(i), f"{method} ({len(rows)} seeds)")
    return _finish(
        fig,
        ax,
        path,
        title=f"Policy entropy ({DEFAULT_ENTROPY_KEY}, trailing mean over {window} steps; band: ± 1 std over seeds)",
        xlabel=STEP_UNIT,
        ylabel=ENTROPY_UNIT,
    )


def plot_accuracy(groups: Groups, study: Study, path: Path) -> Path:
    """Held-out avg@k per method at the checkpoints every seed has, mean ± std over seeds."""
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for i, (method, analyses) in enumerate(groups.items()):
        curves = [
            {row["step"]: row["avg@k"] for row in eval_curve(a.result.run, study.eval.benchmark)} for a in analyses
        ]
        steps = np.array(sorted(set.intersection(*(set(c) for c in curves))))
        if len(steps):
            _band(ax, steps, [np.array([c[s] for s in steps]) for c in curves], series_color(i), method)
    return _finish(
        fig,
        ax,
        path,
        title=f"Held-out {study.eval.benchmark} avg@{study.eval.k} at T={study.eval.temperature:g} "
        "(band: ± 1 std over seeds)",
        xlabel=STEP_UNIT,
        ylabel=f"avg@{study.eval.k} (fraction correct)",
    )


def plot_dynamics(groups: Groups, path: Path) -> Path:
    """Measured vs predicted entropy change of every measured step, one colour and Pearson r per method: the
    logit-space prediction (left, per unit step size) and, when logged, the parameter-space one (right, in nats)."""
    keys = [PREDICTED] + [PREDICTED_PARAM] * any(dynamics(a, PREDICTED_PARAM)[0] for a in groups.values())
    fig = Figure(figsize=(8 * len(keys), 6), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        for i, (method, analyses) in enumerate(groups.items()):
            predicted, measured = dynamics(analyses, key)
            r = pearson(predicted, measured)
            text = "n/a" if r is None else f"{r:.2f}"
            ax.scatter(predicted, measured, s=9, alpha=0.5, color=series_color(i), label=f"{method}: r = {text}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        unit = "per unit step size" if key == PREDICTED else "nats"
        _finish(
            fig,
            ax,
            path,
            title=f"{'Logit' if key == PREDICTED else 'Parameter'}-space first-order prediction vs measurement",
            xlabel=f"predicted ({key}, {unit})",
            ylabel=f"measured ({MEASURED}, nats)",
        )
    return path


def _pool(method: str, analyses: list[RunAnalysis]) -> Pairs | None:
    """The (H, R) pairs of a method's seeds as one series."""
    parts = [a.pairs for a in analyses if a.pairs is not None]
    if not parts:
        return None
    return Pairs(
        label=method,
        source=", ".join(p.source for p in parts),
        entropy_key=parts[0].entropy_key,
        metric=parts[0].metric,
        benchmark=parts[0].benchmark,
        steps=np.concatenate([p.steps for p in parts]),
        H=np.concatenate([p.H for p in parts]),
        R=np.concatenate([p.R for p in parts]),
        dropped=sum(p.dropped for p in parts),
        unmatched=sum(p.unmatched for p in parts),
    )


def plot_pooled_law(groups: Groups, joint: JointFit | None, path: Path) -> Path | None:
    """R vs H, seeds of a method pooled into one colour, with the joint fit over all runs."""
    pooled = [pairs for method, analyses in groups.items() if (pairs := _pool(method, analyses)) is not None]
    if not pooled:
        return None
    return plot_law(pooled, [None] * len(pooled), path, joint=None if joint is None else joint.fit)
