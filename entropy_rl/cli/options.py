"""Flags in TRL's spelling (--snake_case) for the argparse commands, the older --dashed-spelling kept as an alias.

The alias is accepted but not shown in --help, so the documented form is the one `entropy-rl train` uses too.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any, NoReturn


class _HelpFormatter(argparse.HelpFormatter):
    """Lists each option under its --snake_case name only (aliases stay out of --help)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        aliases = getattr(action, "hidden_aliases", ())
        if aliases:
            action = copy.copy(action)
            action.option_strings = [name for name in action.option_strings if name not in aliases]
        return super()._format_action_invocation(action)


class _OneLineErrors(argparse.ArgumentParser):
    """Reports a bad flag in one line, as every other bad input (argparse prints its usage text first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parser of `entropy-rl COMMAND`."""
    return _OneLineErrors(prog=f"entropy-rl {command}", description=description, formatter_class=_HelpFormatter)


def add_option(parser: Any, name: str, **kwargs: Any) -> argparse.Action:
    """Add --name_with_underscores to a parser or group, with --name-with-dashes as a hidden alias."""
    if not name.startswith("--"):
        raise ValueError(f"{name!r}: options start with --")
    alias = "--" + name[2:].replace("_", "-")
    names = [name] if alias == name else [name, alias]
    action = parser.add_argument(*names, **kwargs)
    action.hidden_aliases = tuple(names[1:])
    return action
