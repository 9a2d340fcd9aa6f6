"""Docs, recipes, specs and the package cite only what a user has: no machine paths, no notes outside the repository,
and every repository file they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SCANNED += sorted((REPO / "recipes").rglob("*.yaml")) + sorted((REPO / "eval").rglob("*.yaml"))
SCANNED += sorted((REPO / "entropy_rl").rglob("*.py")) + sorted((REPO / "perf").rglob("*.py"))

# A path of one machine (/work/..., /home/..., /tmp/... as a source of data, shared/ beside the checkout), or notes
# that live outside the repository ("research notes", "algorithms.md", "§7.3"-style references into them).
FORBIDDEN = {
    "machine path": re.compile(r"(?<![\w.])/(?:work|home|root|mnt|data)/\w"),
    "shared folder beside the repository": re.compile(r"shared/(?:data|research)|\"shared\"\s*/|/\s*\"shared\""),
    "research notes": re.compile(r"research notes|research/|algorithms\.md|trl-grpo-internals|cpu-feasibility"),
    "section of notes": re.compile(r"\((?:research notes )?§\d"),
}


def _files() -> list[Path]:
    return [path for path in SCANNED if path.is_file()]


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_machine_path_or_outside_notes(path):
    text = path.read_text(encoding="utf-8")
    for what, pattern in FORBIDDEN.items():
        found = [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]
        assert not found, f"{path.relative_to(REPO)}: {what} at line(s) {found}"


# Repository-relative references in prose: docs/x.md, recipes/a/b.yaml, entropy_rl/x.py, perf/x.py, eval/..., tests/...
_REFERENCE = re.compile(r"(?<![\w/.-])((?:docs|recipes|entropy_rl|perf|eval|tests)/[\w./+-]*\w)")


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_files_exist(path):
    text = path.read_text(encoding="utf-8")
    missing = sorted(
        {ref for ref in _REFERENCE.findall(text) if not _PLACEHOLDER.search(ref) and not _exists(ref, path)}
    )
    assert not missing, f"{path.relative_to(REPO)} names files that do not exist: {missing}"


_PLACEHOLDER = re.compile(r"[<*{]|/[A-Z_]+\.|/[A-Z_]+(?:/|$)")  # recipes/accelerate/NAME.yaml, docs/<page>.md


def _exists(ref: str, source: Path) -> bool:
    ref = ref.rstrip(".")
    return (REPO / ref).exists() or (source.parent / ref).exists()


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The patterns find the kinds of text they are meant to forbid (so the tests above can fail)."""
    bad = [
        "see `/work/shared/research/algorithms.md` §1.3",
        'REPO_ROOT.parent / "shared" / "data" / "math"',
        "per micro-batch (research notes §7.3)",
        "<repo>/../shared/data/math",
    ]
    for text in bad:
        assert any(pattern.search(text) for pattern in FORBIDDEN.values()), text
    assert _REFERENCE.findall("as docs/nope.md says") == ["docs/nope.md"] and not _exists("docs/nope.md", tmp_path)
