"""What every command shares: one way to report bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable

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
