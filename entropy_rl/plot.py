"""Figures of runs: entropy and performance over training steps, and the entropy-performance law R = b - a exp(H).

`make_plots` writes entropy_vs_step.png, performance_vs_step.png and law_fit.png (runs overlaid, labelled by
regularizer and seed); `plot_run(run_dir)` draws one run's entropy and reward into RUN_DIR/entropy_reward.png and
`plot_dynamics(run)` its token dynamics (covariance, predicted vs measured entropy change, attribution by token group)
into RUN_DIR/dynamics.png (the trainer's command calls both at the end). The command `entropy-rl plot` is
entropy_rl.cli.plot.

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

from .fit import LAW, LawFit, Pairs, band, moving_average, predict
from .param_prediction import QUADRANTS
from .rundir import Run, RunDirError, load_run

ENTROPY_LINES = {  # metrics.jsonl key -> (legend text, line style)
    "entropy/seq_mean": ("seq-mean (H of the law)", "-"),
    "entropy/token_mean": ("token-mean", "--"),
}
ENTROPY_UNIT = "entropy (nats per token)"
STEP_UNIT = "optimizer step"
DPI = 130


def series_color(i: int) -> str:
    return f"C{i % 10}"  # the same run keeps the same colour in every figure


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def metric_label(pairs: Pairs) -> str:
    """Axis label of R with its unit, from what the metric is: the evaluator's scores are fractions by definition."""
    if pairs.benchmark is None:
        return "training reward (batch mean)" if pairs.metric == "reward" else pairs.metric
    if pairs.metric == "avg@k":
        unit = "fraction of samples correct"
    else:
        unit = f"fraction of problems solved within {pairs.metric.removeprefix('pass@')} samples"
    return f"{pairs.benchmark} {pairs.metric}\n({unit})"  # two lines: a long name stays inside a short axis


def measure_groups(pairs: Sequence[Pairs]) -> list[list[int]]:
    """Indices of the runs that share one performance measure (metric and benchmark), in first-seen order.

    Runs with different measures (a training reward and a held-out avg@k) get separate axes: one y-axis would put
    numbers of different meaning side by side."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault((p.metric, p.benchmark), []).append(i)
    return list(groups.values())


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points with a finite y: matplotlib breaks a line at every NaN, so one null every other step erases it."""
    keep = np.isfinite(y)
    return x[keep], y[keep]


def _draw_entropy(ax: Axes, run: Run, color: str, prefix: str = "") -> None:
    drawn = [key for key in ENTROPY_LINES if run.has(key)]
    if not drawn:
        raise RunDirError(f"{run.metrics_path}: none of the entropy keys {', '.join(ENTROPY_LINES)} is logged")
    for key in drawn:
        text, style = ENTROPY_LINES[key]
        ax.plot(*_finite(run.steps, run.column(key)), style, color=color, lw=1.4, label=f"{prefix}{text}")
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


def _axes_per_group(fig: Figure, groups: list[list[int]], height: float) -> list[Axes]:
    fig.set_size_inches(8, height * len(groups))
    return list(np.atleast_1d(fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]))


def plot_performance(pairs: Sequence[Pairs], path: Path) -> Path:
    """R (the law's performance measure) vs step, one colour per run, one axis per performance measure."""
    fig = Figure(layout="constrained")
    groups = measure_groups(pairs)
    for ax, group in zip(_axes_per_group(fig, groups, 5 if len(groups) == 1 else 3.5), groups, strict=True):
        for i in group:
            p = pairs[i]
            # Markers only where points are sparse (evaluated checkpoints); per-step rewards read better as a line.
            ax.plot(p.steps, p.R, marker="o" if len(p.R) <= 100 else None, ms=4, color=series_color(i), label=p.label)
        ax.set(ylabel=metric_label(pairs[group[0]]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.axes[0].set_title("Performance during training")
    fig.axes[-1].set_xlabel(STEP_UNIT)
    return save_figure(fig, path)


def _draw_law(ax: Axes, fit: LawFit, color: str, label: str) -> None:
    """Fitted curve (solid over the observed entropies, dotted where extrapolated to H = 0), its pointwise 95 % band
    and its ceiling, whose value goes into the legend (a note in the axes would cross curves)."""
    observed = np.linspace(fit.h_min, fit.h_max, 100)
    extrapolated = np.linspace(0.0, fit.h_min, 50)
    ax.plot(observed, predict(fit, observed), "-", color=color, lw=2, label=label)
    ax.plot(extrapolated, predict(fit, extrapolated), ":", color=color, lw=1.5)
    grid = np.linspace(0.0, fit.h_max, 150)
    ax.fill_between(grid, *band(fit, grid), color=color, alpha=0.15, lw=0, label="95% band")
    ceiling = f"ceiling b - a = {fit.ceiling:.3g} [{fit.ceiling_ci[0]:.3g}, {fit.ceiling_ci[1]:.3g}]"
    ax.axhline(fit.ceiling, ls="--", color=color, lw=1, alpha=0.7, label=f"{ceiling} at H = 0")
    ax.plot([0.0], [fit.ceiling], marker="*", ms=11, color=color, zorder=5)


def _draw_law_axes(ax: Axes, pairs: Sequence[Pairs], fits: Sequence[LawFit | None], group: list[int]) -> None:
    for i in group:
        p, fit = pairs[i], fits[i]
        ax.scatter(p.H, p.R, s=16, alpha=0.6, color=series_color(i), label=f"{p.label} (n={len(p.R)})")
        if fit is not None:
            _draw_law(ax, fit, series_color(i), f"fit: R = {fit.b:.3g} - {fit.a:.3g} exp(H), R2 = {fit.r2:.3f}")
    ax.set_xlim(left=-0.03 * max(float(pairs[i].H.max()) for i in group))  # H = 0, the ceiling, stays in view
    ax.set_ylabel(metric_label(pairs[group[0]]))
    ax.grid(alpha=0.3)


def plot_law(pairs: Sequence[Pairs], fits: Sequence[LawFit | None], path: Path, joint: LawFit | None = None) -> Path:
    """R vs H per run with its fitted law and ceiling (runs whose fit is None are drawn as points only); one axis per
    performance measure. The legend sits below the axes, where it hides no point or curve."""
    fig = Figure(layout="constrained")
    groups = measure_groups(pairs)
    axes = _axes_per_group(fig, groups, 7 if len(groups) == 1 else 5)
    for ax, group in zip(axes, groups, strict=True):
        _draw_law_axes(ax, pairs, fits, group)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if joint is not None:  # a joint fit needs one measure, so there is one axis
        _draw_law(axes[0], joint, "black", f"joint fit: R = {joint.b:.3g} - {joint.a:.3g} exp(H), R2 = {joint.r2:.3f}")
        axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.set_figwidth(12)
    axes[0].set_title(f"Entropy-performance law {LAW}\n(dotted: extrapolation; dashed: ceiling b - a at H = 0)")
    axes[-1].set_xlabel(f"policy entropy H = {pairs[0].entropy_key} (nats per token)")
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
    ax.plot(steps[finite], values[finite], color=color, lw=0.8, alpha=0.45, label=f"{label}, per step")
    # A window of ~5 % of the run shows the trend without hiding its shape.
    window = max(1, int(finite.sum()) // 20)
    if window > 1:
        trend = moving_average(values[finite], window)
        ax.plot(steps[finite], trend, color=color, lw=2, label=f"{label}, trailing mean of {window} steps")


def _draw_curve(ax_h: Axes, ax_r: Axes, curve: Sequence[dict]) -> None:
    """The held-out evaluations of curve.jsonl: accuracy (avg@k) beside the training reward, the responses' entropy
    beside the training entropy; one series per benchmark."""
    for i, name in enumerate(sorted({str(row.get("benchmark")) for row in curve})):
        rows = sorted((r for r in curve if str(r.get("benchmark")) == name), key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        color = series_color(2 + i)
        ax_r.plot(steps, [r["avg@k"] for r in rows], "o-", color=color, lw=1.5, label=f"held-out avg@k ({name})")
        entropies = [r.get("eval_entropy") for r in rows]
        if all(isinstance(h, int | float) for h in entropies):
            ax_h.plot(steps, entropies, "o--", color=color, lw=1, label=f"held-out response entropy ({name})")


def plot_run(run_dir: str | os.PathLike[str]) -> Path:
    """RUN_DIR/entropy_reward.png: entropy (top) and training reward (bottom) vs step of one run, with the held-out
    accuracy and response entropy of curve.jsonl (written during training or by `entropy-rl eval --run`) beside them.

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
    if run.curve:
        _draw_curve(ax_h, ax_r, run.curve)
    ax_r.set(xlabel=STEP_UNIT, ylabel="reward / held-out accuracy" if run.curve else "training reward (batch mean)")
    for ax in (ax_h, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, run.path / "entropy_reward.png")


# Predictions drawn against the measured entropy change: key -> legend text.
PREDICTIONS = {
    "dynamics/predicted_dH": "logit space, -A (S - N) per token",
    "dynamics/predicted_dH_param": "parameter space, grad H . (applied update)",
}
QUADRANT_TEXT = {
    "pos_adv_S_gt_N": "A > 0, S > N",
    "pos_adv_S_lt_N": "A > 0, S < N",
    "neg_adv_S_gt_N": "A < 0, S > N",
    "neg_adv_S_lt_N": "A < 0, S < N",
    "other": "other (momentum, weight decay, other loss terms)",
}
# With dynamics_momentum_groups a quadrant's line adds the part its earlier gradients carry, and these go together.
REST_PARTS = ("rest", "carried/rest", "weight_decay")
REST_TEXT = "rest (other loss terms, weight decay)"


def has_dynamics(run: Run) -> bool:
    return run.has("dynamics/measured_dH")


def _draw_predictions(ax: Axes, run: Run, measured: np.ndarray, rows: np.ndarray) -> None:
    """Each prediction against the measured change. The logit-space one has no step size in it (it is per unit
    logit step), so it gets its own y-axis on the right; the parameter-space one shares the measured change's units."""
    from .stats import pearson

    axes = {"dynamics/predicted_dH": ax.twinx(), "dynamics/predicted_dH_param": ax}
    handles = []
    for i, (key, text) in enumerate(PREDICTIONS.items()):
        if not run.has(key):
            continue
        predicted = run.column(key)[rows]
        ok = np.isfinite(predicted)
        r = pearson(list(predicted[ok]), list(measured[ok]))
        label = f"{text}: r = {r:.2f}" if r is not None else text
        handles.append(
            axes[key].scatter(measured[ok], predicted[ok], s=14, alpha=0.7, color=series_color(i + 2), label=label)
        )
    span = np.nanmax(np.abs(measured)) if measured.size else 1.0
    (line,) = ax.plot([-span, span], [-span, span], color="black", lw=0.8, ls=":", label="parameter space = measured")
    axes["dynamics/predicted_dH"].set_ylabel("logit-space prediction (per unit step, right axis)")
    ax.set(
        title="Predicted vs measured entropy change per measured step",
        xlabel="measured change of the batch's mean token entropy (nats)",
        ylabel="parameter-space prediction (nats)",
    )
    ax.legend(handles=[*handles, line], fontsize="small", loc="upper left")


def _draw_attribution(ax: Axes, run: Run, steps: np.ndarray, rows: np.ndarray) -> None:
    """Cumulative entropy change by token group over the measured steps, next to the measured total."""
    ax.plot(steps, np.nancumsum(run.column("dynamics/measured_dH")[rows]), color="black", lw=2, label="measured")
    momentum = run.has("dynamics/dH_param/rest")
    for i, name in enumerate((*QUADRANTS, "other")):
        keys = [f"dynamics/dH_param/{name}"]
        if momentum and name in QUADRANTS:
            keys.append(f"dynamics/dH_param/carried/{name}")
        if run.has(keys[0]):
            values = sum(np.nan_to_num(run.column(key)[rows]) for key in keys)
            label = QUADRANT_TEXT[name] + (" (with its carried momentum)" if len(keys) > 1 else "")
            if momentum and name == "other":
                label = "other (prediction - parts)"
            ax.plot(steps, np.cumsum(values), color=series_color(i + 4), lw=1.4, label=label)
    if momentum:
        values = sum(np.nan_to_num(run.column(f"dynamics/dH_param/{key}")[rows]) for key in REST_PARTS)
        ax.plot(steps, np.cumsum(values), color=series_color(9), lw=1.4, label=REST_TEXT)
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set(
        title="Where the entropy change comes from (parameter-space split by token group)",
        xlabel=STEP_UNIT,
        ylabel="entropy change summed over measured steps (nats)",
    )


def plot_dynamics(run: Run, path: Path | None = None) -> Path:
    """Three panels: Cov(log p, A) vs step, predicted vs measured entropy change (both predictions, with Pearson r),
    and the cumulative attribution by quadrant sign(A) x sign(S - N). Default path: RUN_DIR/dynamics.png."""
    if not has_dynamics(run):
        raise RunDirError(f"{run.metrics_path}: no dynamics/measured_dH logged (dynamics_every=0, or no step measured)")
    measured_all = run.column("dynamics/measured_dH")
    rows = np.isfinite(measured_all)
    fig = Figure(figsize=(8, 12), layout="constrained")
    ax_cov, ax_pred, ax_attr = fig.subplots(3, 1)
    _draw_trend(ax_cov, run.steps, run.column("cov/logp_adv"), series_color(0), "Cov(log p, A)")
    ax_cov.axhline(0.0, color="grey", lw=0.6)
    ax_cov.set(
        title=f"{run.label}: Cov(log p, A) over the step's tokens (> 0 drives entropy down)",
        xlabel=STEP_UNIT,
        ylabel="covariance",
    )
    _draw_predictions(ax_pred, run, measured_all[rows], rows)
    _draw_attribution(ax_attr, run, run.steps[rows], rows)
    for ax in (ax_cov, ax_pred, ax_attr):
        ax.grid(alpha=0.3)
    for ax in (ax_cov, ax_attr):
        ax.legend(fontsize="small")
    return save_figure(fig, path or run.path / "dynamics.png")
