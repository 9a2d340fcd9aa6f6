"""The study's Markdown page, <doc_dir>/<name>.md, with its figures <doc_dir>/<name>_*.png.

Everything on it is recomputed from the run directories on every invocation (nothing is carried over from an earlier
page), or from their summaries (summary.py) with `--from_summaries`. One builder per section; `write_page` analyses the
runs, draws the figures and joins the sections.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from entropy_rl.fit import JointFit, LawFit, LawFitError, fit_law
from entropy_rl.rundir import CONFIG_FILE, CURVE_FILE, DEFAULT_ENTROPY_KEY
from entropy_rl.stats import pearson

from .analysis import (
    ALPHA,
    ATTRIBUTION,
    BASELINE,
    LATE_MIN_POINTS,
    MEASURED,
    PREDICTED,
    PREDICTED_PARAM,
    STRONG_R,
    WEAK_R,
    WEAK_R2,
    Comparison,
    Groups,
    RunAnalysis,
    RunResult,
    analyse_run,
    by_method,
    column,
    compare_all,
    compare_methods,
    dynamics,
    joint,
    mean_std,
    paired,
    strength,
    versus_ceiling,
    windowed_r,
)
from .figures import plot_accuracy, plot_dynamics, plot_entropy_bands, plot_pooled_law
from .plan import TIME_FILE
from .power import POWER, detectable_difference, planning_alpha
from .spec import Study, summary_dir

if TYPE_CHECKING:
    from .plan import Planned

Figures = dict[str, Path | None]  # "entropy", "accuracy", "dynamics", "law" -> the file, None: nothing to draw
WINDOW = 5  # measured steps per window of the windowed agreement (cumulative change), as in `entropy-rl train`


# ------------------------------------------------------------------------------------------------ formatting
def _pm(values: Sequence[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _image(path: Path | None, alt: str) -> list[str]:
    return [f"![{alt}]({path.name})", ""] if path is not None else [f"({alt}: nothing to draw.)", ""]


def _wall_span(analyses: Sequence[RunAnalysis]) -> str:
    """Wall-clock span of all runs, from the file times: first run's config written to last run's last evaluation.

    Runs may have been trained by several invocations or workers at once, so summed compute overstates wall time.
    """
    run_dirs = [a.result.run.path for a in analyses]
    starts = [(d / CONFIG_FILE).stat().st_mtime for d in run_dirs if (d / CONFIG_FILE).exists()]
    ends = [(d / CURVE_FILE).stat().st_mtime for d in run_dirs if (d / CURVE_FILE).exists()]
    if not starts or not ends:
        return ""
    return f"Wall clock from the first run's start to the last evaluation: {(max(ends) - min(starts)) / 60:.1f} min."


# ------------------------------------------------------------------------------------------------ findings
COLLAPSE_DROP = 0.7  # the entropy collapse the papers study: most of the starting entropy gone (Cui et al. 2025)


def _collapse_finding(groups: Groups, study: Study) -> list[str]:
    base = groups.get(BASELINE)
    if base is None:
        return [f"- GRPO (`{BASELINE}`) is not in this study, so there is no entropy-collapse check and no baseline."]
    start, end = mean_std(column(base, "start_h"))[0], mean_std(column(base, "end_h"))[0]
    first, final = mean_std(column(base, "first_acc"))[0], mean_std(column(base, "final_acc"))[0]
    change = 100 * (end / start - 1)
    window = f"mean of the first / last {study.fit.window:.0%} of steps, averaged over {len(base)} seed(s)"
    if end <= (1 - COLLAPSE_DROP) * start:
        verdict = f"GRPO (`{BASELINE}`) collapsed: it lost at least {COLLAPSE_DROP:.0%} of its starting entropy"
    else:
        verdict = f"GRPO (`{BASELINE}`) did NOT collapse (lose {COLLAPSE_DROP:.0%} of its starting entropy) here"
    return [
        f"- {verdict}: {DEFAULT_ENTROPY_KEY} went from {start:.3f} to {end:.3f} nats ({abs(change):.0f} % "
        f"{'lower' if change <= 0 else 'higher'}; {window}). "
        f"Its held-out avg@{study.eval.k} went from {first:.3f} (first checkpoint, step {study.save_steps}) to "
        f"{final:.3f} (step {study.steps})."
    ]


def _method_findings(groups: Groups, study: Study) -> list[str]:
    base = groups.get(BASELINE)
    if base is None or len(groups) == 1:
        return []
    lines = []
    entropy, accuracy = compare_methods(groups, "end_h"), compare_methods(groups, "final_acc")
    for method, analyses in groups.items():
        if method == BASELINE:
            continue
        lines.append(
            f"- `{method}` vs `{BASELINE}`: final entropy **{entropy[method].verdict}** "
            f"({_pm(column(analyses, 'end_h'))} vs {_pm(column(base, 'end_h'))}; {_test_text(entropy[method])}); "
            f"final avg@{study.eval.k} **{accuracy[method].verdict}** ({_pm(column(analyses, 'final_acc'))} vs "
            f"{_pm(column(base, 'final_acc'))}; {_test_text(accuracy[method])})."
        )
    others = len(groups) - 1
    higher = {
        name: sum(c.verdict == "higher" for c in found.values()) for name, found in (("H", entropy), ("acc", accuracy))
    }
    summary = (
        f"- {higher['H']} of {others} methods ended with significantly higher entropy than GRPO and "
        f"{higher['acc']} of {others} with significantly higher held-out accuracy. Each comparison is Welch's t-test "
        f'over seeds (difference of the means, its 95 % interval and p-value), and "higher" / "lower" is said only '
        f"where the p-value after Holm's correction across the {others} methods is below {ALPHA}; anything else is "
        "reported as no significant difference, i.e. the method did not help measurably at this scale."
    )
    return [summary, *lines]


def _count_higher(comparisons: dict[str, Comparison]) -> int:
    return sum(c.verdict == "higher" for c in comparisons.values())


def _test_text(comparison: Comparison) -> str:
    """Difference, interval and p-values of a comparison, for a findings line or a table cell."""
    if not np.isfinite(comparison.p):
        return comparison.verdict
    low, high = comparison.ci
    return f"{comparison.diff:+.3f} [{low:+.3f}, {high:+.3f}], p = {comparison.p:.2g}, Holm p = {comparison.p_holm:.2g}"


def _r_text(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def _dynamics_finding(groups: Groups, analyses: Sequence[RunAnalysis]) -> list[str]:
    predicted, measured = dynamics(analyses)
    r = pearson(predicted, measured)
    per_method = [pearson(*dynamics(group)) for group in groups.values()]
    defined = [x for x in per_method if x is not None]
    span = f" (per method from {min(defined):.2f} to {max(defined):.2f})" if defined else ""
    line = (
        f"- Predicted vs measured entropy change per step, logit-space prediction `{PREDICTED}`: Pearson r = "
        f"{_r_text(r)} over all {len(predicted)} measured steps{span}: **{strength(r)}**."
    )
    if r is not None and r < 0:
        line += " The correlation is negative: the first-order prediction points the wrong way here."
    elif r is None or r < WEAK_R:
        line += " The first-order prediction does not track the measured change well here."
    lines = [line]
    param, measured_p = dynamics(analyses, PREDICTED_PARAM)
    if param:
        r_param = pearson(param, measured_p)
        per_method = [pearson(*dynamics(group, PREDICTED_PARAM)) for group in groups.values()]
        defined = [x for x in per_method if x is not None]
        span = f" (per method from {min(defined):.2f} to {max(defined):.2f})" if defined else ""
        lines.append(
            f"- Parameter-space prediction `{PREDICTED_PARAM}` (grad H . the applied update): r = {_r_text(r_param)} "
            f"over {len(param)} measured steps{span}: **{strength(r_param)}**; over windows of {WINDOW} measured "
            f"steps (cumulative change) r = {_r_text(windowed_r(analyses, PREDICTED_PARAM, WINDOW))}, against "
            f"{_r_text(windowed_r(analyses, PREDICTED, WINDOW))} for the logit-space prediction."
        )
    return lines


def _plateau_findings(groups: Groups, study: Study) -> list[str]:
    """Did GRPO stop improving, and does any method end above GRPO's plateau and above its law's ceiling?"""
    base = groups.get(BASELINE)
    if base is None:
        return []
    k = study.eval.k
    half, final = mean_std(column(base, "half_acc"))[0], mean_std(column(base, "final_acc"))[0]
    ceiling = mean_std(column(base, "ceiling"))[0]
    pooled = _pooled_fit(base)
    clause = ""
    if pooled is not None:
        low, high = pooled.ceiling_ci
        interval = f"95 % interval [{low:.3f}, {high:.3f}]"
        fitted = sum(a.pairs is not None for a in base)
        clause = f"; one law fitted to all {fitted} runs' points: {pooled.ceiling:.3f}, {interval}"
    lines = [
        f"- GRPO's held-out avg@{k} went from {half:.3f} at the middle checkpoint to {final:.3f} at the end "
        f"({final - half:+.3f} in the second half of training). The law fitted on GRPO's runs puts its ceiling "
        f"(b − a, accuracy at H = 0) at {ceiling:.3f} (mean over seeds){clause}."
    ]
    lines += _late_gain_finding(base, study)
    if pooled is not None and len(groups) > 1:
        lines.append(_above_ceiling_finding(groups, pooled, k))
    return lines


def _above_ceiling_finding(groups: Groups, pooled: LawFit, k: int) -> str:
    """Each method's final accuracy against the ceiling of GRPO's pooled law (analysis.versus_ceiling)."""
    found = versus_ceiling(groups, pooled)
    verdicts = {"higher": "above", "lower": "below", "no significant difference": "not different from"}
    parts = [
        f"`{method}` {c.diff:+.3f} [{c.ci[0]:+.3f}, {c.ci[1]:+.3f}], Holm p = {c.p_holm:.2g}: "
        f"**{verdicts.get(c.verdict, c.verdict)}** the ceiling"
        for method, c in found.items()
    ]
    return (
        f"- Final avg@{k} per method minus GRPO's ceiling (t-test with the seeds' and the fit's standard errors, "
        "Holm-corrected across the methods): " + "; ".join(parts) + "."
    )


def _late_gain_finding(base: Sequence[RunAnalysis], study: Study) -> list[str]:
    """Is GRPO on a plateau: did the last third of training gain less than the difference the study is planned to
    detect, at 95 % (the interval's upper end below `study.detect`)?"""
    k, points = study.eval.k, mean_std(column(base, "late_points"))[0]
    if not np.isfinite(points) or points < LATE_MIN_POINTS:
        return [
            f"- Plateau: cannot tell, the last third of training holds {points:.0f} checkpoint(s) per run, fewer than "
            f"the {LATE_MIN_POINTS} the test needs (save more often)."
        ]
    gains = column(base, "late_gain")
    # a one-sample t-test over seeds: each run's gain against no gain
    change = compare_all({"late": paired(gains, [0.0] * len(gains))})["late"]
    if not np.isfinite(change.diff):
        return [f"- Plateau: {change.verdict}."]
    low, high = change.ci
    if high < study.detect:
        verdict = f"**a plateau**: the interval's upper end is below the {study.detect} the study is planned to detect"
    elif change.verdict == "higher":
        verdict = "**not a plateau**: accuracy was still rising"
    else:
        verdict = f"**cannot tell**: the interval reaches {study.detect} or more, the seeds cannot rule out a rise"
    return [
        f"- Over the last third of training (the {points:.0f} checkpoints from step "
        f"{mean_std(column(base, 'late_step'))[0]:.0f} to {study.steps}) GRPO's avg@{k} changed by "
        f"{change.diff:+.3f} [{low:+.3f}, {high:+.3f}] (least-squares slope over those checkpoints times their span, "
        f"mean over {len(gains)} seeds with its 95 % t-interval; p = {change.p:.2g}): {verdict}."
    ]


def _pooled_fit(runs: Sequence[RunAnalysis]) -> LawFit | None:
    """One law fitted to the pooled points of the runs (None if it cannot be fitted)."""
    pairs = [a.pairs for a in runs if a.pairs is not None]
    if not pairs:
        return None
    try:
        return fit_law(np.concatenate([p.H for p in pairs]), np.concatenate([p.R for p in pairs]), source="pooled")
    except LawFitError:
        return None


def _law_findings(analyses: Sequence[RunAnalysis], joint_fit: JointFit | None, study: Study) -> list[str]:
    fitted = [a for a in analyses if "r2" in a.numbers]
    if not fitted:
        return ["- The entropy-performance law could not be fitted to any run (see the notes below)."]
    r2 = float(np.nanmedian(column(fitted, "r2")))
    non_positive = sum(a.numbers["a"] <= 0 for a in fitted)
    lines = [
        f"- Law R = b − a·exp(H) per run: median R² = {r2:.2f} over {len(fitted)} runs"
        + (" — **weak**: entropy explains little of the held-out accuracy here." if r2 < WEAK_R2 else ".")
        + f" {non_positive} of {len(fitted)} runs have a ≤ 0 (accuracy does not rise as entropy falls)."
    ]
    early = [a for a in fitted if "early_rmse" in a.numbers]
    if early:
        early_rmse, full_rmse = (float(np.nanmedian(column(early, key))) for key in ("early_rmse", "rmse"))
        low, high = np.nanpercentile(column(early, "early_rmse"), [25, 75])
        n_fit, n = (int(np.nanmedian(column(early, key))) for key in ("early_n", "n"))
        lines.append(
            f"- Fitted on the first {study.fit.early_fraction:.0%} of each run's points ({n_fit} of {n}), the law "
            f"predicts the rest with RMSE {early_rmse:.3f} (median over {len(early)} runs; quartiles {low:.3f}–"
            f"{high:.3f}), "
            f"{early_rmse / full_rmse:.1f}× the full fit's residual RMSE of {full_rmse:.3f} (the noise floor)."
        )
    if joint_fit is not None:
        shared = "consistent with" if joint_fit.p_value >= 0.05 else "not consistent with"
        lines.append(
            f"- One (a, b) for all runs: R² = {joint_fit.fit.r2:.2f}, RMSE {joint_fit.rmse_ratio:.2f}× that of the "
            f"separate fits, F test p = {joint_fit.p_value:.3g}: {shared} coefficients shared across methods and seeds."
        )
    return lines


# ------------------------------------------------------------------------------------------------ tables
def _final_table(groups: Groups, study: Study) -> list[str]:
    tests = [compare_methods(groups, key) if BASELINE in groups else {} for key in ("end_h", "final_acc")]
    rows = []
    for method, analyses in groups.items():
        versus = [
            f"{found[method].verdict} ({_test_text(found[method])})" if method in found else "—" for found in tests
        ]
        numbers = [_pm(column(analyses, key)) for key in ("start_h", "end_h", "final_acc", "final_pass", "eval_h")]
        rows.append([f"`{method}`", str(len(analyses)), *numbers, *versus])
    k = study.eval.k
    header = [
        "method", "seeds", "start H", "final H", f"final avg@{k}", f"final pass@{k}", "eval entropy",
        f"H vs {BASELINE}", f"avg@{k} vs {BASELINE}",
    ]  # fmt: skip
    return _table(header, rows)


def _law_table(groups: Groups, joint_fit: JointFit | None, study: Study) -> list[str]:
    keys = ("a", "b", "ceiling", "r2", "rmse", "early_rmse")
    rows = [[f"`{method}`", *(_pm(column(analyses, key)) for key in keys)] for method, analyses in groups.items()]
    if joint_fit is not None:
        fit: LawFit = joint_fit.fit
        low, high = fit.ceiling_ci
        numbers = [f"{fit.a:.3f}", f"{fit.b:.3f}", f"{fit.ceiling:.3f} [{low:.3f}, {high:.3f}]"]
        rows.append(["**joint (all runs)**", *numbers, f"{fit.r2:.3f}", f"{fit.rmse:.3f}", "—"])
    early = f"early-{study.fit.early_fraction:.0%} prediction RMSE"
    return _table(["method", "a", "b", "ceiling b − a", "R²", "fit RMSE", early], rows)


def _dynamics_table(groups: Groups) -> list[str]:
    rows = []
    for method, analyses in groups.items():
        predicted, measured = dynamics(analyses)
        r, r_param = pearson(predicted, measured), pearson(*dynamics(analyses, PREDICTED_PARAM))
        rows.append(
            [
                f"`{method}`",
                str(len(predicted)),
                _r_text(r),
                _r_text(windowed_r(analyses, PREDICTED, WINDOW)),
                _r_text(r_param),
                _r_text(windowed_r(analyses, PREDICTED_PARAM, WINDOW)),
                strength(r_param),
            ]
        )
    header = [
        "method", "measured steps (all seeds)", "logit-space r", f"logit-space r, windows of {WINDOW}",
        "parameter-space r", f"parameter-space r, windows of {WINDOW}", "strength (parameter space)",
    ]  # fmt: skip
    return _table(header, rows)


def _attribution_table(groups: Groups) -> list[str]:
    rows = [
        [f"`{method}`", *(_pm(column(analyses, f"dH_{name}"), 4) for name in ("measured", *ATTRIBUTION))]
        for method, analyses in groups.items()
    ]
    return _table(["method", "measured", *(f"`{name}`" for name in ATTRIBUTION)], rows)


def _runs_table(analyses: Sequence[RunAnalysis], study: Study) -> list[str]:
    rows = [
        [
            f"`{a.result.method}`",
            str(a.result.seed),
            a.result.status,
            f"{a.result.train_s:.0f}",
            f"{study.steps / a.result.train_s:.1f}" if a.result.train_s > 0 else "n/a",
            f"{a.result.eval_s:.0f}",
        ]
        for a in analyses
    ]
    return _table(["method", "seed", "this invocation", "train s", "steps/s", "eval s"], rows)


# ------------------------------------------------------------------------------------------------ sections
def _intro_section(study: Study, groups: Groups, problems: int) -> list[str]:
    k, bench = study.eval.k, study.eval.benchmark
    return [
        f"# Study `{study.name}`: GRPO and its entropy regularizers, side by side",
        "",
        "Generated by `entropy-rl study` (entropy_rl/study/) from the run directories under "
        f"`{study.output}`; every number, table and figure on this page is recomputed on each invocation. Do not edit "
        "it by hand: re-run the command below.",
        "",
        f"Setup: {len(groups)} methods × {study.seeds} seed(s), {study.steps} optimizer steps each; a checkpoint every "
        f"{study.save_steps} steps, evaluated on the held-out `{bench}` set ({problems} problems,"
        f" k = {k} samples at T = {study.eval.temperature:g}: avg@{k} is the accuracy of one sample, "
        f"pass@{k} that of the best of {k}). H is the training entropy `{DEFAULT_ENTROPY_KEY}` "
        f"(docs/metrics.md); the law's R is `{study.fit.metric}`. Methods and their settings: recipes named in the "
        "config below (docs/regularizers.md).",
        "",
    ]


def _findings_section(
    groups: Groups, analyses: Sequence[RunAnalysis], joint_fit: JointFit | None, study: Study
) -> list[str]:
    return [
        "## Findings",
        "",
        *_collapse_finding(groups, study),
        *_method_findings(groups, study),
        *_plateau_findings(groups, study),
        *_dynamics_finding(groups, analyses),
        *_law_findings(analyses, joint_fit, study),
        "",
    ]


def _training_section(figures: Figures) -> list[str]:
    return [
        "## Entropy and accuracy during training",
        "",
        *_image(figures["entropy"], "entropy vs step per method"),
        *_image(figures["accuracy"], "held-out accuracy vs step per method"),
    ]


def _final_section(groups: Groups, study: Study) -> list[str]:
    k = study.eval.k
    return [
        "## Final numbers per method",
        "",
        f"Mean ± standard deviation over seeds. start / final H: `{DEFAULT_ENTROPY_KEY}` averaged over the first / "
        f"last {study.fit.window:.0%} of steps. final avg@{k}, pass@{k} and eval entropy (mean token entropy of the "
        f'evaluation samples): the checkpoint of step {study.steps}. "vs {BASELINE}": the difference of the means '
        f"with its 95 % interval and p-value (Welch's t-test over seeds) and Holm's corrected p across the methods; "
        f"higher / lower only where the corrected p is below {ALPHA}.",
        "",
        *_final_table(groups, study),
        "",
        *_power_lines(groups, study),
        "",
    ]


def _power_lines(groups: Groups, study: Study) -> list[str]:
    """Is the evaluation's own error small against the seed spread, and what difference could these seeds detect?"""
    if BASELINE not in groups:
        return []
    alpha = planning_alpha(len(groups) - 1)
    base_sd = mean_std(column(groups[BASELINE], "final_acc"))[1]
    rows = []
    for method, analyses in groups.items():
        sd = mean_std(column(analyses, "final_acc"))[1]
        eval_se = mean_std(column(analyses, "final_acc_se"))[0]
        ratio = f"{eval_se / sd:.2f}" if np.isfinite(eval_se) and sd > 0 else "—"
        detectable = "—"
        if method != BASELINE and np.isfinite(sd) and np.isfinite(base_sd):
            detectable = f"{detectable_difference(sd, base_sd, len(analyses), alpha):.3f}"
        rows.append([f"`{method}`", str(len(analyses)), f"{sd:.4f}", f"{eval_se:.4f}", ratio, detectable])
    k = study.eval.k
    return [
        f"Seed spread against the evaluation's own error: the standard deviation of final avg@{k} over seeds, the "
        f"evaluation's sampling standard error of one run's avg@{k} (`avg@k_se`, mean over seeds; "
        f"{study.eval.problems} problems × {k} samples), their ratio (below 1/3: the spread is the training's, not "
        f"the evaluation's), and the smallest difference from `{BASELINE}` these seeds detect with "
        f"{POWER:.0%} power (Welch's test at {ALPHA}/{len(groups) - 1} = {alpha:.3g}, Holm's first step; "
        "`entropy-rl study --dry_run` plans the seeds for a chosen difference).",
        "",
        *_table(
            ["method", "seeds", f"std of final avg@{k}", "evaluation s.e.", "s.e. / std", "detectable difference"],
            rows,
        ),
    ]


def _dynamics_section(groups: Groups, study: Study, figures: Figures) -> list[str]:
    return [
        "## Predicted vs measured entropy change",
        "",
        f"Every {study.dynamics_every} step(s) the trainer re-evaluates the step's batch after the update "
        f"(`{MEASURED}`) next to two first-order predictions (docs/metrics.md): the logit-space `{PREDICTED}`, "
        "which has no step size in it (all runs share the learning rate, so pooling them keeps the correlation "
        f"meaningful), and the parameter-space `{PREDICTED_PARAM}`, the entropy gradient dotted with the update the "
        f"optimizer applied. Windows: each run's measured steps in consecutive groups of {WINDOW}, predicted and "
        f"measured change summed per group. |r| ≥ {STRONG_R}: strong, ≥ {WEAK_R}: moderate, below: weak.",
        "",
        *_image(figures["dynamics"], "predicted vs measured entropy change"),
        *_dynamics_table(groups),
        "",
        "Where the entropy change comes from: the parameter-space prediction split by token group, the quadrants "
        "sign(A) × sign(S − N) (A > 0, S > N and A < 0, S < N lower entropy by Wang et al.'s analysis) under the "
        "optimizer's preconditioner, and `other` "
        + (
            "(loss terms outside the PPO-clip surrogate and weight decay; each quadrant includes what its earlier "
            "gradients carry through the optimizer's momentum, `dynamics_momentum_groups`)"
            if any(a.numbers.get("momentum_groups") for analyses in groups.values() for a in analyses)
            else "(Adam's momentum from earlier steps, and loss terms outside the PPO-clip surrogate; "
            "momentum-attribution.md splits it too, and adds the prediction's second-order term, on runs of GRPO "
            "and of every method of both studies with their settings)"
        )
        + ". Summed over each run's measured steps (nats), mean ± std over seeds:",
        "",
        *_attribution_table(groups),
        "",
    ]


def _law_section(groups: Groups, joint_fit: JointFit | None, study: Study, figures: Figures) -> list[str]:
    return [
        "## Entropy-performance law R = b − a·exp(H)",
        "",
        f"Fitted per run (docs/fit.md) on the evaluated checkpoints: H = the training entropy (`entropy/seq_mean`) "
        f"averaged over the {study.save_steps} steps up to the checkpoint, R = {study.eval.benchmark} "
        f"`{study.fit.metric}`. Mean ± std over seeds of each run's a, b, ceiling (R at H = 0, an extrapolation), R² "
        f"and residual RMSE; the early prediction fits the first {study.fit.early_fraction:.0%} of the points and "
        "reports the RMSE on the rest. The joint row fits one (a, b) to every run. The figure pools each method's "
        "seeds into one colour and draws the joint fit.",
        "",
        *_image(figures["law"], "held-out accuracy vs entropy with the joint law fit"),
        *_law_table(groups, joint_fit, study),
        "",
    ]


def _notes_section(analyses: Sequence[RunAnalysis], joint_error: str | None) -> list[str]:
    notes = [note for a in analyses for note in a.notes] + ([f"joint fit: {joint_error}"] if joint_error else [])
    return ["Fits that could not be made:", "", *(f"- {note}" for note in notes), ""] if notes else []


def _time_section(analyses: Sequence[RunAnalysis], study: Study, invocation_s: float) -> list[str]:
    train_total = sum(a.result.train_s for a in analyses)
    eval_total = sum(a.result.eval_s for a in analyses)
    return [
        "## Time",
        "",
        f"Recorded compute over all runs: training {train_total / 60:.1f} min (the checkpoints' held-out evaluations "
        f"run during training and are counted in it) + evaluation afterwards {eval_total / 60:.1f} min "
        f"= {(train_total + eval_total) / 60:.1f} min (per run in RUN_DIR/{TIME_FILE}, summed over the invocations "
        f"that worked on it; one killed while training counts until its last metrics row). "
        f"This invocation took {invocation_s / 60:.1f} min in all. {_wall_span(analyses)}",
        "",
        *_runs_table(analyses, study),
        "",
    ]


def _reproduce_section(study: Study, argv: Sequence[str], data: dict[str, Any], plans: Sequence[Planned]) -> list[str]:
    rerender = [*argv, *(["--from_summaries"] if "--from_summaries" not in argv else [])]
    return [
        "## Reproduce",
        "",
        "```bash",
        shlex.join(["entropy-rl", "study", *argv]),
        "```",
        "",
        f"The per-run summaries this page was computed from are in `{summary_dir(study).name}/` next to it (each run's "
        "config, held-out evaluations, recorded times and the metrics the page reads); "
        f"`{shlex.join(['entropy-rl', 'study', *rerender])}` re-renders the page and its figures from them alone.",
        "",
        "The study config as used (the YAML with the command-line overrides applied):",
        "",
        "```yaml",
        yaml.safe_dump(data, sort_keys=False).rstrip(),
        "```",
        "",
        "Each run is `entropy-rl train` with these arguments (seed 0 shown; other seeds change `--seed` and the "
        "directory):",
        "",
        "```bash",
        *(shlex.join(["entropy-rl", "train", *p.argv]) for p in plans if p.seed == 0),
        "```",
        "",
    ]


# ------------------------------------------------------------------------------------------------ the page
def draw_figures(groups: Groups, joint_fit: JointFit | None, study: Study) -> Figures:
    out, name = study.doc_dir, study.name
    window = max(1, round(study.fit.window * study.steps))
    return {
        "entropy": plot_entropy_bands(groups, window, out / f"{name}_entropy.png"),
        "accuracy": plot_accuracy(groups, study, out / f"{name}_accuracy.png"),
        "dynamics": plot_dynamics(groups, out / f"{name}_dynamics.png"),
        "law": plot_pooled_law(groups, joint_fit, out / f"{name}_law.png"),
    }


def write_page(
    study: Study,
    data: dict[str, Any],
    plans: Sequence[Planned],
    results: Sequence[RunResult],
    problems: int,
    argv: Sequence[str],
    invocation_s: float,
) -> Path:
    """<doc_dir>/<name>.md and its figures, from the runs' files alone (nothing carried over from earlier pages).

    `data` is the study mapping as used and `argv` the study's command-line arguments (both shown to reproduce it),
    `problems` the number of benchmark problems evaluated, `invocation_s` how long this invocation took."""
    analyses = [analyse_run(result, study) for result in results]
    groups = by_method(analyses)
    joint_fit, joint_error = joint(analyses)
    figures = draw_figures(groups, joint_fit, study)
    lines = [
        *_intro_section(study, groups, problems),
        *_findings_section(groups, analyses, joint_fit, study),
        *_training_section(figures),
        *_final_section(groups, study),
        *_dynamics_section(groups, study, figures),
        *_law_section(groups, joint_fit, study, figures),
        *_notes_section(analyses, joint_error),
        *_time_section(analyses, study, invocation_s),
        *_reproduce_section(study, argv, data, plans),
    ]
    page = study.doc_dir / f"{study.name}.md"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines))
    return page
