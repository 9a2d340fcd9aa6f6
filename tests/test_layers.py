"""The layers of docs/architecture.md, checked by import-linter with the contracts in pyproject.toml.

The check runs on the real tree, and on copies with one deliberately wrong import each, which it must refuse.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("stats.py", "import entropy_rl.cli", "The library never imports the commands"),
        ("regularizers/steer.py", "import entropy_rl.trainer", "never import the trainer"),
        ("fit.py", "import entropy_rl.evaluation.runner", "not through each other"),
        ("rundir.py", "import entropy_rl.fit", "No import cycles"),
    ],
)
def test_a_wrong_import_breaks_the_check(tmp_path, module, bad_import, contract):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "entropy_rl", tmp_path / "entropy_rl", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "entropy_rl" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # deliberately wrong\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    # The report wraps long contract names: read it as one line, each contract followed by KEPT or BROKEN.
    report = " ".join(result.stdout.split())
    assert re.search(re.escape(contract) + r"((?!KEPT).)*?BROKEN", report), result.stdout
