"""Cost of the parameter-space entropy prediction (`dynamics_param`) on the built-in default run.

    python perf/dynamics_overhead.py [--steps 500] [--pairs 1] [--every 10]
                                     [--markdown docs/performance/dynamics-param.md]
                                     [--option dynamics_momentum_groups | dynamics_second_order]

`--option dynamics_momentum_groups` measures that option instead (on and off, dynamics_param on in both): it works on
every step, so the extra time of the other steps is reported too. `--option dynamics_second_order` measures the
second-order term on top of the momentum groups (on in both, as the term needs them).

Runs the built-in default (`entropy-rl train` with no arguments, dynamics_every=10) with dynamics_param on and off,
alternating (on, off, on, off, ...), with the same seed. The prediction only observes (no RNG draw, no gradient
written), so both runs take the same steps and their metrics rows pair up step by step. Per run it reads each
step's `wall_time` from metrics.jsonl and reports, over the pairs, the median wall time of the measuring steps and of
the other steps, the extra time per measuring step (median over steps of on - off) and the whole run's overhead.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from entropy_rl.jsonl import read_rows


def run_default(out: Path, steps: int, param: bool, option: str = "dynamics_param", every: int = 10) -> list[dict]:
    command = [sys.executable, "-m", "entropy_rl.cli", "train", "--output_dir", str(out), "--max_steps", str(steps)]
    command += ["--dynamics_every", str(every)]
    command += [f"--{option}", str(param).lower(), "--save_strategy", "no", "--disable_tqdm", "true"]
    if option == "dynamics_second_order":
        command += ["--dynamics_momentum_groups", "true"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return read_rows(out / "metrics.jsonl")


def summarise(on: list[list[dict]], off: list[list[dict]], every: int) -> dict[str, float]:
    def times(runs: list[list[dict]], measuring: bool) -> list[float]:
        return [r["wall_time"] for rows in runs for r in rows if (r["step"] % every == 0) == measuring]

    def paired(measuring: bool) -> list[float]:
        return [
            a["wall_time"] - b["wall_time"]
            for rows_on, rows_off in zip(on, off, strict=True)
            for a, b in zip(rows_on, rows_off, strict=True)
            if (a["step"] % every == 0) == measuring
        ]

    extra, extra_other = paired(True), paired(False)
    total_on = statistics.mean(sum(r["wall_time"] for r in rows) for rows in on)
    total_off = statistics.mean(sum(r["wall_time"] for r in rows) for rows in off)
    return {
        "measuring_on_ms": 1000 * statistics.median(times(on, True)),
        "measuring_off_ms": 1000 * statistics.median(times(off, True)),
        "other_on_ms": 1000 * statistics.median(times(on, False)),
        "other_off_ms": 1000 * statistics.median(times(off, False)),
        "extra_per_measuring_step_ms": 1000 * statistics.median(extra),
        "extra_per_other_step_ms": 1000 * statistics.median(extra_other),
        "run_on_s": total_on,
        "run_off_s": total_off,
        # The extra time over the whole run, from the paired measuring steps (robust to slow phases elsewhere).
        "overhead_percent": 100 * statistics.median(extra) * len(extra) / len(on) / total_off,
    }


def markdown(s: dict[str, float], steps: int, pairs: int, every: int, option: str = "dynamics_param") -> str:
    if option != "dynamics_param":
        return f"""| {option} | measuring step, median (ms) | other step, median (ms) | run ({steps} steps, s) |
| --- | ---: | ---: | ---: |
| off | {s["measuring_off_ms"]:.0f} | {s["other_off_ms"]:.0f} | {s["run_off_s"]:.1f} |
| on | {s["measuring_on_ms"]:.0f} | {s["other_on_ms"]:.0f} | {s["run_on_s"]:.1f} |

Extra time per step (medians of the paired differences): {s["extra_per_measuring_step_ms"]:.0f} ms on measuring
steps, {s["extra_per_other_step_ms"]:.0f} ms on the others ({pairs} pair(s) of runs, dynamics_every={every}).
"""
    return f"""| dynamics_param | measuring step, median (ms) | other step, median (ms) | run ({steps} steps, s) |
| --- | ---: | ---: | ---: |
| off | {s["measuring_off_ms"]:.0f} | {s["other_off_ms"]:.0f} | {s["run_off_s"]:.1f} |
| on | {s["measuring_on_ms"]:.0f} | {s["other_on_ms"]:.0f} | {s["run_on_s"]:.1f} |

Extra time per measuring step (median of the paired differences): {s["extra_per_measuring_step_ms"]:.0f} ms; over
the run at dynamics_every={every}: {s["overhead_percent"]:.1f} % ({pairs} pair(s) of runs; the runs' own wall times
also differ by the shared machine's load, so the paired per-step difference is the number to read).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--markdown", type=Path)
    options = ("dynamics_param", "dynamics_momentum_groups", "dynamics_second_order")
    parser.add_argument("--option", choices=options, default="dynamics_param")
    parser.add_argument("--every", type=int, default=10, help="dynamics_every (10: the default run's)")
    args = parser.parse_args(argv)
    every = args.every
    on, off = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            on.append(run_default(Path(tmp) / f"on{i}", args.steps, True, args.option, every))
            off.append(run_default(Path(tmp) / f"off{i}", args.steps, False, args.option, every))
    text = markdown(summarise(on, off, every), args.steps, args.pairs, every, args.option)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
