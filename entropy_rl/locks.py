"""An exclusive lock on a file, for work that several processes may start at once (the toy warm-up, the hard sets,
a study's run): the second waits until the first is done and then sees its result; or, for a training run's output
folder, the second is refused at once (`lock_or_refuse`)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import EntropyRLError


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the duration; blocks until it is free."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def lock_or_refuse(path: Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` for the duration; if another process holds it, raise
    EntropyRLError(`refusal`) at once instead of waiting."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EntropyRLError(refusal) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
