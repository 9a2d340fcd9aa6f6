"""The package as a user installs it: a wheel in a fresh virtual environment, used from a folder outside the repository.

The slow tests build the wheel once (no warning from the build, the license declared as an SPDX expression and its
file in the dist-info), install it (after the pinned CPU torch, as README.md says) into a new venv, and from
an empty folder runs the default training (a few steps), `entropy-rl eval --benchmarks arithmetic`, a recipe by name,
and the lists of benchmarks and recipes. Then it replaces the wheel by an editable install of the checkout (README's
`pip install -e .`) and checks that the specs and recipes are read from the checkout's folders. About 4 minutes,
most of it pip; the dependencies come from pip's usual sources (this machine: its local index and caches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU_TORCH = "torch==2.13.0"  # README.md's first install step


def declared_packages() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_package_list_is_every_package_and_the_data_folders_exist():
    """pyproject.toml lists packages by hand (data folders are mapped in): a new subpackage must be added there."""
    from setuptools import find_packages

    settings = declared_packages()
    code = sorted(p for p in settings["packages"] if (REPO / p.replace(".", "/") / "__init__.py").is_file())
    assert code == sorted(find_packages(str(REPO), include=["entropy_rl*"]))
    # A data folder with an importable name inside the code must be a listed package (setuptools warns otherwise).
    for package in code:
        for sub in (REPO / package.replace(".", "/")).iterdir():
            if sub.is_dir() and sub.name.isidentifier() and sub.name != "__pycache__":
                assert f"{package}.{sub.name}" in settings["packages"], sub
    for package, folder in settings["package-dir"].items():
        assert package.startswith("entropy_rl._data.") and (REPO / folder).is_dir()
        assert package in settings["packages"]
        # A data subfolder with an importable name must be a listed package (setuptools warns otherwise), with its data.
        for sub in (REPO / folder).iterdir():
            if sub.is_dir() and sub.name.isidentifier():
                assert f"{package}.{sub.name}" in settings["packages"], sub
                assert settings["package-data"][f"{package}.{sub.name}"] == ["*.yaml"], sub


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without what would import the checkout instead of the installed package."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, and pip's verbose build log (setuptools' own output and warnings)."""
    dist = tmp_path_factory.mktemp("dist")
    env = fresh_env(dist)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # else setuptools warns that byte-compiling is disabled
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(dist)]
    result = subprocess.run([*command, str(REPO)], cwd=dist, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = result.stdout.decode()
    assert result.returncode == 0, log[-3000:]
    (wheel,) = dist.glob("entropy_rl-*.whl")
    return wheel, log


@pytest.mark.slow
def test_the_wheel_builds_without_warnings_and_ships_its_license(built):
    wheel, log = built
    root = "WARNING: Running pip as the 'root' user"  # pip's own, about the CI machine's user, not the package
    lines = [line for line in log.splitlines() if not line.strip().startswith(root)]  # also the build env's pip
    warnings = [line for line in lines if "warn" in line.lower() or "deprecat" in line.lower()]
    assert warnings == []
    with zipfile.ZipFile(wheel) as archive:
        (info,) = {Path(name).parts[0] for name in archive.namelist() if ".dist-info/" in name}
        assert archive.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
        metadata = archive.read(f"{info}/METADATA").decode().splitlines()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert "Apache License" in (REPO / "LICENSE").read_text().splitlines()[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_from_a_folder_outside_the_repository(built, tmp_path):
    env = fresh_env(tmp_path)
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    wheel = built[0]
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python, program = str(venv / "bin" / "python"), str(venv / "bin" / "entropy-rl")
    # --no-compile: byte-compiling torch and transformers would double the install time; imports compile lazily.
    run([python, "-m", "pip", "install", "-q", "--no-compile", CPU_TORCH], work, env)
    run([python, "-m", "pip", "install", "-q", "--no-compile", str(wheel)], work, env)

    where = run(
        [python, "-c", "import entropy_rl.resources as r; print(r.__file__); print(r.benchmark_dir())"], work, env
    )
    module_file, benchmarks = where.split()
    assert str(venv) in module_file and Path(benchmarks) == Path(module_file).parent / "_data" / "benchmarks"
    assert run([program, "--version"], work, env).strip().startswith("entropy-rl ")
    assert "arithmetic" in run([program, "eval", "--list_benchmarks"], work, env).split()
    assert "toy/clip_cov" in run([program, "train", "--list_recipes"], work, env).split()

    few = ["--max_steps", "3", "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1"]
    out = run(
        [program, "train", *few, "--output_dir", "runs/default", "--save_strategy", "steps", "--save_steps", "3"],
        work,
        env,
    )
    assert "metrics: runs/default/metrics.jsonl (3 steps)" in out
    table = run(
        [
            program,
            "eval",
            "--model",
            "runs/default/final",
            "--benchmarks",
            "arithmetic",
            "--limit",
            "16",
            "--no_progress",
            "--grading_workers",
            "1",
        ],
        work,
        env,
    )
    assert "arithmetic" in table and "avg@k" in table
    run([program, "train", "--config", "toy/clip_cov", *few, "--output_dir", "runs/clip_cov"], work, env)
    saved = json.loads((work / "runs" / "clip_cov" / "entropy_rl_config.json").read_text())
    assert saved["regularizer"] == "clip_cov" and saved["num_iterations"] == 2  # the recipe's settings

    # README's editable install of the checkout: the specs and recipes are its top-level folders.
    run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], work, env)
    where = run(
        [python, "-c", "import entropy_rl.resources as r; print(r.benchmark_dir()); print(r.recipes_dir())"], work, env
    )
    assert [Path(p) for p in where.split()] == [REPO / "eval" / "benchmarks", REPO / "recipes"]
    assert "toy/grpo" in run([program, "train", "--list_recipes"], work, env).split()
