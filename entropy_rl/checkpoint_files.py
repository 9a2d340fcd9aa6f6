"""A checkpoint's files: written under RUN_DIR/.staging/, listed in a manifest written last, renamed into place
(`publish_checkpoint`), and checked before a resume (`checkpoint_problem`, `verify_checkpoint`, `latest_checkpoint`).

    RUN_DIR/
      checkpoint-<step>/       complete checkpoints; entropy_rl_checkpoint.json in each lists its files and sizes
      .staging/                the checkpoint being written (never resumed from; cleared before each save)

The run folder around them (config, metrics, curve, which checkpoints exist) is entropy_rl.rundir's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

from .rundir import CHECKPOINT_NAME, PathLike, RunDirError, list_checkpoints

STAGING_DIR = ".staging"
# Regularizer state saved in each checkpoint, one file per rank (Clip-Cov's random draws differ per rank).
STATE_FILE = "entropy_rl_state_rank{rank}.pt"
# Written last into a checkpoint: its step, world size and every file with its size (truncation shows as a mismatch).
MANIFEST_FILE = "entropy_rl_checkpoint.json"


class CheckpointError(RunDirError):
    """A checkpoint cannot be written or resumed from; the message names the file and the previous complete one."""


TRAINER_STATE_FILE = "trainer_state.json"
# torch zip archives up to this size get their CRCs checked on verification; larger ones (optimizer states of big
# models) only their central directory, which a truncated file lacks. Full reads of tens of GB would double resume time.
CRC_CHECK_MAX_BYTES = 64 * 2**20


def rank_files(world_size: int) -> list[str]:
    """Per-rank files every checkpoint holds: transformers' RNG states and entropy-rl's regularizer state."""
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    return [*rng, *(STATE_FILE.format(rank=rank) for rank in range(world_size))]


def staging_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / STAGING_DIR


def clear_staging(run_dir: PathLike) -> Path:
    """Empty RUN_DIR/.staging/ (what a killed save left there) and return it."""
    staging = staging_dir(run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def write_manifest(folder: PathLike, step: int, world_size: int) -> Path:
    """List every file of a fully written checkpoint with its size; written last, fsynced."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    path = folder / MANIFEST_FILE
    with open(path, "w") as handle:
        json.dump({"step": step, "world_size": world_size, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_checkpoint(staged: PathLike, final: PathLike) -> Path:
    """Rename a fully written checkpoint into place (replacing one of the same step, e.g. of an abandoned future)."""
    staged, final = Path(staged), Path(final)
    replaced = staged.with_name(f"replaced-{final.name}")
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
    os.rename(staged, final)
    _fsync_dir(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)
    with contextlib.suppress(OSError):
        staged.parent.rmdir()  # an empty staging folder is clutter; another rank's leftovers keep it
    return final


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file must hold its header and every tensor the header promises."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "is truncated (no header)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "is truncated (header cut off)"
        header = json.loads(handle.read(length))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        return f"is truncated ({size} bytes, the header promises {8 + length + end})"
    return None


def _torch_archive_problem(path: Path) -> str | None:
    """torch.save writes a zip archive: a cut-off file has no central directory; small ones get their CRCs checked."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip() if path.stat().st_size <= CRC_CHECK_MAX_BYTES else None
    return None if bad is None else f"is corrupted (CRC mismatch in {bad})"


def _file_problem(path: Path, size: int | None) -> str | None:
    """Why `path` cannot be loaded (missing, another size than written, unparsable), or None."""
    if not path.is_file():
        return "is missing"
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"is {actual} bytes, {size} were written (truncated or changed)"
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            return _safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            return _torch_archive_problem(path)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, struct.error) as err:
        return f"is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})"
    return None


def _expected_files(folder: Path) -> dict[str, int | None]:
    """File -> size as written (None: unknown) of what a complete checkpoint holds."""
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        data = json.loads(manifest.read_text())  # a broken manifest: ValueError, reported by checkpoint_problem
        expected: dict[str, int | None] = dict(data["files"])
        world_size = int(data["world_size"])
        weights: list[str] = []
    else:  # written by plain TRL or an older entropy-rl: the files every such checkpoint holds
        world_size = max(1, len(list(folder.glob("rng_state_*.pth"))))
        expected = {}
        weights = [
            "model.safetensors.index.json"
            if (folder / "model.safetensors.index.json").exists()
            else "model.safetensors",
            "optimizer.pt",
            "scheduler.pt",
        ]
    for name in [TRAINER_STATE_FILE, *weights, *rank_files(world_size)]:
        expected.setdefault(name, None)
    index = folder / "model.safetensors.index.json"
    if index.is_file() and not _file_problem(index, expected.get(index.name)):
        for shard in sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())):
            expected.setdefault(shard, None)
    return expected


def checkpoint_problem(folder: PathLike) -> str | None:
    """Why a checkpoint cannot be resumed from ("optimizer.pt is missing, ..."), or None if complete and loadable.

    Complete: its manifest (written last) is there and every file it lists has the size it was written with, plus the
    files every checkpoint needs (trainer_state.json, each rank's RNG and regularizer state). Loadable: JSON parses,
    safetensors hold what their header promises, torch archives have their central directory (and CRCs, when small).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "is not a directory"
    try:
        expected = _expected_files(folder)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST_FILE} is unreadable ({type(err).__name__}: {err})"
    problems = [
        f"{name} {problem}" for name, size in expected.items() if (problem := _file_problem(folder / name, size))
    ]
    return ", ".join(problems) or None


def previous_complete_checkpoint(folder: PathLike) -> Path | None:
    """The newest complete checkpoint in the same run directory with an earlier step than `folder`."""
    folder = Path(folder)
    match = CHECKPOINT_NAME.fullmatch(folder.name)
    if match is None or not folder.parent.is_dir():
        return None
    step = int(match.group(1))
    for other_step, path in reversed(list_checkpoints(folder.parent)):
        if other_step < step and checkpoint_problem(path) is None:
            return path
    return None


def verify_checkpoint(folder: PathLike) -> Path:
    """`folder` when it can be resumed from; otherwise CheckpointError naming the file and the previous complete one."""
    folder = Path(folder)
    problem = checkpoint_problem(folder)
    if problem is None:
        return folder
    previous = previous_complete_checkpoint(folder)
    offer = f"resume from {previous} instead" if previous else "there is no earlier complete checkpoint"
    raise CheckpointError(
        f"invalid config: resume_from_checkpoint={str(folder)!r} cannot be resumed: {problem}; {offer} "
        "(--resume_from_checkpoint latest picks the newest complete one)"
    )


def latest_checkpoint(run_dir: PathLike) -> tuple[Path | None, list[str]]:
    """(the newest complete and loadable checkpoint or None, what was skipped on the way and why)."""
    run_dir = Path(run_dir)
    skipped = []
    for _, path in reversed(list_checkpoints(run_dir) if run_dir.is_dir() else []):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name} ({problem})")
    return None, skipped
