"""What every command shares: one way to report bad input."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from types import TracebackType

from entropy_rl.errors import EntropyRLError


def fail(command: str, message: object) -> int:
    """Print `entropy-rl CMD: error: MESSAGE` on stderr and return the usage exit code 2."""
    print(f"entropy-rl {command}: error: {message}", file=sys.stderr)
    return 2


def run_command(command: str, body: Callable[[], int | None]) -> int:
    """Run a command's body; the package's own errors (bad config, file, run directory) become one line and exit 2."""
    try:
        return int(body() or 0)
    except EntropyRLError as err:
        return fail(command, err)


class HeldWarnings:
    """Python warnings raised while a command checks its input (a library's FutureWarning on building the config),
    held back so that a bad input's error line is all that is printed; shown as usual once the checks have passed
    (`release`), dropped when they fail."""

    def __init__(self) -> None:
        self._catcher: warnings.catch_warnings | None = None
        self._held: list[warnings.WarningMessage] = []

    def __enter__(self) -> HeldWarnings:
        self._catcher = warnings.catch_warnings(record=True)  # the filters in force still decide what is recorded
        self._held = self._catcher.__enter__()
        return self

    def release(self) -> None:
        """Stop holding and show what was held (a second call does nothing)."""
        if self._catcher is None:
            return
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        for held in self._held:
            warnings.showwarning(held.message, held.category, held.filename, held.lineno, held.file, held.line)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.release()
        elif self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            self._catcher = None
