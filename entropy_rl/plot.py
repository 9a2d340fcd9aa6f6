"""Figures of runs: entropy and performance over training steps, and the entropy-performance law R = b - a exp(H).

`make_plots` writes entropy_vs_step.png, performance_vs_step.png and law_fit.png (runs overlaid, labelled by
regularizer and seed); `plot_run(run_dir)` draws one run's entropy and reward into RUN_DIR/entropy_reward.png (the
trainer's command calls it at the end). The command `entropy-rl plot` is entropy_rl.cli.plot.

Figures are drawn on matplotlib's object API (Figure + Agg canvas), never pyplot: importing this module changes no
global backend and leaks no open figures into the caller's process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .fit import LAW, LawFit, Pairs, moving_average, predict
from .rundir import Run, RunDirError, load_run

ENTROPY_LINES = {  # metrics.jsonl key -> (legend text, line style)
    "entropy/seq_mean": ("seq-mean (H of the law)", "-"),
    "entropy/token_mean": ("token-mean", "--"),
}
ENTROPY_UNIT = "entropy (nats per token)"
STEP_UNIT = "optimizer step"
DPI = 130
CEILING_TEXT_PTS = (5, 13)  # offset above its ceiling line of the first ceiling note, and step between stacked notes


def series_color(i: int) -> str:
    return f"C{i % 10}"  # the same run keeps the same colour in every figure


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def metric_label(pairs: Pairs) -> str:
    """Axis label of R with its unit."""
    if pairs.benchmark is None:
        return "training reward (batch mean)" if pairs.metric == "reward" else pairs.metric
    # The evaluator's unit is not recorded; scores never above 1 are fractions, others are taken as percentages.
    unit = "fraction correct" if np.nanmax(pairs.R) <= 1 else "% correct"
    return f"{pairs.benchmark} {pairs.metric} ({unit})"


def _draw_entropy(ax: Axes, run: Run, color: str, prefix: str = "") -> None:
    drawn = [key for key in ENTROPY_LINES if run.has(key)]
    if not drawn:
        raise RunDirError(f"{run.metrics_path}: none of the entropy keys {', '.join(ENTROPY_LINES)} is logged")
    for key in drawn:
        text, style = ENTROPY_LINES[key]
        ax.plot(run.steps, run.column(key), style, color=color, lw=1.4, label=f"{prefix}{text}")
    ax.set_ylabel(ENTROPY_UNIT)
    ax.grid(alpha=0.3)


def plot_runs_entropy(runs: Sequence[Run], path: Path) -> Path:
    """Entropy vs step, one colour per run (solid: seq-mean, dashed: token-mean)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for i, run in enumerate(runs):
        _draw_entropy(ax, run, series_color(i), prefix=f"{run.label}: ")
    ax.set(title="Policy entropy during training", xlabel=STEP_UNIT)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_performance(pairs: Sequence[Pairs], path: Path) -> Path:
    """R (the law's performance measure) vs step, one colour per run."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for i, p in enumerate(pairs):
        # Markers only where points are sparse (evaluated checkpoints); per-step rewards read better as a line.
        ax.plot(p.steps, p.R, marker="o" if len(p.R) <= 100 else None, ms=4, color=series_color(i), label=p.label)
    ax.set(title="Performance during training", xlabel=STEP_UNIT, ylabel=" / ".join({metric_label(p) for p in pairs}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def _draw_law(ax: Axes, fit: LawFit, color: str, label: str, slot: int) -> None:
    """Fitted curve (solid over the observed entropies, dotted where extrapolated to H = 0) and its ceiling."""
    observed = np.linspace(fit.h_min, fit.h_max, 100)
    extrapolated = np.linspace(0.0, fit.h_min, 50)
    ax.plot(observed, predict(fit, observed), "-", color=color, lw=2, label=label)
    ax.plot(extrapolated, predict(fit, extrapolated), ":", color=color, lw=1.5)
    ax.axhline(fit.ceiling, ls="--", color=color, lw=1, alpha=0.7)
    ax.plot([0.0], [fit.ceiling], marker="*", ms=11, color=color, zorder=5)
    ax.annotate(
        f"ceiling b-a = {fit.ceiling:.3g} at H = 0",
        xy=(0.0, fit.ceiling),
        xytext=(8, CEILING_TEXT_PTS[0] + CEILING_TEXT_PTS[1] * slot),  # stacked: equal ceilings stay legible
        textcoords="offset points",
        color=color,
        fontsize="small",
    )


def _make_room_for_ceiling_notes(ax: Axes, ceilings: Sequence[float]) -> None:
    """Raise the y-limit so the notes stacked above the ceiling lines stay inside the axes (under the title)."""
    bottom, top = ax.get_ylim()
    axes_pts = ax.get_position().height * ax.figure.get_figheight() * 72
    for slot, ceiling in enumerate(ceilings):
        # Fraction of the axes height from the line to the top of its note, with a line of slack for the text.
        frac = (CEILING_TEXT_PTS[0] + CEILING_TEXT_PTS[1] * (slot + 1) + 4) / axes_pts
        top = max(top, (ceiling - frac * bottom) / (1 - frac))
    ax.set_ylim(bottom, top)


def plot_law(pairs: Sequence[Pairs], fits: Sequence[LawFit | None], path: Path, joint: LawFit | None = None) -> Path:
    """R vs H per run with its fitted law and ceiling (runs whose fit is None are drawn as points only)."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    drawn = []
    for i, (p, fit) in enumerate(zip(pairs, fits, strict=True)):
        ax.scatter(p.H, p.R, s=16, alpha=0.6, color=series_color(i), label=f"{p.label} (n={len(p.R)})")
        if fit is not None:
            text = f"fit: R = {fit.b:.3g} - {fit.a:.3g} exp(H), R2 = {fit.r2:.3f}"
            _draw_law(ax, fit, series_color(i), text, len(drawn))
            drawn.append(fit)
    if joint is not None:
        text = f"joint fit: R = {joint.b:.3g} - {joint.a:.3g} exp(H), R2 = {joint.r2:.3f}"
        _draw_law(ax, joint, "black", text, len(drawn))
        drawn.append(joint)
    _make_room_for_ceiling_notes(ax, [fit.ceiling for fit in drawn])
    ax.set_xlim(left=-0.03 * max(float(p.H.max()) for p in pairs))  # H = 0, where the ceiling sits, stays in view
    ax.set(
        title=f"Entropy-performance law {LAW}\n(dotted: extrapolation; dashed: ceiling b - a)",
        xlabel=f"policy entropy H = {pairs[0].entropy_key} (nats per token)",
        ylabel=" / ".join({metric_label(p) for p in pairs}),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def make_plots(
    runs: Sequence[Run],
    pairs: Sequence[Pairs],
    fits: Sequence[LawFit | None],
    out_dir: str | os.PathLike[str],
    joint: LawFit | None = None,
) -> list[Path]:
    """The three comparison figures of `entropy-rl plot` (and `fit --plot`) in out_dir; returns their paths."""
    out = Path(out_dir)
    return [
        plot_runs_entropy(runs, out / "entropy_vs_step.png"),
        plot_performance(pairs, out / "performance_vs_step.png"),
        plot_law(pairs, fits, out / "law_fit.png", joint=joint),
    ]


def _draw_trend(ax: Axes, steps: np.ndarray, values: np.ndarray, color: str, label: str) -> None:
    """Per-step values (thin) and their trailing mean (thick): the trend through the batch noise."""
    finite = np.isfinite(values)
    ax.plot(steps, values, color=color, lw=0.8, alpha=0.45, label=f"{label}, per step")
    # A window of ~5 % of the run shows the trend without hiding its shape.
    window = max(1, int(finite.sum()) // 20)
    if window > 1:
        trend = moving_average(values[finite], window)
        ax.plot(steps[finite], trend, color=color, lw=2, label=f"{label}, trailing mean of {window} steps")


def plot_run(run_dir: str | os.PathLike[str]) -> Path:
    """RUN_DIR/entropy_reward.png: entropy (top) and training reward (bottom) vs step of one run.

    Raises RunDirError when the metrics file is missing or logs no entropy or no reward.
    """
    run = load_run(run_dir)
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax_h, ax_r = fig.subplots(2, 1, sharex=True)
    entropy_keys = [key for key in ENTROPY_LINES if run.has(key)]
    if not entropy_keys:
        raise RunDirError(f"{run.metrics_path}: none of the entropy keys {', '.join(ENTROPY_LINES)} is logged")
    _draw_trend(ax_h, run.steps, run.column(entropy_keys[0]), series_color(0), ENTROPY_LINES[entropy_keys[0]][0])
    ax_h.set(title=f"{run.label}: entropy and reward during training", ylabel=ENTROPY_UNIT)
    _draw_trend(ax_r, run.steps, run.column("reward"), series_color(1), "reward")
    ax_r.set(xlabel=STEP_UNIT, ylabel="training reward (batch mean)")
    for ax in (ax_h, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, run.path / "entropy_reward.png")
