"""Run the built-in default (`entropy-rl train`, no arguments) under several kernel settings; write
docs/results/default-run.md and the ranges its figures are quoted with (docs/results/default-run.json).

    python perf/default_run.py [--output-dir runs/default-run] [--doc docs/results/default-run.md] [--reuse]

The same seed gives the same bits only for the same float kernels: the thread count and the CPU's vector width
(AVX-512 or AVX2) change the order of float sums, and sampling turns a last-bit difference into another trajectory.
So the default run is repeated with 1 thread, 1 thread on torch's and MKL's AVX2 paths (as an AVX2-only CPU runs
it) and 2 threads, and each figure is given as the range of those runs widened by TOLERANCE. The first `--max_steps 150`
steps are the same run cut short; their ranges are what tests/test_train_cli.py checks a shortened default run
against. The page also gives the step time, the held-out curve with its cost, the agreement of both entropy-change
predictions with the measured change, and the two figures, from the first variant's run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from entropy_rl.cli.train import AGREEMENT_WINDOW
from entropy_rl.jsonl import read_rows
from entropy_rl.param_prediction import agreement
from entropy_rl.rundir import metrics_path, read_config, read_curve

# name -> environment of one run; the first gives the page's figures. One thread first: on shared cores two threads
# wait on each other (docs/toy.md), so it is also the quickest.
VARIANTS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "1 thread, AVX2 kernels": {
        "OMP_NUM_THREADS": "1",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    # Threads that sleep while they wait: spinning ones make 2 threads many-fold slower on busy cores; same bits.
    "2 threads": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
}
SHORT_STEPS = 150  # the shortened default run the test makes
METRICS = {"entropy": "entropy/token_mean", "reward": "reward"}
# Added on each side of the measured spread: three runs do not bound what a fourth machine gives.
TOLERANCE = {"entropy": 0.01, "reward": 0.03}


def mean(rows: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in rows if r.get(key) is not None)


def curve_section(curve: list[dict], run_seconds: float) -> str:
    """The in-training evaluations: their points, and their cost (each row carries the seconds its evaluation took)."""
    seconds = {row["step"]: row["eval_seconds"] for row in curve}  # one evaluation per step, all benchmarks
    points = ", ".join(f"{row['step']}: {row['avg@k']:.3f}" for row in curve)
    first, last = curve[0], curve[-1]
    return f"""## The entropy-reward curve during training

The default run evaluates the current policy on the held-out `{curve[0]["benchmark"]}` set
({curve[0]["num_problems"]} problems, k = {curve[0]["k"]}) every {curve_interval(curve)} steps and at the
end, in the training process, and appends the rows to `curve.jsonl`.

- held-out avg@k by step: {points}
- held-out response entropy: {first["eval_entropy"]:.3f} at step {first["step"]}, {last["eval_entropy"]:.3f} at step
  {last["step"]}
- cost: {len(seconds)} evaluations, {statistics.mean(seconds.values()):.2f} s each on average
  (min {min(seconds.values()):.2f} s, max {max(seconds.values()):.2f} s), {sum(seconds.values()):.1f} s in all:
  {100 * sum(seconds.values()) / run_seconds:.0f} % of the run's steps and evaluations ({run_seconds:.0f} s)
"""


def curve_interval(curve: list[dict]) -> int:
    steps = sorted({row["step"] for row in curve})
    return steps[1] - steps[0] if len(steps) > 1 else steps[0]


def windows(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean entropy and reward over the first and the last tenth of the steps, as `entropy-rl train` reports them."""
    window = max(1, len(rows) // 10)
    return {
        part: {name: round(mean(chunk, key), 4) for name, key in METRICS.items()}
        for part, chunk in (("first", rows[:window]), ("last", rows[-window:]))
    }


def ranges(runs: dict[str, dict], length: str) -> dict[str, dict[str, list[float]]]:
    """[min - tolerance, max + tolerance] over the variants, per window and metric."""
    out: dict[str, dict[str, list[float]]] = {}
    for part in ("first", "last"):
        out[part] = {}
        for name in METRICS:
            values = [run[length][part][name] for run in runs.values()]
            out[part][name] = [round(min(values) - TOLERANCE[name], 3), round(max(values) + TOLERANCE[name], 3)]
    return out


def range_text(bounds: dict[str, dict[str, list[float]]]) -> str:
    """The ranges as README.md and the page quote them."""
    parts = []
    for name in METRICS:
        first, last = bounds["first"][name], bounds["last"][name]
        parts.append(f"{name} {first[0]:.3f}–{first[1]:.3f} → {last[0]:.3f}–{last[1]:.3f}")
    return ", ".join(parts)


def machine() -> str:
    import torch

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"


def finished(folder: Path) -> bool:
    return (folder / "final").is_dir() and len(read_rows(metrics_path(folder))) == read_config(folder)["max_steps"]


def run_variants(folders: dict[str, Path], reuse: bool) -> dict[str, dict]:
    """The default run under each variant's environment, all at once (they share only the machine; with `reuse`,
    a variant whose folder holds a finished run is read, not run again): each one's windows, full and cut at
    SHORT_STEPS, and its mean step time."""
    processes = {}
    for name, env in VARIANTS.items():
        if reuse and finished(folders[name]):
            continue
        if folders[name].exists():
            shutil.rmtree(folders[name])  # a fresh run: the numbers describe exactly one
        command = [sys.executable, "-m", "entropy_rl.cli", "train", "--output_dir", str(folders[name])]
        command += ["--disable_tqdm", "true"]
        processes[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, **env})
    for name, process in processes.items():
        if process.wait() != 0:
            raise SystemExit(f"{name}: entropy-rl train exited with {process.returncode}")
    runs = {}
    for name in VARIANTS:
        rows = read_rows(metrics_path(folders[name]))
        runs[name] = {
            "env": VARIANTS[name],
            "full": windows(rows),
            "short": windows(rows[:SHORT_STEPS]),
            "ms_per_step": round(1000 * mean(rows, "wall_time")),
        }
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/default-run"))
    parser.add_argument("--doc", type=Path, default=Path("docs/results/default-run.md"))
    parser.add_argument("--reuse", action="store_true", help="read the variants' finished runs in --output-dir")
    args = parser.parse_args(argv)
    folders = {name: args.output_dir / f"variant-{i}" for i, name in enumerate(VARIANTS)}
    runs = run_variants(folders, args.reuse)
    data = {
        "command": "python perf/default_run.py",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "short_steps": SHORT_STEPS,
        "tolerance": TOLERANCE,
        "runs": runs,
        "ranges": {"full": ranges(runs, "full"), "short": ranges(runs, "short")},
    }
    args.doc.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")

    main_name = next(iter(VARIANTS))
    out = folders[main_name]
    rows = read_rows(metrics_path(out))
    curve = read_curve(out)
    run_seconds = sum(r["wall_time"] for r in rows) + sum(row["eval_seconds"] for row in curve)
    config = read_config(out)
    window = max(1, len(rows) // 10)
    first, last = rows[:window], rows[-window:]
    measured = [r for r in rows if "dynamics/measured_dH" in r]
    plot = args.doc.with_suffix(".png")
    shutil.copy(out / "entropy_reward.png", plot)
    dynamics_plot = args.doc.with_name(args.doc.stem + "-dynamics.png")
    shutil.copy(out / "dynamics.png", dynamics_plot)
    measured_dh = [r["dynamics/measured_dH"] for r in measured]
    logit = agreement([r["dynamics/predicted_dH"] for r in measured], measured_dh, AGREEMENT_WINDOW)
    param = agreement([r["dynamics/predicted_dH_param"] for r in measured], measured_dh, AGREEMENT_WINDOW)
    parts = {
        name: sum(r[f"dynamics/dH_param/{name}"] for r in measured)
        for name in ("pos_adv_S_gt_N", "pos_adv_S_lt_N", "neg_adv_S_gt_N", "neg_adv_S_lt_N", "other")
    }
    table = "\n".join(
        f"| {label} | {mean(first, key):.3f} | {mean(last, key):.3f} |"
        for label, key in (
            ("token entropy (nats)", "entropy/token_mean"),
            ("sequence-mean entropy (nats)", "entropy/seq_mean"),
            ("training reward", "reward"),
            ("Cov(log p, A)", "cov/logp_adv"),
        )
    )
    variant_rows = "\n".join(
        f"| {name} | {run['full']['first']['entropy']:.3f} → {run['full']['last']['entropy']:.3f} | "
        f"{run['full']['first']['reward']:.3f} → {run['full']['last']['reward']:.3f} | "
        f"{run['short']['first']['entropy']:.3f} → {run['short']['last']['entropy']:.3f} | "
        f"{run['short']['first']['reward']:.3f} → {run['short']['last']['reward']:.3f} | "
        f"{run['ms_per_step']} ms |"
        for name, run in runs.items()
    )
    full, short = data["ranges"]["full"], data["ranges"]["short"]
    args.doc.write_text(
        f"""# The built-in default run

Generated by `python perf/default_run.py` (it runs `entropy-rl train` with no arguments, three times); do not edit
by hand. {data["date"]}, {data["machine"]}, shared with other work: the step times are stretched by whatever
else ran (README.md's timings come from `python perf/readme_commands.py`, from a clean clone, with the load).

**Reproducible figures.** The run starts from the shipped warm-started policy (docs/toy.md), so every machine starts
from the same weights. From there, the same seed gives the same numbers only for the same float kernels: the thread
count and the CPU's vector width (AVX-512 or AVX2) change the order of float sums, and sampling turns a last-bit
difference into another trajectory within a few steps. The run was therefore made three ways (below), and each
figure is quoted as the range of the three widened by {TOLERANCE["entropy"]} (entropy) and {TOLERANCE["reward"]}
(reward):

- **500 steps** (first and last 50): {range_text(full)}
- **first {SHORT_STEPS} steps** (`--max_steps {SHORT_STEPS}`, first and last 15): {range_text(short)};
  tests/test_train_cli.py makes this shortened run and fails when it lands outside (the ranges are read from
  docs/results/default-run.json, which this script writes)

| variant | entropy, 500 steps | reward | entropy, {SHORT_STEPS} steps | reward | mean step time |
| --- | --- | --- | --- | --- | --- |
{variant_rows}

The rest of this page is the `{main_name}` run ({mean(rows, "wall_time") * 1000:.0f} ms per GRPO step on average).

| metric | first {window} steps | last {window} steps |
| --- | ---: | ---: |
{table}

Entropy falls while reward rises, and Cov(log p, A) stays positive, the sign that drives entropy down (Cui et al.).

{curve_section(curve, run_seconds)}
![entropy and reward of the default run, with the held-out curve]({plot.name})

## Why entropy moves

Every {config["dynamics_every"]} steps the trainer re-evaluates the step's batch after the update
(`dynamics/measured_dH`) and compares it with two first-order predictions (docs/metrics.md): the logit-space one,
-A (S - N) per token, and the parameter-space one, grad H . (the parameter change the optimizer applied). Pearson r
with the measured change over the {len(measured)} measured steps, and over windows of {AGREEMENT_WINDOW} measured
steps (the cumulative change of each window):

| prediction | r per measured step | r per window of {AGREEMENT_WINDOW} |
| --- | ---: | ---: |
| logit space `dynamics/predicted_dH` | {logit["r"]:.2f} | {logit["r_window"]:.2f} |
| parameter space `dynamics/predicted_dH_param` | {param["r"]:.2f} | {param["r_window"]:.2f} |

Summed over the measured steps, the measured change is {sum(measured_dh):+.4f} nats and the parameter-space
prediction {sum(r["dynamics/predicted_dH_param"] for r in measured):+.4f}; its split by token group (the update's
share from each quadrant sign(A) x sign(S - N) under Adam's preconditioner; `other`: momentum carried from earlier
steps and what the split leaves out):

| group | summed entropy change (nats) |
| --- | ---: |
{chr(10).join(f"| `{name}` | {value:+.4f} |" for name, value in parts.items())}

![covariance, predicted vs measured entropy change, attribution by token group]({dynamics_plot.name})
"""
    )
    print(f"wrote {args.doc}, {args.doc.with_suffix('.json')} and {plot}")


if __name__ == "__main__":
    main()
