"""Append-only JSONL files that survive kills: each row is flushed to the OS at once, a torn last line is ignored.

Rows are not fsynced one by one: a killed process loses nothing the OS already holds, and a per-step fsync can cost
tens of milliseconds on cluster file systems. Rewrites (on resume) are fsynced before they replace the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; null is what every JSON reader understands as "no value".
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a missing file is empty, a torn final line (killed mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    return rows


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row; it is in the OS's hands (safe from a process kill) when this returns."""
    with open(path, "a") as f:
        f.write(json.dumps(_clean(row)) + "\n")


def rewrite_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically replace the file's content (write a sibling, then rename over it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(_clean(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def keep_rows(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Drop the rows for which `keep` is false (e.g. steps after the checkpoint a run resumes from); return the rest."""
    rows = read_rows(path)
    kept = [row for row in rows if keep(row)]
    if len(kept) != len(rows) or Path(path).exists():
        rewrite_rows(path, kept)
    return kept
