"""An exclusive lock on a file, for work that several processes may start at once (the toy warm-up, the hard sets,
a study's run): the second waits until the first is done and then sees its result; or, for a training run's output
folder, the second is refused at once (`lock_or_refuse`). Both are `filelock` locks (an OS lock on the file, freed
when the holder exits, however it exits)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import EntropyRLError


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the duration; blocks until it is free."""
    with FileLock(path):
        yield


@contextmanager
def lock_or_refuse(path: Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the duration; if another process holds it, raise
    EntropyRLError(`refusal`) at once instead of waiting."""
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise EntropyRLError(refusal) from None
    try:
        yield
    finally:
        lock.release()
