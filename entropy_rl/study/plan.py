"""The runs of a study: each method x seed as an `entropy-rl train` command line, checked and with its state.

Every run's train arguments are parsed before anything trains, so a bad recipe or flag fails at once. A run is
finished when its final/ model exists and its metrics file has one row per step; an unfinished run resumes from its
last checkpoint; a run directory trained with other settings, or evaluated with another k or problem count, is
refused rather than mixed.

Across machines: a run with no directory whose committed summary (<doc_dir>/<name>_runs/, study/summary.py) holds
every step, trained with the same settings, is restored from it (`restore`: its config, evaluations, times and
metrics, and a RESTORED_FILE marker) and counts as finished, so a study grows by seeds or methods in a later session
without training again what its summaries already hold.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from trl import ModelConfig

from entropy_rl.checkpoint_files import latest_checkpoint
from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.errors import ConfigError, check
from entropy_rl.jsonl import read_rows
from entropy_rl.rundir import CONFIG_FILE, CURVE_FILE, FINAL_DIR, metrics_path, read_config, run_contents
from entropy_rl.train_args import TrainScriptArguments, parse_train_args
from entropy_rl.training import saved_settings

from .spec import SUMMARY_RECORD, EvalSpec, Method, Study, summary_dir

TIME_FILE = "study_time.json"  # per run: seconds spent training and evaluating, summed over invocations
RESTORED_FILE = "restored_from_summary.json"  # a finished run rebuilt from its summary (no checkpoints, no model)


@dataclass
class Planned:
    method: str
    seed: int
    run_dir: Path
    argv: list[str]  # `entropy-rl train` arguments of this run
    state: str  # "finished", "resume", "new", or "summarized" (to be restored from its summary; a dry run's plan)
    script_args: TrainScriptArguments
    config: EntropyGRPOConfig
    model_args: ModelConfig


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
        # The study's evaluation runs during training, at every checkpoint: the offline pass that follows
        # (execute.py) then finds every (checkpoint, benchmark) row already written, with the same settings.
        "curve_benchmarks": study.eval.benchmark,
        "eval_steps": study.save_steps,
        "curve_limit": study.eval.problems,
        "curve_k": study.eval.k,
        "curve_temperature": study.eval.temperature,
        "curve_batch_size": study.eval.batch_size,
        "curve_seed": study.eval.seed,
    }
    for key, value in flags.items():
        argv += _flag(key, value)
    return argv


def _saved_settings(planned: Planned) -> dict[str, Any]:
    # As training writes the run's saved config, read back through JSON so that both sides compare alike.
    settings = saved_settings(planned.script_args, planned.config, planned.model_args)
    return json.loads(json.dumps(settings, default=str))


# The config's own options at their defaults, as a saved config holds them.
_DEFAULTS = {
    f.name: json.loads(json.dumps(f.default, default=str))
    for f in fields(EntropyGRPOConfig)
    if f.default is not MISSING and f.init
}


def _changed_settings(planned: Planned, directory: Path) -> list[str]:
    """The settings the run saved in `directory` that differ from the planned ones, as "key: then, now" lines."""
    if not (directory / CONFIG_FILE).is_file():
        return []
    saved, now = read_config(directory), _saved_settings(planned)
    # A resumed (or restarted) run records how it started; everything else must match, except an option added to the
    # config after the run was trained, at its default (the run trained as that default does).
    how = ("resume_from_checkpoint", "overwrite_output_dir")
    added = {k for k in now.keys() - saved.keys() if k in _DEFAULTS and now[k] == _DEFAULTS[k]}
    changed = sorted(
        k for k in saved.keys() | now.keys() if k not in how and k not in added and saved.get(k) != now.get(k)
    )
    return [f"{key}: {saved.get(key)!r} then, {now.get(key)!r} now" for key in changed]


def _check_same_settings(planned: Planned) -> None:
    if changed := _changed_settings(planned, planned.run_dir):
        raise ConfigError(
            f"invalid config: {planned.run_dir} was trained with other settings ({'; '.join(changed[:5])}); remove "
            "it or choose another --output"
        )


def _other_curve_rows(run_dir: Path, evaluation: EvalSpec, problems: int) -> list[dict[str, Any]]:
    """curve.jsonl rows of the study's benchmark evaluated with another k or problem count."""
    wanted = (evaluation.k, problems)
    rows = [row for row in read_rows(run_dir / CURVE_FILE) if row.get("benchmark") == evaluation.benchmark]
    return [row for row in rows if (row.get("k"), row.get("num_problems")) != wanted]


def _check_curve(run_dir: Path, evaluation: EvalSpec, problems: int) -> None:
    # The evaluator skips (checkpoint, benchmark) pairs already in curve.jsonl whatever their sampling settings.
    if other := _other_curve_rows(run_dir, evaluation, problems):
        row = other[0]
        raise ConfigError(
            f"invalid config: {run_dir / CURVE_FILE} holds {evaluation.benchmark} rows with k={row.get('k')}, "
            f"{row.get('num_problems')} problems; this study asks k={evaluation.k}, {problems} problems; "
            "remove the file or choose another --output"
        )


def is_restored(run_dir: Path) -> bool:
    return (run_dir / RESTORED_FILE).is_file()


def _summary_of(planned: Planned, study: Study, problems: int) -> Path | None:
    """The run's committed summary, if it holds the whole run, trained and evaluated with the planned settings."""
    summary = summary_dir(study) / planned.method / f"seed{planned.seed}"
    if not all((summary / name).is_file() for name in (CONFIG_FILE, CURVE_FILE, TIME_FILE)):
        return None
    steps = [row.get("step") for row in read_rows(metrics_path(summary))]
    if steps != list(range(1, planned.config.max_steps + 1)) or _changed_settings(planned, summary):
        return None
    return None if _other_curve_rows(summary, study.eval, problems) else summary


def restore(summary: Path, run_dir: Path) -> None:
    """Rebuild a finished run's directory from its summary: the files with the times the study recorded for them
    (git does not keep file times; the page's wall-clock line reads them), then the marker, written last."""
    record_path = summary.parent.parent / SUMMARY_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    times = record.get("file_times", {}).get(f"{summary.parent.name}/{summary.name}", {})
    run_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(path for path in summary.iterdir() if path.is_file()):
        shutil.copy2(source, run_dir / source.name)
        if source.name in times:
            os.utime(run_dir / source.name, (times[source.name], times[source.name]))
    (run_dir / RESTORED_FILE).write_text(json.dumps({"summary": str(summary)}, indent=2) + "\n")


def run_state(run_dir: Path, config: EntropyGRPOConfig) -> tuple[str, Path | None]:
    """("finished", None), ("resume", newest complete checkpoint) or ("new", None)."""
    steps = [row.get("step") for row in read_rows(run_dir / config.metrics_file)]
    ended = (run_dir / FINAL_DIR / "model.safetensors").is_file() or is_restored(run_dir)
    if ended and steps == list(range(1, config.max_steps + 1)):
        return "finished", None
    checkpoint, _ = latest_checkpoint(run_dir)
    return ("resume", checkpoint) if checkpoint else ("new", None)


def plan_run(study: Study, method: Method, seed: int, problems: int, *, restore_summaries: bool = True) -> Planned:
    """One run: its train arguments parsed and checked against what its directory already holds. A run with no
    directory and a whole summary is restored from it (`restore_summaries`; else, as in a dry run, "summarized")."""
    argv = train_argv(study, method, seed)
    script_args, config, model_args = parse_train_args(argv)  # a bad flag or value: ConfigError
    # Runs are labelled by their regularizer: a recipe of another method under this name would mislabel them.
    check(config.regularizer == method.name, f"methods.{method.name}", str(method.recipe), "its own recipe")
    run_dir = Path(config.output_dir)
    planned = Planned(method.name, seed, run_dir, argv, "new", script_args, config, model_args)
    if not run_contents(run_dir, config.metrics_file) and (summary := _summary_of(planned, study, problems)):
        if not restore_summaries:
            planned.state = "summarized"
            return planned
        restore(summary, run_dir)
    _check_same_settings(planned)
    _check_curve(run_dir, study.eval, problems)
    state, checkpoint = run_state(run_dir, config)
    if checkpoint is not None:
        argv += _flag("resume_from_checkpoint", checkpoint)
        config.resume_from_checkpoint = str(checkpoint)
    elif state == "new" and run_contents(run_dir, config.metrics_file):  # killed before its first checkpoint: restart
        argv += _flag("overwrite_output_dir", True)
        config.overwrite_output_dir = True
    planned.state = state
    return planned


def plan_runs(study: Study, problems: int, *, restore_summaries: bool = True) -> list[Planned]:
    """Every method x seed, in order (so a bad recipe fails before anything trains), with what is already done."""
    return [
        plan_run(study, method, seed, problems, restore_summaries=restore_summaries)
        for method in study.methods
        for seed in range(study.seeds)
    ]
