"""`entropy-rl study`: train every method x seed, evaluate the checkpoints, fit the law and write the results page.

    entropy-rl study --config recipes/toy/study.yaml                   # the toy study, docs/results/toy.md
    entropy-rl study --config recipes/toy/study.yaml --dry_run         # the runs, their state, their train commands
    entropy-rl study --quick --output runs/study-quick                 # CI miniature (doc in runs/study-quick/docs)
    entropy-rl study --steps 4 --seeds 1 --methods none,clip_cov --eval_problems 16 --output runs/mini --doc_dir /tmp/d
    entropy-rl study --config recipes/toy/study.yaml --from_summaries  # docs/results/toy.md from toy_runs/ alone

A run is finished when its final/ model exists and its metrics file has one row per step: a re-run skips it (and the
evaluator skips evaluated checkpoints), resumes an unfinished run from its last checkpoint, and refuses a run
directory trained with other settings. With the page it writes <doc_dir>/<name>_runs/, the small per-run summaries
the page is computed from (entropy_rl/study/summary.py, to be committed with it), which --from_summaries renders the
page from again; on another machine (no run directories) a run whose summary holds it whole, with the same settings,
is restored from it instead of trained, so more seeds or methods add to the committed ones. Flags are TRL's
--snake_case; the dashed spellings (--save-steps, --dry-run, ...) are still accepted.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entropy_rl.cli.common import run_command
from entropy_rl.cli.options import CommandParser
from entropy_rl.errors import ConfigError, check
from entropy_rl.resources import find_recipe
from entropy_rl.study.spec import (
    DEFAULT_CONFIG,
    QUICK,
    Study,
    apply_overrides,
    build_study,
    read_study_file,
    select_methods,
)

if TYPE_CHECKING:
    from entropy_rl.study.plan import Planned

COMMAND = "study"


@dataclass
class StudyArguments:
    """The options of `entropy-rl study`: the study YAML (`config`) and what overrides it (None: the YAML's)."""

    config: str = field(default=DEFAULT_CONFIG, metadata={"help": f"study YAML (default {DEFAULT_CONFIG})"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps per run"})
    seeds: int | None = field(default=None, metadata={"help": "number of seeds per method (seeds 0 .. N-1)"})
    methods: str | None = field(
        default=None, metadata={"help": "comma-separated subset of the YAML's methods, in this order"}
    )
    save_steps: int | None = field(
        default=None, metadata={"help": "checkpoint (= evaluation) interval; must divide --steps"}
    )
    dynamics_every: int | None = field(default=None, metadata={"help": "measure the entropy change every N steps"})
    eval_problems: int | None = field(default=None, metadata={"help": "first N problems of the benchmark"})
    eval_k: int | None = field(default=None, metadata={"help": "samples per problem"})
    output: str | None = field(default=None, metadata={"help": "root of the run directories <output>/<method>/seed<k>"})
    doc_dir: str | None = field(default=None, metadata={"help": "where the page and its figures go"})
    threads: int | None = field(default=None, metadata={"help": "torch threads"})
    quick: bool = field(
        default=False,
        metadata={
            "help": f"CI miniature: {', '.join(f'--{key} {value}' for key, value in QUICK.items())}, --doc_dir "
            "<output>/docs (explicit flags win)"
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "list the runs, their state and commands, and the power plan (seeds needed, from a pilot); "
            "train nothing"
        },
    )
    detect: float | None = field(
        default=None,
        metadata={
            "help": "difference in final held-out avg@k the seeds are planned to detect at 80%% power (default 0.03)"
        },
    )
    pilot: str | None = field(
        default=None, metadata={"help": "output root of a pilot study for the power plan (default: this study's)"}
    )
    from_summaries: bool = field(
        default=False,
        metadata={
            "help": "re-render the page and its figures from the per-run summaries in <doc_dir>/<name>_runs/ alone "
            "(the study as it was run, with its command line); train and evaluate nothing, no run directories needed"
        },
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "train in N processes at once, each taking every N-th run still to train (use one per CPU core, "
            "with threads 1); the page is written once all are done"
        },
    )
    runs: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated method:seed runs of the study to train and evaluate, then stop without writing "
            "the page (what --workers gives each of its processes)"
        },
    )


def build_parser() -> CommandParser:
    return CommandParser(
        COMMAND,
        "Train every method x seed, evaluate the checkpoints, fit the entropy-performance law and write the results "
        "page. Flags override the study YAML.",
        [StudyArguments],
    )


def load_study(args: StudyArguments) -> tuple[Study, dict[str, Any]]:
    """The study and the resolved mapping it was built from (the YAML with --quick and the flags applied)."""
    path = find_recipe(args.config)  # a path, or a packaged recipe's name (the default works from any directory)
    data = read_study_file(path)
    if args.quick:
        for dest, value in QUICK.items():
            if getattr(args, dest) is None:
                setattr(args, dest, value)
        # Never into the real docs: the miniature's page lands next to its runs unless asked otherwise.
        args.doc_dir = args.doc_dir or str(Path(args.output) / "docs")
    apply_overrides(data, vars(args))
    if args.methods is not None:
        select_methods(data, args.methods)
    return build_study(data, path.parent), data


# Flags each worker gets its own value for (every spelling), dropped from the parent's arguments.
_PER_WORKER = ("--workers", "--runs")


def worker_commands(argv: list[str], shares: list[list[str]]) -> list[list[str]]:
    """One command line per share of runs (method:seed): this same study restricted by --runs, so the worker trains
    and evaluates those runs and stops; the parent then writes the page over every run."""
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _PER_WORKER:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in _PER_WORKER)):
            rest.append(arg)
    return [[sys.executable, "-m", "entropy_rl.cli", COMMAND, *rest, "--runs", ",".join(share)] for share in shares]


def select_runs(plans: list[Planned], runs: str) -> list[Planned]:
    """The plans `runs` (comma-separated method:seed) names, in the study's order; an unknown one is a ConfigError."""
    by_name = {f"{plan.method}:{plan.seed}": plan for plan in plans}
    wanted = [name.strip() for name in runs.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    example = next(iter(by_name), "none:0")
    check(bool(wanted) and not unknown, "runs", runs, f"comma-separated method:seed runs of the study, e.g. {example}")
    return [plan for name, plan in by_name.items() if name in wanted]


def _print(line: str) -> None:
    print(line, flush=True)


def _study(argv: list[str], started: float) -> int:
    from entropy_rl.evaluation.benchmarks import load_benchmark
    from entropy_rl.study.execute import eval_settings, execute, planned_status, run_workers, torch_threads
    from entropy_rl.study.page import write_page
    from entropy_rl.study.plan import plan_runs
    from entropy_rl.study.summary import write_summaries

    (args,) = build_parser().parse(argv)
    if args.workers < 1:
        raise ConfigError(f"invalid config: workers={args.workers}; allowed: an integer >= 1")
    check(args.runs is None or args.workers == 1, "workers", args.workers, "1 with --runs (a worker's own runs)")
    study, data = load_study(args)
    if args.from_summaries:
        check(not args.dry_run, "--dry_run", True, "not with --from_summaries, which trains nothing")
        return _from_summaries(study, find_recipe(args.config).parent, started)
    benchmark = load_benchmark(study.eval.benchmark, limit=study.eval.problems)
    settings = eval_settings(study, benchmark)
    problems = len(benchmark.problems)
    plans = plan_runs(study, problems, restore_summaries=not args.dry_run)  # a dry run writes nothing
    if args.dry_run:
        from entropy_rl.study.power import pilot_accuracies, plan_lines
        from entropy_rl.study.spec import summary_dir

        for plan in plans:
            print(f"{plan.method} seed {plan.seed}: {plan.state}\n  {shlex.join(['entropy-rl', 'train', *plan.argv])}")
        # Without --pilot, the runs a real invocation would restore from their summaries count too.
        summarized = [summary_dir(study) / p.method / f"seed{p.seed}" for p in plans if p.state == "summarized"]
        source = args.pilot or f"{study.output} and the summaries in {summary_dir(study)}"
        accuracies = pilot_accuracies(study, args.pilot, [] if args.pilot else summarized)
        print("\n".join(plan_lines(study, accuracies, source)))
        return 0
    if args.runs is not None:  # a worker: its runs only, no page
        with torch_threads(study.threads):
            execute(study, select_runs(plans, args.runs), benchmark, settings, report=_print)
        return 0
    done_by_workers = None
    todo = [f"{plan.method}:{plan.seed}" for plan in plans if plan.state != "finished"]
    if args.workers > 1 and todo:
        done_by_workers = {(plan.method, plan.seed): planned_status(plan) for plan in plans}
        # Runs, not methods, round-robin: a method with more runs left does not hold up one worker.
        run_workers(worker_commands(argv, [todo[i :: args.workers] for i in range(min(args.workers, len(todo)))]))
        plans = plan_runs(study, problems)  # the workers finished them: now only the report is left
    with torch_threads(study.threads):
        results = execute(study, plans, benchmark, settings, report=_print, done_by_workers=done_by_workers)
        summaries = write_summaries(study, results, argv, data, problems)
        page = write_page(study, data, plans, results, problems, argv, time.perf_counter() - started)
    print(f"wrote {page} and the per-run summaries it was computed from, {summaries}")
    return 0


def _from_summaries(located: Study, recipes: Path, started: float) -> int:
    """The page from <doc_dir>/<name>_runs/: the study, command line and config they record, nothing trained."""
    from entropy_rl.study.page import write_page
    from entropy_rl.study.plan import plan_runs
    from entropy_rl.study.summary import read_summaries, summary_dir

    found = read_summaries(summary_dir(located), recipes)
    study = dataclasses.replace(found.study, doc_dir=located.doc_dir)  # the page goes where its summaries are
    plans = plan_runs(study, found.problems, restore_summaries=False)  # the train commands the page shows
    page = write_page(
        study, found.data, plans, found.results, found.problems, found.argv, time.perf_counter() - started
    )
    print(f"wrote {page} from {summary_dir(located)}")
    return 0


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    return run_command(COMMAND, lambda: _study(argv, started))
