"""How `eval`, `fit`, `plot` and `study` read their flags: from dataclasses, with transformers' HfArgumentParser, as
`entropy-rl train` reads TRL's (entropy_rl/train_args.py).

Each field is a flag --name_with_underscores (HfArgumentParser also accepts --name-with-dashes; --help lists the
first only) whose help is the field's `metadata["help"]`. `--config FILE.yaml` sets any field (keys: the field names);
flags given on the command line override it, as TRL's TrlParser does. A bad flag or value is one line,
`entropy-rl CMD: error: ...`, and exit code 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from transformers import HfArgumentParser
from trl import TrlParser

from entropy_rl.errors import ConfigError
from entropy_rl.resources import read_yaml_mapping

CONFIG_FLAG = "--config"


class _HelpFormatter(argparse.HelpFormatter):
    """Lists each option under its --snake_case name only: the --dashed-spelling HfArgumentParser adds stays out."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        names = action.option_strings
        shown = [name for name in names if "-" not in name[2:] or "--" + name[2:].replace("-", "_") not in names]
        if shown != names:
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class CommandParser(HfArgumentParser):
    """The parser of `entropy-rl COMMAND` over `dataclass_types`.

    `positional` (dest of a list field, metavar): the field also takes bare arguments, which come first
    (`entropy-rl fit RUN_DIR ...` is `--runs RUN_DIR ...`) and replace a --config file's list; at least one is then
    required. A command whose dataclass has a `config` field of its own (study: the study YAML) keeps it and gets no
    YAML defaults from here.
    """

    def __init__(
        self,
        command: str,
        description: str,
        dataclass_types: Iterable[Any],
        positional: tuple[str, str] | None = None,
    ) -> None:
        dataclass_types = list(dataclass_types)
        super().__init__(
            dataclass_types,
            prog=f"entropy-rl {command}",
            description=description,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,  # `--fit_frac` must be an error, not silently `--fit_fraction`
        )
        for action in self._actions:
            if action.nargs == "?" and action.const is True:  # a bool field: `--flag` alone means true
                action.metavar = "true|false"
        fields = {field.name for kind in dataclass_types for field in dataclasses.fields(kind)}
        self.takes_config = "config" not in fields
        if self.takes_config:
            self.add_argument(
                CONFIG_FLAG,
                metavar="FILE.yaml",
                help="YAML file setting any of these options (keys: their names without --); flags override it",
            )
        self.positional = positional
        if positional is not None:
            dest, metavar = positional
            self.add_argument(f"{dest}_positional", nargs="*", metavar=metavar, help=f"same as --{dest}")

    def error(self, message: str) -> NoReturn:
        """One line instead of argparse's usage text first."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse(self, argv: list[str]) -> tuple[Any, ...]:
        """One instance of each dataclass, from `argv` over the `--config` file's values over the fields' defaults.

        ConfigError for a --config file that is missing, not a YAML mapping or has a key that is no option; exits
        with the usage error for a bad flag or a value a dataclass refuses (its ValueError)."""
        argv = list(argv)
        path = _pop_config(argv) if self.takes_config else None
        if path is not None:
            values = read_yaml_mapping(Path(path), CONFIG_FLAG)
            allowed = {action.dest for action in self._actions if action.option_strings} - {"help", "config"}
            if unknown := sorted(set(values) - allowed):
                raise ConfigError(f"invalid config: {path}: unknown keys {unknown}; allowed: {sorted(allowed)}")
            TrlParser.set_defaults_with_config(self, **values)  # as `entropy-rl train --config` sets TRL's fields
        try:
            *outputs, remaining = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        except ValueError as err:  # a dataclass's __post_init__ refusing a value
            self.error(str(err))
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        count = len(self.dataclass_types)
        instances, rest = outputs[:count], (vars(outputs[count]) if len(outputs) > count else {})
        if self.positional is not None:
            dest, metavar = self.positional
            (holder,) = [i for i in instances if hasattr(i, dest)]
            given, flagged = rest.get(f"{dest}_positional") or [], getattr(holder, dest)
            if given and flagged == self.get_default(dest):  # bare arguments override --config's list, as flags do
                flagged = []
            setattr(holder, dest, [*given, *flagged])
            if not getattr(holder, dest):
                self.error(f"the following arguments are required: {metavar} (or --{dest})")
        return tuple(instances)


def _pop_config(argv: list[str]) -> str | None:
    """Remove `--config PATH` (or `--config=PATH`) from argv and return PATH (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == CONFIG_FLAG:
            if i + 1 >= len(argv):
                raise ConfigError(f"invalid config: {CONFIG_FLAG} needs a YAML file")
            del argv[i]
            return argv.pop(i)
        if arg.startswith(CONFIG_FLAG + "="):
            del argv[i]
            return arg.partition("=")[2]
    return None
