"""Print `name==lower` for every dependency of pyproject.toml (and the extras named on the command line) with a lower
bound, for .ci/lowest_versions. torch is left out: the CPU build installed first stays (see docs/install.md)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

KEEP_INSTALLED = {"torch"}
project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += project["optional-dependencies"][extra]
for requirement in requirements:
    match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", requirement)
    name, specifiers = match.group(1), match.group(3)
    lower = re.search(r">=\s*([0-9][^,;\s]*)", specifiers)
    if name in KEEP_INSTALLED:
        continue
    print(f"{name}=={lower.group(1)}" if lower else requirement)
