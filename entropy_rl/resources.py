"""The files that ship with the package: benchmark specs and recipes, found the same way in a wheel and a checkout.

The repository keeps them at its top level (`eval/benchmarks/`, `recipes/`), their documented location. A wheel
carries copies inside the package, in its `_data` folder as `_data/benchmarks/` and `_data/recipes/` (pyproject.toml
maps the two folders there with setuptools' `package-dir`), read through importlib.resources. A source checkout or an
editable install has no such copies, so the folders are read where they are, next to the package's source.

    benchmark_dir() / "arithmetic.yaml"
    find_recipe("toy/grpo")                      # also "toy/grpo.yaml" and "recipes/toy/grpo.yaml"
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from .errors import ConfigError

# The checkout holding this package's source (entropy_rl/resources.py -> the repository root).
SOURCE_ROOT = Path(__file__).resolve().parents[1]
PACKAGED = "_data"  # the folder inside the package that a wheel's copies live in
# name -> where the folder lies in the repository
FOLDERS = {"benchmarks": Path("eval") / "benchmarks", "recipes": Path("recipes")}
RECIPE_PREFIX = "recipes/"
YAML_SUFFIXES = (".yaml", ".yml")


def data_dir(name: str) -> Path:
    """The folder `name` ("benchmarks" or "recipes"): the packaged copy if this is a wheel install, else the source."""
    packaged = importlib.resources.files("entropy_rl") / PACKAGED / name
    if packaged.is_dir():
        # Installed wheels are plain folders on disk; a zipped package would need as_file, which no installer makes.
        return Path(str(packaged))
    return SOURCE_ROOT / FOLDERS[name]


def benchmark_dir() -> Path:
    return data_dir("benchmarks")


def recipes_dir() -> Path:
    return data_dir("recipes")


def list_recipes() -> list[str]:
    """Every YAML under the recipes folder, as the name `find_recipe` accepts (e.g. 'toy/grpo', 'accelerate/zero2')."""
    root = recipes_dir()
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))


def find_recipe(value: str) -> Path:
    """An existing file as given, else a packaged recipe by name, with or without `recipes/` and `.yaml`.

    So the documented `--config recipes/toy/grpo.yaml` works from any directory once the package is installed.
    """
    if Path(value).is_file():
        return Path(value)
    name = value[len(RECIPE_PREFIX) :] if value.startswith(RECIPE_PREFIX) else value
    root = recipes_dir()
    candidates = [root / name] if name.endswith(YAML_SUFFIXES) else [root / f"{name}{s}" for s in YAML_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        f"invalid config: --config {value!r} is neither a file nor a recipe name; allowed: a YAML path or one of "
        f"{list_recipes()} (in {root}; `entropy-rl train --list_recipes`)"
    )


def yaml_error_text(path: Path, err: Exception) -> str:
    """PyYAML's multi-line report as one line: `FILE:LINE:COLUMN: not valid YAML (problem)`."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
    return f"{where}: not valid YAML ({problem})"


def read_yaml_mapping(path: Path, flag: str) -> dict[str, Any]:
    """The YAML mapping in `path`, or a ConfigError naming `flag`, the file and, for a syntax error, its line and
    column (one line, not PyYAML's multi-line report)."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"invalid config: {flag} {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid config: {flag} {yaml_error_text(path, err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"invalid config: {flag} {str(path)!r} cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config: {flag} {path}: expected a mapping of field: value, got {type(data).__name__}"
        )
    return data
