"""`entropy-rl train --accelerate_config NAME|PATH [--num_processes N] ...`: run the training under `accelerate launch`.

    entropy-rl train --accelerate_config zero2 --config recipes/qwen2.5-math-7b/clip_cov.yaml
    entropy-rl train --accelerate_config cpu_2proc --config recipes/toy/grpo.yaml --per_device_train_batch_size 32

is the same as

    accelerate launch --config_file recipes/accelerate/zero2.yaml -m entropy_rl.cli train \
        --config recipes/qwen2.5-math-7b/clip_cov.yaml

and both work. `maybe_relaunch` strips the two launcher flags, starts `accelerate launch` (the one of this Python
environment) on `-m entropy_rl.cli train` with every other argument unchanged, and returns its exit code.

NAME|PATH resolves, first match wins (`accelerate_config_names()` lists what a name can be):
1. an existing file, as given;
2. `recipes/accelerate/NAME.yaml` under the current directory (run from a checkout of this repository);
3. `recipes/accelerate/NAME.yaml` in the source tree this package was imported from (editable installs, any cwd);
4. TRL's packaged configs, `trl/accelerate_configs/NAME.yaml` (single_gpu, multi_gpu, zero1-3, fsdp1, fsdp2).
A pip-installed entropy-rl has no recipes directory, so there NAME means TRL's config of that name; copy
recipes/accelerate/ from the repository and pass a path (or run from the directory holding it) to use ours.

A config with `use_cpu: true` (recipes/accelerate/cpu_2proc.yaml) also gets ACCELERATE_USE_CPU=true and, unless
set, OMP_NUM_THREADS=1 in the launched environment: accelerate's multi-process launcher does not pass CPU mode on,
and without it every process would train alone on the CPU as "rank 0 of 1" (docs/recipes.md).
"""

from __future__ import annotations

import importlib.resources
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entropy_rl.errors import ConfigError

CONFIG_FLAG = "--accelerate_config"
PROCESSES_FLAG = "--num_processes"
RECIPES_SUBDIR = Path("recipes") / "accelerate"
# The checkout holding this package's source (entropy_rl/cli/launch.py -> the repository root).
SOURCE_ROOT = Path(__file__).resolve().parents[2]
# Set by torchrun (and so by multi-process `accelerate launch`) in every process it starts.
LAUNCHED_ENV = ("LOCAL_RANK",)

__all__ = ["accelerate_config_names", "build_launch", "maybe_relaunch", "resolve_accelerate_config"]


def _trl_configs_dir() -> Path | None:
    """The directory of TRL's packaged accelerate configs (a namespace package: no __init__.py, so no __file__)."""
    try:
        package = importlib.resources.files("trl.accelerate_configs")
    except ModuleNotFoundError:
        return None
    for child in package.iterdir():
        if isinstance(child, os.PathLike):
            return Path(child).parent
    return None


def _search_dirs() -> list[Path]:
    """Directories whose NAME.yaml files are accelerate config names, in priority order (TRL's last)."""
    dirs = [Path.cwd() / RECIPES_SUBDIR, SOURCE_ROOT / RECIPES_SUBDIR]
    trl_dir = _trl_configs_dir()
    if trl_dir is not None:
        dirs.append(trl_dir)
    unique: list[Path] = []
    for directory in dirs:
        if directory.is_dir() and directory.resolve() not in {d.resolve() for d in unique}:
            unique.append(directory)
    return unique


def accelerate_config_names() -> dict[str, Path]:
    """Every name `--accelerate_config` accepts, mapped to the file it resolves to."""
    names: dict[str, Path] = {}
    for directory in _search_dirs():
        for path in sorted(directory.glob("*.yaml")):
            names.setdefault(path.stem, path)
    return names


def resolve_accelerate_config(value: str) -> Path:
    """An existing file path, or a config name (see the module docstring for the search order)."""
    if Path(value).is_file():
        return Path(value)
    names = accelerate_config_names()
    if value in names:
        return names[value]
    raise ConfigError(
        f"invalid config: {CONFIG_FLAG}={value!r} is neither a file nor a known name; allowed: a path to an "
        f"accelerate config YAML or one of {sorted(names)} (searched {[str(d) for d in _search_dirs()]})"
    )


def _pop_flag(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """Remove every `flag VALUE` / `flag=VALUE` from argv; return the rest and the last value (None if absent)."""
    rest: list[str] = []
    value: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == flag:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"invalid config: {flag} needs a value")
            value = argv[i + 1]
            i += 2
            continue
        if arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
            if not value:
                raise ConfigError(f"invalid config: {flag} needs a value")
        else:
            rest.append(arg)
        i += 1
    return rest, value


def _config_uses_cpu(path: Path) -> bool:
    import yaml

    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    return isinstance(config, dict) and bool(config.get("use_cpu", False))


def build_launch(argv: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """The `accelerate launch` command and its environment for argv, or None when argv has no --accelerate_config."""
    rest, config_value = _pop_flag(list(argv), CONFIG_FLAG)
    rest, processes = _pop_flag(rest, PROCESSES_FLAG)
    if config_value is None:
        if processes is not None:
            raise ConfigError(
                f"invalid config: {PROCESSES_FLAG}={processes!r} without {CONFIG_FLAG}; allowed: only together with "
                f"{CONFIG_FLAG} NAME|PATH (or pass --num_processes to `accelerate launch` itself)"
            )
        return None
    if any(name in os.environ for name in LAUNCHED_ENV):
        raise ConfigError(
            f"invalid config: {CONFIG_FLAG} inside a process that `accelerate launch`/torchrun already started; "
            f"allowed: either `entropy-rl train {CONFIG_FLAG} ...` or `accelerate launch ... -m entropy_rl.cli train`"
        )
    config_path = resolve_accelerate_config(config_value)
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(config_path)]
    if processes is not None:
        if not processes.isdigit() or int(processes) < 1:
            raise ConfigError(f"invalid config: {PROCESSES_FLAG}={processes!r}; allowed: an integer >= 1")
        command += [PROCESSES_FLAG, processes]
    command += ["-m", "entropy_rl.cli", "train", *rest]
    env = dict(os.environ)
    if _config_uses_cpu(config_path):
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")
    return command, env


def maybe_relaunch(argv: list[str], runner: Callable[..., Any] = subprocess.run) -> int | None:
    """Run `entropy-rl train` under `accelerate launch` if argv has --accelerate_config; return its exit code.

    Returns None when argv has no --accelerate_config: the caller trains in this process. Raises ConfigError for an
    unknown config name, a bad --num_processes, or --num_processes without --accelerate_config.
    """
    launch = build_launch(argv)
    if launch is None:
        return None
    command, env = launch
    shown = ["accelerate", "launch", *command[4:]]
    print(f"entropy-rl train: {shlex.join(shown)}", file=sys.stderr, flush=True)
    return int(runner(command, env=env).returncode)
