"""`entropy-rl study`: GRPO and every regularizer x seeds on one task, evaluated, fitted and written up as one page.

    entropy-rl study --config recipes/toy/study.yaml                   # the toy study, docs/results/toy.md
    entropy-rl study --config recipes/toy/study.yaml --dry-run         # the runs, their state, their train commands
    entropy-rl study --quick --output runs/study-quick                 # CI miniature (doc in runs/study-quick/docs)
    entropy-rl study --steps 4 --seeds 1 --methods none,clip_cov --eval-problems 16 --output runs/mini --doc-dir /tmp/d

For each method and seed, in this process and one after another: train (`entropy_rl.train`, the method's recipe plus
the study's steps, seed and checkpoint interval), evaluate every checkpoint on the held-out benchmark
(`entropy_rl.evaluate`, rows in RUN_DIR/curve.jsonl). Then fit the entropy-performance law per run, jointly and from
the first 15 % of each run (`entropy_rl.fit`), correlate the predicted and measured entropy changes, and write
<doc_dir>/<name>.md with its figures <doc_dir>/<name>_*.png, regenerated entirely on every invocation.

A run is finished when its final/ model exists and metrics.jsonl has one row per step: a re-run skips it (and the
evaluator skips evaluated checkpoints), resumes an unfinished run from its last checkpoint, and refuses a run
directory trained with other settings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .benchmarks import Benchmark, load_benchmark
from .config import EntropyGRPOConfig
from .errors import ConfigError, check
from .evaluate import EvalSettings, evaluate_run, list_checkpoints
from .fit import (
    CONFIG_FILE,
    CURVE_FILE,
    DEFAULT_ENTROPY_KEY,
    JointFit,
    LawFit,
    LawFitError,
    Pairs,
    Run,
    fit_early,
    fit_joint,
    fit_law,
    load_pairs,
    load_run,
    moving_average,
)
from .grading import Grader
from .jsonl import read_rows
from .plot import ENTROPY_UNIT, STEP_UNIT, plot_law, save_figure, series_color
from .stats import pearson
from .train import TrainScriptArguments, parse_args, run

DEFAULT_CONFIG = "recipes/toy/study.yaml"
TIME_FILE = "study_time.json"  # per run: seconds spent training and evaluating, summed over invocations
BASELINE = "none"
PREDICTED, MEASURED = "dynamics/predicted_dH", "dynamics/measured_dH"
STRONG_R, WEAK_R = 0.7, 0.4  # |Pearson r| at or above: strong; below WEAK_R: weak
WEAK_R2 = 0.5  # a law fit explaining less than half the variance of R is called weak

TOP_KEYS = {
    "name", "output", "doc_dir", "threads", "steps", "seeds", "save_steps", "dynamics_every", "train_args", "methods",
    "eval", "fit",
}  # fmt: skip
EVAL_KEYS = {"benchmark", "problems", "k", "temperature", "batch_size", "seed", "grading_workers"}
FIT_KEYS = {"metric", "early_fraction", "window"}
METHOD_KEYS = {"recipe", "args"}
# Command-line flag (argparse dest) -> key path in the study YAML.
OVERRIDES = {
    "steps": ("steps",),
    "seeds": ("seeds",),
    "save_steps": ("save_steps",),
    "dynamics_every": ("dynamics_every",),
    "eval_problems": ("eval", "problems"),
    "eval_k": ("eval", "k"),
    "output": ("output",),
    "doc_dir": ("doc_dir",),
    "threads": ("threads",),
}
# --quick: a miniature through every stage: 3 evaluation points per run (a law fit; too few for the early
# prediction, which the page then lists as not made) and a measured entropy change every step.
QUICK = {
    "steps": 6,
    "save_steps": 2,
    "dynamics_every": 1,
    "seeds": 1,
    "methods": "none,clip_cov",
    "eval_problems": 16,
    "output": "runs/study-quick",
}


# ------------------------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class Method:
    name: str  # the --regularizer value, also the run directory name
    recipe: Path | None  # train YAML; None: the built-in defaults
    args: dict[str, Any]  # extra train flags


@dataclass(frozen=True)
class EvalSpec:
    benchmark: str
    problems: int
    k: int
    temperature: float
    batch_size: int
    seed: int
    grading_workers: int


@dataclass(frozen=True)
class FitSpec:
    metric: str
    early_fraction: float
    window: float


@dataclass(frozen=True)
class Study:
    name: str
    output: Path
    doc_dir: Path
    threads: int
    steps: int
    seeds: int
    save_steps: int
    dynamics_every: int
    train_args: dict[str, Any]
    methods: tuple[Method, ...]
    eval: EvalSpec
    fit: FitSpec


def _keys(section: Any, required: set[str], optional: set[str], where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"invalid config: {where} must be a mapping, got {section!r}")
    if unknown := set(section) - required - optional:
        allowed = sorted(required | optional)
        raise ConfigError(f"invalid config: unknown keys {sorted(unknown)} in {where}; allowed: {allowed}")
    if missing := required - set(section):
        raise ConfigError(f"invalid config: missing keys {sorted(missing)} in {where}")
    return section


def _method(name: str, entry: Any, base: Path) -> Method:
    entry = _keys(entry or {}, set(), METHOD_KEYS, f"methods.{name}")
    if "recipe" in entry:
        recipe: Path | None = base / str(entry["recipe"])
        check(recipe.is_file(), f"methods.{name}.recipe", entry["recipe"], f"a train YAML file relative to {base}")
    else:
        default = base / f"{name}.yaml"
        recipe = default if default.is_file() else None
    args = entry.get("args") or {}
    check(isinstance(args, dict), f"methods.{name}.args", args, "a mapping of train flags")
    return Method(name, recipe, args)


def build_study(data: dict[str, Any], base: Path) -> Study:
    """Validate the study mapping (the YAML with command-line overrides applied); recipes resolve against `base`."""
    data = _keys(data, TOP_KEYS - {"train_args"}, {"train_args"}, "the study config")
    for key in ("threads", "steps", "seeds", "save_steps", "dynamics_every"):
        check(isinstance(data[key], int) and data[key] >= 1, key, data[key], "an integer >= 1")
    # The last checkpoint must be the final model, so that the table's final accuracy is the trained policy's.
    check(data["steps"] % data["save_steps"] == 0, "save_steps", data["save_steps"], f"a divisor of {data['steps']}")
    evaluation = EvalSpec(**_keys(data["eval"], EVAL_KEYS, set(), "eval"))
    check(evaluation.problems >= 1, "eval.problems", evaluation.problems, "an integer >= 1")
    fit = FitSpec(**_keys(data["fit"], FIT_KEYS, set(), "fit"))
    check(0 < fit.early_fraction < 1, "fit.early_fraction", fit.early_fraction, "strictly between 0 and 1")
    check(0 < fit.window <= 0.5, "fit.window", fit.window, "in (0, 0.5]")
    methods = data["methods"]
    check(isinstance(methods, dict) and bool(methods), "methods", methods, "a mapping of method name -> settings")
    train_args = data.get("train_args") or {}
    check(isinstance(train_args, dict), "train_args", train_args, "a mapping of train flags")
    return Study(
        name=str(data["name"]),
        output=Path(data["output"]),
        doc_dir=Path(data["doc_dir"]),
        threads=data["threads"],
        steps=data["steps"],
        seeds=data["seeds"],
        save_steps=data["save_steps"],
        dynamics_every=data["dynamics_every"],
        train_args=train_args,
        methods=tuple(_method(name, entry, base) for name, entry in methods.items()),
        eval=evaluation,
        fit=fit,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-rl study",
        description="Train every method x seed, evaluate the checkpoints, fit the entropy-performance law and write "
        "the results page. Flags override the study YAML.",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"study YAML (default {DEFAULT_CONFIG})")
    parser.add_argument("--steps", type=int, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, help="number of seeds per method (seeds 0 .. N-1)")
    parser.add_argument("--methods", help="comma-separated subset of the YAML's methods, in this order")
    parser.add_argument("--save-steps", type=int, help="checkpoint (= evaluation) interval; must divide --steps")
    parser.add_argument("--dynamics-every", type=int, help="measure the entropy change every N steps")
    parser.add_argument("--eval-problems", type=int, help="first N problems of the benchmark")
    parser.add_argument("--eval-k", type=int, help="samples per problem")
    parser.add_argument("--output", help="root of the run directories <output>/<method>/seed<k>")
    parser.add_argument("--doc-dir", help="where the page and its figures go")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI miniature: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + ", --doc-dir <output>/docs (explicit flags win)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; train nothing")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="train in N processes at once, each taking every N-th method (use one per CPU core, with threads 1); "
        "the page is written once all are done",
    )
    return parser


def run_workers(argv: list[str], methods: list[str], workers: int) -> None:
    """Train the methods in `workers` child processes of this command (round-robin split); wait for all of them.

    Each child is this same study restricted by --methods, so it trains and evaluates its runs and skips finished
    ones; its own page goes to a scratch directory, and the parent then writes the real page over every run.
    """
    rest: list[str] = []
    skip = False
    for arg in argv:  # drop the flags each child gets its own value for
        if skip:
            skip = False
        elif arg in ("--workers", "--methods", "--doc-dir"):
            skip = True
        elif not arg.startswith(("--workers=", "--methods=", "--doc-dir=")):
            rest.append(arg)
    with tempfile.TemporaryDirectory() as scratch:
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "entropy_rl.study",
                    *rest,
                    "--methods",
                    ",".join(methods[i::workers]),
                    "--doc-dir",
                    str(Path(scratch) / str(i)),
                ]
            )
            for i in range(min(workers, len(methods)))
        ]
        codes = [child.wait() for child in children]
    if any(codes):
        raise ConfigError(f"a study worker failed (exit codes {codes}); re-run the command to resume")


def load_study(args: argparse.Namespace) -> tuple[Study, dict[str, Any]]:
    """The study and the resolved mapping it was built from (the YAML with --quick and the flags applied)."""
    path = Path(args.config)
    if not path.is_file():
        raise ConfigError(f"invalid config: --config {path}: file not found")
    data = yaml.safe_load(path.read_text())
    check(isinstance(data, dict), "--config", str(path), "a YAML mapping")
    if args.quick:
        for dest, value in QUICK.items():
            if getattr(args, dest) is None:
                setattr(args, dest, value)
        # Never into the real docs: the miniature's page lands next to its runs unless asked otherwise.
        args.doc_dir = args.doc_dir or str(Path(args.output) / "docs")
    for dest, keys in OVERRIDES.items():
        if (value := getattr(args, dest)) is not None:
            section = data
            for key in keys[:-1]:
                section = section.setdefault(key, {})
            section[keys[-1]] = value
    if args.methods is not None:
        chosen = [name.strip() for name in args.methods.split(",") if name.strip()]
        available = data.get("methods") or {}
        unknown = [name for name in chosen if name not in available]
        check(not unknown, "--methods", args.methods, f"names among {sorted(available)}")
        data["methods"] = {name: available[name] for name in chosen}
    return build_study(data, path.parent), data


# ------------------------------------------------------------------------------------------------ planning runs
@dataclass
class Planned:
    method: str
    seed: int
    run_dir: Path
    argv: list[str]  # `entropy-rl train` arguments of this run
    state: str  # "finished", "resume" or "new"
    script_args: TrainScriptArguments
    config: EntropyGRPOConfig


def _flag(key: str, value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]


def train_argv(study: Study, method: Method, seed: int) -> list[str]:
    """The train command-line of one run: the method's recipe, then shared flags, then the method's own flags, then
    what the study controls (steps, seed, checkpoints, output)."""
    argv = ["--config", str(method.recipe)] if method.recipe else ["--regularizer", method.name]
    flags = {
        **study.train_args,
        **method.args,
        "max_steps": study.steps,
        "seed": seed,
        "save_strategy": "steps",
        "save_steps": study.save_steps,
        "dynamics_every": study.dynamics_every,
        "output_dir": study.output / method.name / f"seed{seed}",
    }
    for key, value in flags.items():
        argv += _flag(key, value)
    return argv


def _saved_settings(script_args: TrainScriptArguments, config: EntropyGRPOConfig) -> dict[str, Any]:
    # As `entropy_rl.train.run` writes entropy_rl_config.json, read back through JSON so that both sides compare alike.
    return json.loads(json.dumps({"script": asdict(script_args), **config.to_dict()}, default=str))


def _check_same_settings(run_dir: Path, script_args: TrainScriptArguments, config: EntropyGRPOConfig) -> None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    saved, now = json.loads(path.read_text()), _saved_settings(script_args, config)
    # A resumed run records the checkpoint it resumed from; everything else must match.
    changed = sorted(
        k for k in saved.keys() | now.keys() if k != "resume_from_checkpoint" and saved.get(k) != now.get(k)
    )
    if changed:
        diff = "; ".join(f"{key}: {saved.get(key)!r} then, {now.get(key)!r} now" for key in changed[:5])
        raise ConfigError(
            f"invalid config: {run_dir} was trained with other settings ({diff}); remove it or choose another --output"
        )


def _check_curve(run_dir: Path, evaluation: EvalSpec, problems: int) -> None:
    # The evaluator skips (checkpoint, benchmark) pairs already in curve.jsonl whatever their sampling settings.
    wanted = (evaluation.k, problems)
    for row in read_rows(run_dir / CURVE_FILE):
        if row.get("benchmark") == evaluation.benchmark and (row.get("k"), row.get("num_problems")) != wanted:
            raise ConfigError(
                f"invalid config: {run_dir / CURVE_FILE} holds {evaluation.benchmark} rows with k={row.get('k')}, "
                f"{row.get('num_problems')} problems; this study asks k={evaluation.k}, {problems} problems; "
                "remove the file or choose another --output"
            )


def _state(run_dir: Path, config: EntropyGRPOConfig) -> tuple[str, Path | None]:
    """("finished", None), ("resume", last checkpoint) or ("new", None)."""
    steps = [row.get("step") for row in read_rows(run_dir / config.metrics_file)]
    if (run_dir / "final" / "model.safetensors").is_file() and steps == list(range(1, config.max_steps + 1)):
        return "finished", None
    checkpoints = list_checkpoints(run_dir) if run_dir.is_dir() else []
    return ("resume", checkpoints[-1][1]) if checkpoints else ("new", None)


def plan_runs(study: Study, problems: int) -> list[Planned]:
    """Parse every run's train arguments (so a bad recipe fails before anything trains) and find what is done."""
    plans = []
    for method in study.methods:
        for seed in range(study.seeds):
            argv = train_argv(study, method, seed)
            script_args, config = parse_args(argv)
            # Runs are labelled by their regularizer: a recipe of another method under this name would mislabel them.
            check(config.regularizer == method.name, f"methods.{method.name}", str(method.recipe), "its own recipe")
            run_dir = Path(config.output_dir)
            _check_same_settings(run_dir, script_args, config)
            _check_curve(run_dir, study.eval, problems)
            state, checkpoint = _state(run_dir, config)
            if checkpoint is not None:
                argv += _flag("resume_from_checkpoint", checkpoint)
                config.resume_from_checkpoint = str(checkpoint)
            plans.append(Planned(method.name, seed, run_dir, argv, state, script_args, config))
    return plans


# ------------------------------------------------------------------------------------------------ running
@dataclass(frozen=True)
class RunResult:
    method: str
    seed: int
    run: Run
    status: str  # what this invocation did with the run
    train_s: float  # recorded seconds, over every invocation that worked on the run
    eval_s: float


def _add_time(run_dir: Path, key: str, seconds: float) -> dict[str, float]:
    path = run_dir / TIME_FILE
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[key] = times.get(key, 0.0) + seconds
    path.write_text(json.dumps(times, indent=2) + "\n")
    return times


def execute(study: Study, plans: Sequence[Planned], benchmark: Benchmark, settings: EvalSettings) -> list[RunResult]:
    """Train what is not finished and evaluate what is not evaluated, one run after the other."""
    results = []
    with Grader(workers=study.eval.grading_workers) as grader:  # one set of grading processes for every run
        for i, plan in enumerate(plans, start=1):
            head = f"[{i}/{len(plans)}] {plan.method} seed {plan.seed}"
            if plan.state == "finished":
                status = "skipped (finished)"
            else:
                resumed = Path(str(plan.config.resume_from_checkpoint)).name
                status = "trained" if plan.state == "new" else f"resumed from {resumed}"
                print(f"{head}: training ({status})", flush=True)
                started = time.perf_counter()
                run(plan.script_args, plan.config)
                _add_time(plan.run_dir, "train_s", time.perf_counter() - started)
            started = time.perf_counter()
            added = evaluate_run(plan.run_dir, [benchmark], settings=settings, grader=grader)
            times = _add_time(plan.run_dir, "eval_s", time.perf_counter() - started)
            print(
                f"{head}: {status}; {len(added)} checkpoints evaluated now; recorded train "
                f"{times.get('train_s', 0.0):.0f} s, eval {times['eval_s']:.0f} s",
                flush=True,
            )
            results.append(
                RunResult(
                    plan.method, plan.seed, load_run(plan.run_dir), status, times.get("train_s", 0.0), times["eval_s"]
                )
            )
    return results


# ------------------------------------------------------------------------------------------------ analysis
def _edge_mean(values: np.ndarray, fraction: float, last: bool) -> float:
    """Mean of the first (or last) `fraction` of the finite values, at least one."""
    values = values[np.isfinite(values)]
    n = max(1, round(fraction * len(values)))
    return float(np.mean(values[-n:] if last else values[:n])) if len(values) else float("nan")


def _curve(run: Run, benchmark: str) -> list[dict[str, Any]]:
    return sorted((row for row in run.curve or [] if row.get("benchmark") == benchmark), key=lambda row: row["step"])


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (NaN entries skipped; std NaN for one value)."""
    finite = np.array([v for v in values if np.isfinite(v)], dtype=float)
    if not len(finite):
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")


def _pm(values: Sequence[float], digits: int = 3) -> str:
    mean, std = _mean_std(values)
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def compare(values: Sequence[float], baseline: Sequence[float]) -> str:
    """Higher / lower than the baseline when the means differ by more than the two seed standard deviations added."""
    (mean, std), (base_mean, base_std) = _mean_std(values), _mean_std(baseline)
    if not (np.isfinite(std) and np.isfinite(base_std)):
        return "cannot tell (one seed)"
    diff = mean - base_mean
    if abs(diff) <= std + base_std:
        return "no clear difference (within seed spread)"
    return "higher" if diff > 0 else "lower"


def strength(r: float | None) -> str:
    if r is None:
        return "undefined (fewer than 3 pairs or a constant series)"
    label = "strong" if abs(r) >= STRONG_R else "moderate" if abs(r) >= WEAK_R else "weak"
    return label if r >= 0 else f"{label}, negative"


@dataclass
class RunAnalysis:
    result: RunResult
    numbers: dict[str, float]  # start_h, end_h, first_acc, final_acc, final_pass, eval_h, a, b, ceiling, r2, ...
    pairs: Pairs | None
    notes: list[str]  # why a fit is missing


def analyse_run(result: RunResult, study: Study) -> RunAnalysis:
    run, nan = result.run, float("nan")
    entropy = run.column(DEFAULT_ENTROPY_KEY)
    curve = _curve(run, study.eval.benchmark)
    last = curve[-1] if curve else {}
    numbers = {
        "start_h": _edge_mean(entropy, study.fit.window, last=False),
        "end_h": _edge_mean(entropy, study.fit.window, last=True),
        "first_acc": curve[0]["avg@k"] if curve else nan,
        "final_acc": last.get("avg@k", nan),
        "final_pass": last.get("pass@k", {}).get(str(last.get("k")), nan),
        "eval_h": last.get("eval_entropy", nan),
    }
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
    except LawFitError as err:
        notes.append(f"{run.label}: {err}")
    return RunAnalysis(result, numbers, pairs, notes)


def _column(analyses: Sequence[RunAnalysis], key: str) -> list[float]:
    return [a.numbers.get(key, float("nan")) for a in analyses]


def _dynamics(analyses: Sequence[RunAnalysis]) -> tuple[list[float], list[float]]:
    pairs = [
        (row[PREDICTED], row[MEASURED])
        for a in analyses
        for row in a.result.run.metrics
        if row.get(MEASURED) is not None and row.get(PREDICTED) is not None
    ]
    return [p for p, _ in pairs], [m for _, m in pairs]


def _joint(analyses: Sequence[RunAnalysis]) -> tuple[JointFit | None, str | None]:
    usable = [a.pairs for a in analyses if a.pairs is not None and "a" in a.numbers]
    try:
        return fit_joint([(p.H, p.R) for p in usable], source="joint fit of all runs"), None
    except LawFitError as err:
        return None, str(err)


# ------------------------------------------------------------------------------------------------ figures
def _band(ax: Axes, steps: np.ndarray, rows: list[np.ndarray], color: str, label: str) -> None:
    """Mean over seeds as a line, ± one standard deviation as a band (no band for one seed)."""
    matrix = np.vstack(rows)
    mean = np.nanmean(matrix, axis=0)
    ax.plot(steps, mean, color=color, lw=1.5, label=label)
    if len(rows) > 1:
        std = np.nanstd(matrix, axis=0, ddof=1)
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, lw=0)


def plot_entropy(groups: dict[str, list[RunAnalysis]], window: int, path: Path) -> Path:
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for i, (method, analyses) in enumerate(groups.items()):
        rows = [moving_average(a.result.run.column(DEFAULT_ENTROPY_KEY), window) for a in analyses]
        _band(ax, analyses[0].result.run.steps, rows, series_color(i), f"{method} ({len(rows)} seeds)")
    ax.set(
        title=f"Policy entropy ({DEFAULT_ENTROPY_KEY}, trailing mean over {window} steps; band: ± 1 std over seeds)",
        xlabel=STEP_UNIT,
        ylabel=ENTROPY_UNIT,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return save_figure(fig, path)


def plot_accuracy(groups: dict[str, list[RunAnalysis]], study: Study, path: Path) -> Path:
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for i, (method, analyses) in enumerate(groups.items()):
        curves = [{row["step"]: row["avg@k"] for row in _curve(a.result.run, study.eval.benchmark)} for a in analyses]
        steps = np.array(sorted(set.intersection(*(set(c) for c in curves))))
        if len(steps):
            _band(ax, steps, [np.array([c[s] for s in steps]) for c in curves], series_color(i), method)
    ax.set(
        title=f"Held-out {study.eval.benchmark} avg@{study.eval.k} at T={study.eval.temperature:g} "
        "(band: ± 1 std over seeds)",
        xlabel=STEP_UNIT,
        ylabel=f"avg@{study.eval.k} (fraction correct)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return save_figure(fig, path)


def plot_dynamics(groups: dict[str, list[RunAnalysis]], path: Path) -> Path:
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.subplots()
    for i, (method, analyses) in enumerate(groups.items()):
        predicted, measured = _dynamics(analyses)
        r = pearson(predicted, measured)
        text = "n/a" if r is None else f"{r:.2f}"
        ax.scatter(predicted, measured, s=9, alpha=0.5, color=series_color(i), label=f"{method}: r = {text}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(
        title="Entropy change of an optimizer step: first-order prediction vs measurement",
        xlabel=f"predicted ({PREDICTED}, per unit step size)",
        ylabel=f"measured ({MEASURED}, nats)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return save_figure(fig, path)


def plot_pooled_law(groups: dict[str, list[RunAnalysis]], joint: JointFit | None, path: Path) -> Path | None:
    """R vs H, seeds of a method pooled into one colour, with the joint fit over all runs."""
    pooled = []
    for method, analyses in groups.items():
        parts = [a.pairs for a in analyses if a.pairs is not None]
        if parts:
            pooled.append(
                Pairs(
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
            )
    if not pooled:
        return None
    return plot_law(pooled, [None] * len(pooled), path, joint=None if joint is None else joint.fit)


# ------------------------------------------------------------------------------------------------ the page
def _wall_span(analyses: Sequence[RunAnalysis]) -> str:
    """Wall-clock span of all runs, from the file times: first run's config written to last run's last evaluation.

    Runs may have been trained by several invocations or workers at once, so summed compute overstates wall time.
    """
    run_dirs = [a.result.run.path for a in analyses]
    starts = [
        (d / "entropy_rl_config.json").stat().st_mtime for d in run_dirs if (d / "entropy_rl_config.json").exists()
    ]
    ends = [(d / "curve.jsonl").stat().st_mtime for d in run_dirs if (d / "curve.jsonl").exists()]
    if not starts or not ends:
        return ""
    return f"Wall clock from the first run's start to the last evaluation: {(max(ends) - min(starts)) / 60:.1f} min."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _collapse_finding(groups: dict[str, list[RunAnalysis]], study: Study) -> list[str]:
    base = groups.get(BASELINE)
    if base is None:
        return [f"- GRPO (`{BASELINE}`) is not in this study, so there is no entropy-collapse check and no baseline."]
    start, end = _mean_std(_column(base, "start_h"))[0], _mean_std(_column(base, "end_h"))[0]
    first, final = _mean_std(_column(base, "first_acc"))[0], _mean_std(_column(base, "final_acc"))[0]
    change = 100 * (end / start - 1)
    window = f"mean of the first / last {study.fit.window:.0%} of steps, averaged over {len(base)} seed(s)"
    if end <= start / 2:
        verdict = f"GRPO (`{BASELINE}`) lost at least half of its starting entropy"
    else:
        verdict = f"GRPO (`{BASELINE}`) did NOT lose half of its starting entropy at this scale"
    return [
        f"- {verdict}: {DEFAULT_ENTROPY_KEY} went from {start:.3f} to {end:.3f} nats ({abs(change):.0f} % "
        f"{'lower' if change <= 0 else 'higher'}; {window}). "
        f"Its held-out avg@{study.eval.k} went from {first:.3f} (first checkpoint, step {study.save_steps}) to "
        f"{final:.3f} (step {study.steps})."
    ]


def _method_findings(groups: dict[str, list[RunAnalysis]], study: Study) -> list[str]:
    base = groups.get(BASELINE)
    if base is None or len(groups) == 1:
        return []
    lines = []
    counts = {"entropy": 0, "accuracy": 0}
    for method, analyses in groups.items():
        if method == BASELINE:
            continue
        entropy = compare(_column(analyses, "end_h"), _column(base, "end_h"))
        accuracy = compare(_column(analyses, "final_acc"), _column(base, "final_acc"))
        counts["entropy"] += entropy == "higher"
        counts["accuracy"] += accuracy == "higher"
        lines.append(
            f"- `{method}` vs `{BASELINE}`: final entropy **{entropy}** ({_pm(_column(analyses, 'end_h'))} vs "
            f"{_pm(_column(base, 'end_h'))}); final avg@{study.eval.k} **{accuracy}** "
            f"({_pm(_column(analyses, 'final_acc'))} vs {_pm(_column(base, 'final_acc'))})."
        )
    others = len(groups) - 1
    summary = (
        f"- {counts['entropy']} of {others} methods ended with clearly higher entropy than GRPO and "
        f'{counts["accuracy"]} of {others} with clearly higher held-out accuracy. "Clearly" means the means over '
        "seeds differ by more than the two seeds' standard deviations added; anything else is reported as no clear "
        "difference, i.e. the method did not help measurably at this scale."
    )
    return [summary, *lines]


def _dynamics_finding(groups: dict[str, list[RunAnalysis]], analyses: Sequence[RunAnalysis]) -> list[str]:
    predicted, measured = _dynamics(analyses)
    r = pearson(predicted, measured)
    per_method = [pearson(*_dynamics(group)) for group in groups.values()]
    defined = [x for x in per_method if x is not None]
    span = f" (per method from {min(defined):.2f} to {max(defined):.2f})" if defined else ""
    text = "n/a" if r is None else f"{r:.2f}"
    line = (
        f"- Predicted vs measured entropy change per step: Pearson r = {text} over all {len(predicted)} measured "
        f"steps{span}: **{strength(r)}**."
    )
    if r is not None and r < 0:
        line += " The correlation is negative: the first-order prediction points the wrong way here."
    elif r is None or r < WEAK_R:
        line += " The first-order prediction does not track the measured change well here."
    return [line]


def _law_findings(analyses: Sequence[RunAnalysis], joint: JointFit | None, study: Study) -> list[str]:
    fitted = [a for a in analyses if "r2" in a.numbers]
    if not fitted:
        return ["- The entropy-performance law could not be fitted to any run (see the notes below)."]
    r2 = float(np.nanmedian(_column(fitted, "r2")))
    non_positive = sum(a.numbers["a"] <= 0 for a in fitted)
    lines = [
        f"- Law R = b − a·exp(H) per run: median R² = {r2:.2f} over {len(fitted)} runs"
        + (" — **weak**: entropy explains little of the held-out accuracy here." if r2 < WEAK_R2 else ".")
        + f" {non_positive} of {len(fitted)} runs have a ≤ 0 (accuracy does not rise as entropy falls)."
    ]
    early = [a for a in fitted if "early_rmse" in a.numbers]
    if early:
        early_rmse, full_rmse = (float(np.nanmedian(_column(early, key))) for key in ("early_rmse", "rmse"))
        n_fit, n = (int(np.nanmedian(_column(early, key))) for key in ("early_n", "n"))
        lines.append(
            f"- Fitted on the first {study.fit.early_fraction:.0%} of each run's points ({n_fit} of {n}), the law "
            f"predicts the rest with RMSE {early_rmse:.3f} (median over {len(early)} runs), "
            f"{early_rmse / full_rmse:.1f}× the full fit's residual RMSE of {full_rmse:.3f} (the noise floor)."
        )
    if joint is not None:
        shared = "consistent with" if joint.p_value >= 0.05 else "not consistent with"
        lines.append(
            f"- One (a, b) for all runs: R² = {joint.fit.r2:.2f}, RMSE {joint.rmse_ratio:.2f}× that of the separate "
            f"fits, F test p = {joint.p_value:.3g}: {shared} coefficients shared across methods and seeds."
        )
    return lines


def _final_table(groups: dict[str, list[RunAnalysis]], study: Study) -> list[str]:
    base = groups.get(BASELINE)
    rows = []
    for method, analyses in groups.items():
        versus = [
            "—" if base is None or method == BASELINE else compare(_column(analyses, key), _column(base, key))
            for key in ("end_h", "final_acc")
        ]
        rows.append(
            [
                f"`{method}`",
                str(len(analyses)),
                _pm(_column(analyses, "start_h")),
                _pm(_column(analyses, "end_h")),
                _pm(_column(analyses, "final_acc")),
                _pm(_column(analyses, "final_pass")),
                _pm(_column(analyses, "eval_h")),
                *versus,
            ]
        )
    k = study.eval.k
    header = [
        "method", "seeds", "start H", "final H", f"final avg@{k}", f"final pass@{k}", "eval entropy",
        f"H vs {BASELINE}", f"avg@{k} vs {BASELINE}",
    ]  # fmt: skip
    return _table(header, rows)


def _law_table(groups: dict[str, list[RunAnalysis]], joint: JointFit | None, study: Study) -> list[str]:
    keys = ("a", "b", "ceiling", "r2", "rmse", "early_rmse")
    rows = [[f"`{method}`", *(_pm(_column(analyses, key)) for key in keys)] for method, analyses in groups.items()]
    if joint is not None:
        fit: LawFit = joint.fit
        rows.append(["**joint (all runs)**", *(f"{v:.3f}" for v in (fit.a, fit.b, fit.ceiling, fit.r2, fit.rmse)), "—"])
    early = f"early-{study.fit.early_fraction:.0%} prediction RMSE"
    return _table(["method", "a", "b", "ceiling b − a", "R²", "fit RMSE", early], rows)


def _dynamics_table(groups: dict[str, list[RunAnalysis]]) -> list[str]:
    rows = []
    for method, analyses in groups.items():
        predicted, measured = _dynamics(analyses)
        r = pearson(predicted, measured)
        rows.append([f"`{method}`", str(len(predicted)), "n/a" if r is None else f"{r:.3f}", strength(r)])
    return _table(["method", "measured steps (all seeds)", "Pearson r", "strength"], rows)


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


def write_page(
    study: Study,
    data: dict[str, Any],
    plans: Sequence[Planned],
    results: Sequence[RunResult],
    problems: int,
    argv: Sequence[str],
    invocation_s: float,
) -> Path:
    """<doc_dir>/<name>.md and its figures, from the runs' files alone (nothing carried over from earlier pages)."""
    analyses = [analyse_run(result, study) for result in results]
    groups: dict[str, list[RunAnalysis]] = {}
    for analysis in analyses:
        groups.setdefault(analysis.result.method, []).append(analysis)
    joint, joint_error = _joint(analyses)
    out = study.doc_dir
    window = max(1, round(study.fit.window * study.steps))
    figures = {
        "entropy": plot_entropy(groups, window, out / f"{study.name}_entropy.png"),
        "accuracy": plot_accuracy(groups, study, out / f"{study.name}_accuracy.png"),
        "dynamics": plot_dynamics(groups, out / f"{study.name}_dynamics.png"),
        "law": plot_pooled_law(groups, joint, out / f"{study.name}_law.png"),
    }
    notes = [note for a in analyses for note in a.notes] + ([f"joint fit: {joint_error}"] if joint_error else [])
    train_total, eval_total = sum(r.train_s for r in results), sum(r.eval_s for r in results)
    k, bench = study.eval.k, study.eval.benchmark

    def image(key: str, alt: str) -> list[str]:
        path = figures[key]
        return [f"![{alt}]({path.name})", ""] if path is not None else [f"({alt}: nothing to draw.)", ""]

    lines = [
        f"# Study `{study.name}`: GRPO and its entropy regularizers, side by side",
        "",
        "Generated by `entropy-rl study` (entropy_rl/study.py) from the run directories under "
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
        "## Findings",
        "",
        *_collapse_finding(groups, study),
        *_method_findings(groups, study),
        *_dynamics_finding(groups, analyses),
        *_law_findings(analyses, joint, study),
        "",
        "## Entropy and accuracy during training",
        "",
        *image("entropy", "entropy vs step per method"),
        *image("accuracy", "held-out accuracy vs step per method"),
        "## Final numbers per method",
        "",
        f"Mean ± standard deviation over seeds. start / final H: `{DEFAULT_ENTROPY_KEY}` averaged over the first / "
        f"last {study.fit.window:.0%} of steps. final avg@{k}, pass@{k} and eval entropy (mean token entropy of the "
        f'evaluation samples): the checkpoint of step {study.steps}. "vs none": higher / lower when the means '
        "differ by more than the two standard deviations added.",
        "",
        *_final_table(groups, study),
        "",
        "## Predicted vs measured entropy change",
        "",
        f"Every {study.dynamics_every} step(s) the trainer re-evaluates the step's batch after the update "
        f"(`{MEASURED}`) next to the first-order prediction `{PREDICTED}` (docs/metrics.md). The prediction has no "
        "step size in it; all runs share the learning rate, so pooling them keeps the correlation meaningful. "
        f"|r| ≥ {STRONG_R}: strong, ≥ {WEAK_R}: moderate, below: weak.",
        "",
        *image("dynamics", "predicted vs measured entropy change"),
        *_dynamics_table(groups),
        "",
        "## Entropy-performance law R = b − a·exp(H)",
        "",
        f"Fitted per run (docs/fit.md) on the evaluated checkpoints: H = the training entropy (`entropy/seq_mean`) "
        f"averaged over the {study.save_steps} steps up to the checkpoint, R = {bench} "
        f"`{study.fit.metric}`. Mean ± std over seeds of each run's a, b, ceiling (R at H = 0, an extrapolation), R² "
        f"and residual RMSE; the early prediction fits the first {study.fit.early_fraction:.0%} of the points and "
        "reports the RMSE on the rest. The joint row fits one (a, b) to every run. The figure pools each method's "
        "seeds into one colour and draws the joint fit.",
        "",
        *image("law", "held-out accuracy vs entropy with the joint law fit"),
        *_law_table(groups, joint, study),
        "",
    ]
    if notes:
        lines += ["Fits that could not be made:", "", *(f"- {note}" for note in notes), ""]
    lines += [
        "## Time",
        "",
        f"Recorded compute over all runs: training {train_total / 60:.1f} min + evaluation {eval_total / 60:.1f} min "
        f"= {(train_total + eval_total) / 60:.1f} min (per run in RUN_DIR/{TIME_FILE}, summed over the invocations "
        f"that worked on it). This invocation took {invocation_s / 60:.1f} min in all. {_wall_span(analyses)}",
        "",
        *_runs_table(analyses, study),
        "",
        "## Reproduce",
        "",
        "```bash",
        shlex.join(["entropy-rl", "study", *argv]),
        "```",
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
    page = out / f"{study.name}.md"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines))
    return page


# ------------------------------------------------------------------------------------------------ command line
def main(argv: list[str]) -> int:
    started = time.perf_counter()
    args = _parser().parse_args(argv)
    try:
        study, data = load_study(args)
        benchmark = load_benchmark(study.eval.benchmark, limit=study.eval.problems)
        settings = EvalSettings(
            batch_size=study.eval.batch_size,
            seed=study.eval.seed,
            k=study.eval.k,
            temperature=study.eval.temperature,
            progress=False,
        )
        settings.sampling(benchmark)  # a bad sampling override (k > 1 at temperature 0) fails before anything trains
        plans = plan_runs(study, len(benchmark.problems))
    except ValueError as err:  # ConfigError, BenchmarkError and TRL's unknown-flag errors all name the value at fault
        print(f"entropy-rl study: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for plan in plans:
            print(f"{plan.method} seed {plan.seed}: {plan.state}\n  {shlex.join(['entropy-rl', 'train', *plan.argv])}")
        return 0
    if args.workers > 1:
        try:
            run_workers(argv, [method.name for method in study.methods], args.workers)
        except ConfigError as err:
            print(f"entropy-rl study: error: {err}", file=sys.stderr)
            return 2
        plans = plan_runs(study, len(benchmark.problems))  # the workers finished them: now only the report is left
    import torch
    from transformers.utils import logging as hf_logging

    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(study.threads)
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per checkpoint would drown the per-run lines
    try:
        results = execute(study, plans, benchmark, settings)
        problems = len(benchmark.problems)
        page = write_page(study, data, plans, results, problems, argv, time.perf_counter() - started)
    except (ConfigError, LawFitError) as err:
        print(f"entropy-rl study: error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
