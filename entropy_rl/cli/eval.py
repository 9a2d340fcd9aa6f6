"""`entropy-rl eval`: math benchmarks for a model or for every checkpoint of a run (the entropy-performance curve).

    entropy-rl eval --model DIR --benchmarks gsm8k,math500 [--output_dir OUT]
    entropy-rl eval --run RUN_DIR --benchmarks arithmetic,gsm8k          # appends RUN_DIR/curve.jsonl
    entropy-rl eval --list_benchmarks                                    # the names --benchmarks accepts
    accelerate launch --num_processes N -m entropy_rl.cli eval ...       # data parallel (docs/evaluation.md)

Any option may also come from `--config EVAL.yaml` (keys: the option names; flags override it). The work is done by
entropy_rl.evaluation; this module reads the options (EvalArguments) and prints the table.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from entropy_rl.cli.common import fail, run_command
from entropy_rl.cli.options import CommandParser
from entropy_rl.errors import ConfigError
from entropy_rl.evaluation.benchmarks import Benchmark, load_benchmark
from entropy_rl.evaluation.generation import leave_process_group, load_checkpoint_model, open_vllm, process_state
from entropy_rl.evaluation.runner import EvalSettings, evaluate_checkpoint, evaluate_run
from entropy_rl.grading import DEFAULT_TIMEOUT_S, Grader

COMMAND = "eval"


@dataclass
class EvalArguments:
    """The options of `entropy-rl eval`; None keeps the benchmark's own setting. Ranges are checked before anything
    loads (_check_numbers)."""

    model: str | None = field(default=None, metadata={"help": "model directory (safetensors) to evaluate"})
    run: str | None = field(
        default=None,
        metadata={"help": "run directory: evaluate each checkpoint-<step>/ and append to curve.jsonl"},
    )
    benchmarks: str | None = field(
        default=None, metadata={"help": "comma-separated names (eval/benchmarks/) or YAML paths (required)"}
    )
    list_benchmarks: bool = field(
        default=False, metadata={"help": "print the benchmark names and where their specs are, and exit"}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "directory of the offline benchmark files (default $ENTROPY_RL_DATA_DIR)"}
    )
    data_file: str | None = field(
        default=None, metadata={"help": "JSONL file replacing the benchmark's data (one benchmark only)"}
    )
    limit: int | None = field(default=None, metadata={"help": "first N problems of each benchmark"})
    k: int | None = field(default=None, metadata={"help": "samples per problem (default: the benchmark's)"})
    temperature: float | None = field(
        default=None, metadata={"help": "sampling temperature, 0 = greedy (default: benchmark's)"}
    )
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass (default: the benchmark's)"})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "response length limit (default: the benchmark's)"}
    )
    pass_k: str = field(default="", metadata={"help": "extra k values for pass@k, e.g. 2,4,8"})
    batch_size: int = field(default=32, metadata={"help": "sequences per generate() call (default 32)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (default 0)"})
    output_dir: str | None = field(
        default=None, metadata={"help": "per-problem JSONL + summary.json here (run mode: default RUN_DIR/eval)"}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={"help": "weights' dtype (default auto: bfloat16 on a GPU that supports it, else float32)"},
    )
    grading_timeout: float = field(default=DEFAULT_TIMEOUT_S, metadata={"help": "seconds per math-verify"})
    grading_workers: int = field(default=2, metadata={"help": "grading processes per evaluating process"})
    vllm: bool = field(default=False, metadata={"help": "generate with vLLM (needs vllm and CUDA; one process)"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bar"})

    def __post_init__(self) -> None:
        if self.list_benchmarks:  # needs none of the other options
            return
        if not self.benchmarks:
            raise ValueError(
                f"invalid benchmarks={self.benchmarks!r}; allowed: comma-separated benchmark names or spec YAML paths"
            )
        if (self.model is None) == (self.run is None):
            raise ValueError(
                f"invalid model={self.model!r}, run={self.run!r}; allowed: exactly one of --model and --run"
            )

    @property
    def pass_ks(self) -> tuple[int, ...]:
        """--pass_k as integers."""
        try:
            return tuple(int(part) for part in str(self.pass_k).split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"invalid --pass_k {self.pass_k}; allowed: comma-separated integers >= 1") from None


def build_parser() -> CommandParser:
    return CommandParser(COMMAND, __doc__.split("\n\n")[0], [EvalArguments])


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width summary table, one line per row (a benchmark, or a (checkpoint, benchmark) pair)."""
    ks = sorted({kk for row in rows for kk in row["pass@k"]}, key=int)
    header = ["step", "benchmark", "n", "k", "avg@k", *(f"pass@{kk}" for kk in ks), "length", "entropy"]
    lines = [header]
    for row in rows:
        pass_cols = [f"{row['pass@k'][kk]:.4f}" if kk in row["pass@k"] else "" for kk in ks]
        lines.append(
            [str(row.get("step", "")), row["benchmark"], str(row["num_problems"]), str(row["k"])]
            + [f"{row['avg@k']:.4f}", *pass_cols, f"{row['mean_length']:.1f}", f"{row['eval_entropy']:.4f}"]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


# A Hub model id: "name" or "owner/name". Anything else (absolute, ./, ~, deeper paths) can only be a local folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")


def _check_numbers(args: EvalArguments) -> None:
    """Reject out-of-range numbers with the flag's name, before a benchmark, a grader or a model is loaded."""
    # None keeps the benchmark's default.
    checks = [
        ("--batch_size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        ("--limit", args.limit, args.limit is None or args.limit >= 1, "an integer >= 1"),
        ("--k", args.k, args.k is None or args.k >= 1, "an integer >= 1"),
        (
            "--max_new_tokens",
            args.max_new_tokens,
            args.max_new_tokens is None or args.max_new_tokens >= 1,
            "an integer >= 1",
        ),
        (
            "--temperature",
            args.temperature,
            args.temperature is None or args.temperature >= 0,
            "a number >= 0 (0: greedy)",
        ),
        ("--top_p", args.top_p, args.top_p is None or 0 < args.top_p <= 1, "a number in (0, 1]"),
        ("--pass_k", ",".join(map(str, args.pass_ks)), all(kk >= 1 for kk in args.pass_ks), "integers >= 1"),
        ("--grading_timeout", args.grading_timeout, 0 < args.grading_timeout < math.inf, "seconds > 0"),
        ("--grading_workers", args.grading_workers, args.grading_workers >= 1, "an integer >= 1"),
    ]
    for flag, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"invalid {flag} {value}; allowed: {allowed}")


def _check_target(args: EvalArguments) -> None:
    """--model must be a local folder or a Hub id, --run a directory: say which, instead of the Hub client's error."""
    if args.run is not None and not Path(args.run).is_dir():
        raise ConfigError(f"invalid --run {args.run}: run directory not found")
    if args.model is None or Path(args.model).expanduser().is_dir():
        return
    if Path(args.model).exists():
        raise ConfigError(f"invalid --model {args.model}: a file; allowed: a model folder or a Hub model id")
    if args.model.startswith((".", "~")) or not _HUB_ID.fullmatch(args.model):
        raise ConfigError(f"invalid --model {args.model}: the local folder does not exist")


def _benchmarks(args: EvalArguments, settings: EvalSettings) -> list[Benchmark]:
    """The benchmarks to run, checked (with the sampling overrides) before any model is loaded."""
    names = [name for name in args.benchmarks.split(",") if name.strip()]
    if args.data_file and len(names) != 1:
        raise ConfigError("--data_file replaces the data of one benchmark: pass exactly one in --benchmarks")
    if args.vllm and args.run:
        raise ConfigError("--vllm evaluates one --model; curves over checkpoints use transformers")
    benchmarks = [load_benchmark(n, args.data_dir, args.limit, args.data_file) for n in names]
    for benchmark in benchmarks:
        k = settings.sampling(benchmark).k  # rejects bad overrides (e.g. --k 4 with greedy) before loading a model
        if too_large := [kk for kk in settings.pass_ks if kk > k]:
            raise ConfigError(
                f"invalid --pass_k {','.join(map(str, too_large))}: benchmark {benchmark.name} draws k={k} samples "
                f"per problem; allowed: values <= {k} (raise --k to report more)"
            )
    return benchmarks


def _load_model(args: EvalArguments, device: object) -> tuple[object, object]:
    """The --model to evaluate; a Hub id that cannot be loaded (offline, unknown) gives one line that says so."""
    try:
        return load_checkpoint_model(args.model, device, args.dtype)
    except OSError as error:
        if Path(args.model).expanduser().is_dir():
            raise  # a local folder that cannot be read: _body reports it
        offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
        reason = (str(error).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"invalid --model {args.model}: no such local folder, and the Hub model could not be loaded{offline}: "
            f"{reason}"
        ) from error


def _evaluate(args: EvalArguments) -> list[dict[str, Any]]:
    """Rows of the table: one per (checkpoint, benchmark) with --run, one per benchmark with --model."""
    _check_numbers(args)
    _check_target(args)
    state = process_state()  # before the grader starts its worker processes, as the evaluator always did
    settings = EvalSettings.from_options(args, progress=not args.no_progress)
    benchmarks = _benchmarks(args, settings)
    with Grader(timeout_s=args.grading_timeout, workers=args.grading_workers) as grader:
        options = {"settings": settings, "grader": grader, "output_dir": args.output_dir}
        if args.run:
            return evaluate_run(args.run, benchmarks, dtype=args.dtype, **options)
        llm = open_vllm(args.model, args.dtype, args.seed) if args.vllm else None
        model, tokenizer = _load_model(args, state.device)
        return list(evaluate_checkpoint(model, tokenizer, benchmarks, llm=llm, **options).values())


def _body(argv: list[str]) -> int:
    (args,) = build_parser().parse(argv)
    if args.list_benchmarks:
        return list_benchmarks()
    try:
        rows = _evaluate(args)
    except OSError as error:  # a model or file that cannot be read
        return fail(COMMAND, (str(error).strip().splitlines() or [repr(error)])[0])
    if process_state().is_main_process:
        print(format_table(rows) if rows else "nothing to evaluate: every (checkpoint, benchmark) is in curve.jsonl")
    leave_process_group()
    return 0


def list_benchmarks() -> int:
    from entropy_rl.evaluation.benchmarks import BENCHMARK_DIR, available_benchmarks

    print(f"benchmarks in {BENCHMARK_DIR} (pass names to --benchmarks, or a spec YAML path):")
    print("\n".join(f"  {name}" for name in available_benchmarks()))
    return 0


def main(argv: list[str]) -> int:
    return run_command(COMMAND, lambda: _body(argv))
