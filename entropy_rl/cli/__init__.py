"""`entropy-rl` command line: one sub-command per module of this package; the library never imports it.

entropy-rl train [--config RECIPE.yaml] [--field value ...]   GRPO with entropy diagnostics/regularizers
entropy-rl eval  [--config EVAL.yaml] ...                    math benchmarks, entropy-reward curve
entropy-rl fit   RUN_DIR [RUN_DIR ...] [--config FIT.yaml]    entropy-performance law R = -a exp(H) + b
entropy-rl plot  RUN_DIR [RUN_DIR ...] [--config PLOT.yaml]   entropy / reward curves of runs
entropy-rl study [--config STUDY.yaml]                        every method x seeds, evaluated, fitted, written up
entropy-rl --version

Each command's flags are fields of dataclasses (`entropy-rl CMD --help` lists them); its --config YAML sets them and
flags override it.
"""

from __future__ import annotations

import importlib
import sys

# Sub-command -> module exposing `main(argv: list[str]) -> int`. Imported lazily: `import trl` alone costs seconds.
COMMANDS = {
    "train": "entropy_rl.cli.train",
    "eval": "entropy_rl.cli.eval",
    "fit": "entropy_rl.cli.fit",
    "plot": "entropy_rl.cli.plot",
    "study": "entropy_rl.cli.study",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    if argv[0] == "--version":
        from entropy_rl import __version__

        print(f"entropy-rl {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"entropy-rl: error: unknown command {command!r}; choose one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return int(module.main(rest) or 0)
