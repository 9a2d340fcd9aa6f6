"""How many seeds a study needs, decided before its runs: the power of Welch's test from a pilot's seed spreads.

`entropy-rl study --dry_run` prints the plan (`plan_lines`) from the finished runs of a pilot study (by default the
study's own output); the page reports, for the seeds actually run, the smallest difference they could detect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import nct
from scipy.stats import t as t_distribution

from entropy_rl.errors import EntropyRLError
from entropy_rl.rundir import FINAL_DIR, load_run

from .analysis import ALPHA, BASELINE, eval_curve, mean_std
from .plan import is_restored
from .spec import Study

POWER = 0.8  # the chance of detecting a true difference that a study is planned for
MIN_SEEDS = 5  # never plan fewer: below this the seed spread itself is too uncertain to plan with


def welch_power(sd: float, base_sd: float, seeds: int, difference: float, alpha: float) -> float:
    """Chance that Welch's two-sided test at level `alpha` finds a true `difference` of the means, with `seeds` runs a
    side whose seed standard deviations are `sd` and `base_sd` (noncentral t, Welch-Satterthwaite df)."""
    variance = (sd**2 + base_sd**2) / seeds
    df = (sd**2 + base_sd**2) ** 2 * (seeds - 1) / (sd**4 + base_sd**4)
    critical, shift = t_distribution.ppf(1 - alpha / 2, df), difference / math.sqrt(variance)
    return float(nct.sf(critical, df, shift) + nct.cdf(-critical, df, shift))


def seeds_needed(sd: float, base_sd: float, difference: float, alpha: float, most: int = 1000) -> int | None:
    """Fewest seeds a side for POWER to detect `difference` at level `alpha`; None if more than `most`."""
    if sd == 0 and base_sd == 0:
        return 2
    return next((n for n in range(2, most + 1) if welch_power(sd, base_sd, n, difference, alpha) >= POWER), None)


def detectable_difference(sd: float, base_sd: float, seeds: int, alpha: float) -> float:
    """The smallest difference that `seeds` runs a side detect with POWER at level `alpha` (bisection: power grows
    with the difference)."""
    if sd == 0 and base_sd == 0:
        return 0.0
    low, high = 0.0, 10 * (sd + base_sd)
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if welch_power(sd, base_sd, seeds, middle, alpha) < POWER else (low, middle)
    return high


def planning_alpha(methods: int) -> float:
    """The level the first (smallest-p) of Holm's comparisons must pass: ALPHA over the number of methods compared.
    Planning for it is conservative for the later ones."""
    return ALPHA / max(methods, 1)


def _finished(run_dir: Path) -> bool:
    return (run_dir / FINAL_DIR).is_dir() or is_restored(run_dir)


def pilot_accuracies(study: Study, pilot: str | None = None, summarized: Sequence[Path] = ()) -> dict[str, list[float]]:
    """Held-out avg@k at the last evaluated checkpoint of each finished run (its final/ model saved, or restored from
    its summary) under the pilot's output root (default: this study's), and of the `summarized` runs (summaries of
    this study's runs that have no directory yet: <summaries>/<method>/seed<k>), per method. A run still training is
    left out: its last checkpoint is not its end, and a study planned while its later seeds train would read them too
    early."""
    root = study.output if pilot is None else Path(pilot)
    found: dict[str, list[float]] = {}
    for method in study.methods:
        run_dirs = {path.name: path for path in summarized if path.parent.name == method.name}
        run_dirs |= {path.name: path for path in (root / method.name).glob("seed*") if _finished(path)}
        for name in sorted(run_dirs):
            try:
                curve = eval_curve(load_run(run_dirs[name]), study.eval.benchmark)
            except EntropyRLError:
                continue  # not a run (yet): nothing to learn from
            if curve:
                found.setdefault(method.name, []).append(float(curve[-1]["avg@k"]))
    return found


def plan_lines(study: Study, accuracies: Mapping[str, Sequence[float]], source: str) -> list[str]:
    """The power plan: seeds per method needed to detect `study.detect` in final avg@k against GRPO."""
    others = [m.name for m in study.methods if m.name != BASELINE]
    alpha = planning_alpha(len(others))
    head = (
        f"Power plan ({source}): seeds a side for {POWER:.0%} power to detect a difference of {study.detect} in final "
        f"avg@{study.eval.k} against {BASELINE}, Welch's test at level {ALPHA}/{len(others)} = {alpha:.4g} (the first "
        "step of Holm's correction)"
    )
    base = [v for v in accuracies.get(BASELINE, []) if np.isfinite(v)]
    if len(base) < 2:
        return [
            head,
            f"  no pilot: {len(base)} evaluated run(s) of {BASELINE} under {source}; train at least 2 seeds of every "
            "method first (e.g. --seeds 2, fewer --steps) and point --pilot at that output",
        ]
    base_sd = mean_std(base)[1]
    lines = [head, f"  {BASELINE}: seed std {base_sd:.4f} over {len(base)} runs"]
    needed = []
    for name in others:
        values = [v for v in accuracies.get(name, []) if np.isfinite(v)]
        if len(values) < 2:
            lines.append(f"  {name}: {len(values)} evaluated run(s) in the pilot; needs 2 for a spread")
            continue
        sd = mean_std(values)[1]
        seeds = seeds_needed(sd, base_sd, study.detect, alpha)
        needed.append(seeds if seeds is not None else math.inf)
        lines.append(f"  {name}: seed std {sd:.4f} over {len(values)} runs -> {seeds or 'more than 1000'} seeds")
    if needed:
        most = max(needed)
        verdict = f"{max(MIN_SEEDS, most)} seeds" if math.isfinite(most) else "more seeds than can be run"
        lines.append(f"  the study needs {verdict} (the most any method needs, and at least {MIN_SEEDS})")
    return lines
