"""Append-only JSONL files that survive kills: each row is flushed and fsynced, a torn last line is dropped on read."""

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
    """Append one row and make it durable before returning."""
    with open(path, "a") as f:
        f.write(json.dumps(_clean(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
