"""`entropy-rl train --accelerate_config NAME|PATH [--num_processes N] ...`: run the training under `accelerate launch`.

    entropy-rl train --accelerate_config zero2 --config recipes/qwen2.5-math-7b/clip_cov.yaml
    entropy-rl train --accelerate_config cpu_2proc --config recipes/toy/grpo.yaml --per_device_train_batch_size 32

is the same as

    accelerate launch --config_file recipes/accelerate/zero2.yaml -m entropy_rl.cli train \
        --config recipes/qwen2.5-math-7b/clip_cov.yaml

and both work. `maybe_relaunch` strips the two launcher flags, prints the equivalent `accelerate launch` line and runs
it through accelerate's own launch API (`launch_command_parser` + `launch_command`, what the `accelerate` program
calls), on `-m entropy_rl.cli train` with every other argument unchanged; it returns the launch's exit code.

NAME|PATH resolves, first match wins (`accelerate_config_names()` lists what a name can be):
1. an existing file, as given;
2. `recipes/accelerate/NAME.yaml` under the current directory (your own copy next to your recipes);
3. the package's recipes/accelerate/NAME.yaml (entropy_rl/resources.py: the checkout's folder, or a wheel's copy);
4. TRL's packaged configs, `trl/accelerate_configs/NAME.yaml` (single_gpu, multi_gpu, zero1-3, fsdp1, fsdp2).

A config with `use_cpu: true` (recipes/accelerate/cpu_2proc.yaml) also gets ACCELERATE_USE_CPU=true and, unless
set, OMP_NUM_THREADS=1 in the launched environment: accelerate's multi-process launcher does not pass CPU mode on,
and without it every process would train alone on the CPU as "rank 0 of 1" (docs/recipes.md).
"""

from __future__ import annotations

import importlib.resources
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from entropy_rl.errors import ConfigError
from entropy_rl.resources import recipes_dir

CONFIG_FLAG = "--accelerate_config"
PROCESSES_FLAG = "--num_processes"
RECIPES_SUBDIR = Path("recipes") / "accelerate"
# Set by torchrun (and so by multi-process `accelerate launch`) in every process it starts.
LAUNCHED_ENV = ("LOCAL_RANK",)

__all__ = ["Launch", "accelerate_config_names", "build_launch", "maybe_relaunch", "resolve_accelerate_config"]


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
    dirs = [Path.cwd() / RECIPES_SUBDIR, recipes_dir() / "accelerate"]
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


@dataclass
class Launch:
    """One `accelerate launch`: its arguments (after `launch`) and the environment the processes get."""

    args: list[str]
    env: dict[str, str]

    def shown(self) -> str:
        return shlex.join(["accelerate", "launch", *self.args])


def build_launch(argv: list[str], program: list[str] | None = None) -> Launch | None:
    """The `accelerate launch` of argv (None when argv has no --accelerate_config).

    `program` is what runs under the launcher, by default `-m entropy_rl.cli train` and the rest of argv.
    """
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
    args = ["--config_file", str(config_path)]
    if processes is not None:
        if not processes.isdigit() or int(processes) < 1:
            raise ConfigError(f"invalid config: {PROCESSES_FLAG}={processes!r}; allowed: an integer >= 1")
        args += [PROCESSES_FLAG, processes]
    args += program if program is not None else ["-m", "entropy_rl.cli", "train", *rest]
    env: dict[str, str] = {}
    if _config_uses_cpu(config_path):
        env["ACCELERATE_USE_CPU"] = "true"
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    return Launch(args, env)


def accelerate_launch(launch: Launch) -> int:
    """Run `accelerate launch ARGS` in this process through accelerate's API; the exit code of the launched program.

    accelerate starts the processes itself (torch.distributed.run for several, a subprocess for one) with a copy of
    this environment, to which `launch.env` is added for the duration of the launch.
    """
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser
    from accelerate.utils import patch_environment

    args = launch_command_parser().parse_args(launch.args)
    try:
        with patch_environment(**launch.env):
            launch_command(args)
    except subprocess.CalledProcessError as err:  # one process: its exit code
        return err.returncode or 1
    except SystemExit as err:  # accelerate exits with 1 after a quiet failure
        return int(err.code or 0) if isinstance(err.code, int) else 1
    except Exception as err:  # torch.distributed.run raises ChildFailedError naming the failed ranks
        failures = getattr(err, "failures", None)
        if not failures:
            raise
        print(f"entropy-rl train: {err}", file=sys.stderr, flush=True)
        return max(int(getattr(failure, "exitcode", 1) or 1) for failure in failures.values())
    return 0


def maybe_relaunch(argv: list[str], runner: Callable[[Launch], int] = accelerate_launch) -> int | None:
    """Run `entropy-rl train` under `accelerate launch` if argv has --accelerate_config; return its exit code.

    Returns None when argv has no --accelerate_config: the caller trains in this process. Raises ConfigError for an
    unknown config name, a bad --num_processes, or --num_processes without --accelerate_config.
    """
    launch = build_launch(argv)
    if launch is None:
        return None
    print(f"entropy-rl train: {launch.shown()}", file=sys.stderr, flush=True)
    return int(runner(launch))
