"""What a study is: the YAML schema, its validation into a `Study`, and the overrides a caller applies to the YAML.

A study YAML (recipes/toy/study.yaml is the reference) names the page, the output root, the training length, the
methods with their train recipes and flags, the evaluation and the law fit. `read_study_file` reads it,
`apply_overrides` / `select_methods` apply what the command line changes, `build_study` validates the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropy_rl.errors import ConfigError, check
from entropy_rl.resources import read_yaml_mapping

DEFAULT_CONFIG = "recipes/toy/study.yaml"

TOP_KEYS = {
    "name", "output", "doc_dir", "threads", "steps", "seeds", "save_steps", "dynamics_every", "train_args", "methods",
    "eval", "fit", "detect",
}  # fmt: skip
OPTIONAL_KEYS = {"train_args", "detect"}
DEFAULT_DETECT = 0.03  # the difference in held-out accuracy a study is planned to detect (study/power.py)
EVAL_KEYS = {"benchmark", "problems", "k", "temperature", "batch_size", "seed", "grading_workers"}
FIT_KEYS = {"metric", "early_fraction", "window"}
METHOD_KEYS = {"recipe", "args"}
# Override name (the command line's flag dest) -> key path in the study YAML.
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
    "detect": ("detect",),
}
# The quick preset: a miniature through every stage: 3 evaluation points per run (a law fit; too few for the early
# prediction, which the page then lists as not made) and a measured entropy change every step. Its page goes to
# <output>/docs unless a doc_dir is given, never into the real docs.
QUICK = {
    "steps": 6,
    "save_steps": 2,
    "dynamics_every": 1,
    "seeds": 1,
    "methods": "none,clip_cov",
    "eval_problems": 16,
    "output": "runs/study-quick",
}


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
    detect: float  # the difference in final held-out avg@k the seeds are planned to detect


# The per-run summaries of a study (study/summary.py): <doc_dir>/<name>_runs/<method>/seed<k>/ and this record.
SUMMARY_RECORD = "study.json"


def summary_dir(study: Study) -> Path:
    return study.doc_dir / f"{study.name}_runs"


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
    data = _keys(data, TOP_KEYS - OPTIONAL_KEYS, OPTIONAL_KEYS, "the study config")
    for key in ("threads", "steps", "seeds", "save_steps", "dynamics_every"):
        check(isinstance(data[key], int) and data[key] >= 1, key, data[key], "an integer >= 1")
    # The last checkpoint must be the final model, so that the table's final accuracy is the trained policy's.
    check(data["steps"] % data["save_steps"] == 0, "save_steps", data["save_steps"], f"a divisor of {data['steps']}")
    evaluation = EvalSpec(**_keys(data["eval"], EVAL_KEYS, set(), "eval"))
    for key in ("problems", "k", "batch_size", "grading_workers"):
        value = getattr(evaluation, key)
        check(isinstance(value, int) and value >= 1, f"eval.{key}", value, "an integer >= 1")
    temperature = evaluation.temperature
    check(isinstance(temperature, int | float) and temperature >= 0, "eval.temperature", temperature, "a number >= 0")
    fit = FitSpec(**_keys(data["fit"], FIT_KEYS, set(), "fit"))
    check(0 < fit.early_fraction < 1, "fit.early_fraction", fit.early_fraction, "strictly between 0 and 1")
    check(0 < fit.window <= 0.5, "fit.window", fit.window, "in (0, 0.5]")
    methods = data["methods"]
    check(isinstance(methods, dict) and bool(methods), "methods", methods, "a mapping of method name -> settings")
    train_args = data.get("train_args") or {}
    check(isinstance(train_args, dict), "train_args", train_args, "a mapping of train flags")
    detect = data.get("detect", DEFAULT_DETECT)
    check(isinstance(detect, int | float) and 0 < detect < 1, "detect", detect, "a number in (0, 1)")
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
        detect=float(detect),
    )


def read_study_file(path: Path) -> dict[str, Any]:
    """The study YAML as a mapping (not yet validated: overrides come first)."""
    return read_yaml_mapping(path, "--config")


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Set each override (a name of OVERRIDES -> value; None: not given) at its key path in `data`, in place."""
    for name, keys in OVERRIDES.items():
        if (value := overrides.get(name)) is not None:
            section = data
            for key in keys[:-1]:
                section = section.setdefault(key, {})
            section[keys[-1]] = value


def select_methods(data: dict[str, Any], names: str) -> None:
    """Keep the comma-separated methods of `data` (in that order), in place; an unknown name is refused."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    available = data.get("methods") or {}
    unknown = [name for name in chosen if name not in available]
    check(not unknown, "--methods", names, f"names among {sorted(available)}")
    data["methods"] = {name: available[name] for name in chosen}
