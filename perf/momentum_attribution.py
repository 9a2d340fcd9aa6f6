"""How much of the measured entropy change each token group explains once Adam's momentum is attributed too.

    python perf/momentum_attribution.py [--steps 150] [--every 5] [--collapse_steps 300] [--collapse_every 10]
                                        [--seeds 1] [--methods clip_cov,kl_cov,...] [--method_seeds 1]
                                        [--out runs/momentum-attribution]
                                        [--markdown docs/results/momentum-attribution.md]

Trains, with `dynamics_momentum_groups` on (docs/metrics.md), the built-in default run (`entropy-rl train`) and GRPO
on the hard task with the hard study's settings (recipes/toy/grpo.yaml, `arithmetic_hard`, 16 prompts x 8
completions, two optimizer steps per rollout batch), both for `--steps` steps measuring every `--every`th, and GRPO in
the collapse regime with the collapse study's settings (recipes/toy/study.yaml: 256 training problems, lr 1.5e-4) for
`--collapse_steps` measuring every `--collapse_every`th (the start of the study's runs, where the entropy falls
fastest); two at a time, one torch thread each. `--methods` adds each named regularizer (its recipe,
recipes/toy/<name>.yaml, in place of grpo.yaml) in the hard and collapse settings, `--method_seeds` seeds each, in a
compact table of its own. A run whose metrics already reach its steps in `--out` is read (its first steps: the
learning rate is constant), not trained again.

Over each run's measured steps it sums the measured change and every part of the parameter-space prediction: each
quadrant's part from the step's own gradient and the part its earlier gradients still carry through the optimizer's
first moment, `rest` (gradient outside the quadrants, now and carried), weight decay, and `other` (what the parts
leave of the prediction: float noise). With `dynamics_second_order` each part also gets its share of the curvature
term (its update vector dotted with half the change of the entropy gradient over the step). Unexplained = measured -
the sum of the parts, first-order parts alone (the first-order prediction's error) and with their curvature shares
(the second-order prediction's, third order and up). Shares are of the summed measured change; the per-step figures
sum |measured - parts| over steps instead, so errors of opposite sign do not cancel.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from entropy_rl.jsonl import read_rows
from entropy_rl.param_prediction import MOMENTUM_GROUPS, MOMENTUM_PARTS, QUADRANTS, SECOND_ORDER_PARTS, agreement

REPO = Path(__file__).resolve().parents[1]
WINDOW = 5
HARD = ["--dataset_name", "arithmetic_hard", "--per_device_train_batch_size", "128", "--learning_rate", "0.0001"]
COLLAPSE = ["--num_train_problems", "256", "--per_device_train_batch_size", "128", "--learning_rate", "0.00015"]
SETTINGS = {"hard task": HARD, "collapse regime": COLLAPSE}


def recipe(method: str) -> list[str]:
    """The method's toy recipe (GRPO's for `none`), relative to the repository root the runs start in."""
    return ["--config", f"recipes/toy/{'grpo' if method == 'none' else method}.yaml"]


def label(setting: str, method: str) -> str:
    return f"{setting} ({'GRPO' if method == 'none' else method})"


def run_flags(methods: list[str]) -> dict[str, list[str]]:
    """Each run's train flags by its label: the default run, then every setting for GRPO and each method."""
    flags = {"default run": []}
    for method in ["none", *methods]:
        for setting, extra in SETTINGS.items():
            flags[label(setting, method)] = [*recipe(method), *extra, "--logging_steps", "50"]
    return flags


def run_dir(out: Path, name: str, seed: int) -> Path:
    """Seed 0 of GRPO's runs in <out>/<setting word>, a method's in <out>/<setting word>-<method>; seed k adds
    -seed<k>."""
    method = name[name.index("(") + 1 : -1] if "(" in name else "GRPO"
    stem = name.split()[0] + ("" if method == "GRPO" else f"-{method}")
    return out / (stem + (f"-seed{seed}" if seed else ""))


def command(flags: list[str], out: Path, steps: int, every: int, seed: int) -> list[str]:
    flags = [*flags, "--max_steps", str(steps), "--seed", str(seed), "--dynamics_every", str(every)]
    flags += ["--dynamics_momentum_groups", "true", "--dynamics_second_order", "true"]
    flags += ["--save_strategy", "no", "--disable_tqdm", "true"]
    return ["entropy-rl", "train", *flags, "--output_dir", str(out)]


def run(flags: list[str], out: Path, steps: int, every: int, seed: int) -> list[dict]:
    metrics = out / "metrics.jsonl"
    rows = read_rows(metrics) if metrics.is_file() else []
    if not rows or rows[-1]["step"] < steps:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cli = [sys.executable, "-m", "entropy_rl.cli", *command(flags, out.resolve(), steps, every, seed)[1:]]
        subprocess.run(cli, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        rows = read_rows(metrics)
    return [row for row in rows if "dynamics/measured_dH" in row and row["step"] <= steps]  # a longer run: its start


def summary(rows: list[dict]) -> dict[str, float]:
    """Sums over the measured steps, the unexplained remainder (summed and per step) and the agreement."""

    def total(key: str) -> float:
        return sum(row[f"dynamics/{key}"] for row in rows)

    out = {"steps": len(rows), "measured": total("measured_dH"), "predicted": total("predicted_dH_param")}
    for name in QUADRANTS:
        out[f"current/{name}"] = total(f"dH_param/{name}")
    for name in MOMENTUM_PARTS + ("other",):
        out[name] = total(f"dH_param/{name}")
    # What the split without the momentum groups left in `other`: the prediction minus the quadrants' current parts.
    out["other without groups"] = out["predicted"] - sum(out[f"current/{name}"] for name in QUADRANTS)
    for name in SECOND_ORDER_PARTS + ("",):
        out[f"second/{name}"] = total(f"dH_param/second_order/{name}".rstrip("/"))
    first = [f"dH_param/{name}" for name in (*QUADRANTS, *MOMENTUM_PARTS)]
    second = first + [f"dH_param/second_order/{name}" for name in SECOND_ORDER_PARTS]
    measured = sum(abs(row["dynamics/measured_dH"]) for row in rows)
    for label, parts in (("unexplained", first), ("unexplained 2nd", second)):
        per_step = [row["dynamics/measured_dH"] - sum(row[f"dynamics/{key}"] for key in parts) for row in rows]
        out[label] = sum(per_step)
        out[f"{label} per step"] = sum(abs(x) for x in per_step) / measured
    for label, key in (("r", "predicted_dH_param"), ("r 2nd", "predicted_dH_param_2nd")):
        fit = agreement([r[f"dynamics/{key}"] for r in rows], [r["dynamics/measured_dH"] for r in rows], WINDOW)
        out[label], out[f"{label} window"] = fit["r"], fit["r_window"]
    # Each group's whole share: its current and carried parts and their curvature.
    out["predicted 2nd"] = out["predicted"] + out["second/"]
    for name in QUADRANTS:
        out[f"curvature/{name}"] = out[f"second/{name}"] + out[f"second/carried/{name}"]
        out[f"total/{name}"] = out[f"current/{name}"] + out[f"carried/{name}"] + out[f"curvature/{name}"]
    out["rest all"] = out["rest"] + out["carried/rest"] + out["second/rest"] + out["second/carried/rest"]
    out["weight decay all"] = out["weight_decay"] + out["second/weight_decay"]
    return out


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"  # r needs 3 pairs


def table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    lines = ["| part | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]

    def line(label: str, key: str) -> str:
        cells = [f"{r[key]:+.4f} ({100 * r[key] / r['measured']:+.0f} %)" for r in results.values()]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines.append("| measured change (nats, summed) | " + " | ".join(f"{r['measured']:+.4f}" for r in results.values()))
    lines[-1] += " |"
    lines.append(line("parameter-space prediction, first order", "predicted"))
    lines.append(line("its second-order (curvature) term", "second/"))
    lines.append(line("parameter-space prediction, second order", "predicted 2nd"))
    for name in QUADRANTS:
        lines.append(line(f"`{name}`: this step's gradient", f"current/{name}"))
        lines.append(line(f"`{name}`: carried by the momentum", f"carried/{name}"))
        lines.append(line(f"`{name}`: curvature of both", f"curvature/{name}"))
        lines.append(line(f"`{name}`: all", f"total/{name}"))
    lines.append(line("`rest` (outside the quadrants), all", "rest all"))
    lines.append(line("weight decay, with its curvature", "weight decay all"))
    lines.append(line("`other` (first-order prediction − first-order parts)", "other"))
    lines.append(line("`other` of the split without the groups", "other without groups"))
    lines.append(line("unexplained by the first order (measured − first-order parts)", "unexplained"))
    lines.append(line("**unexplained** (measured − all parts)", "unexplained 2nd"))
    for label, key in (("first order", "unexplained per step"), ("second order", "unexplained 2nd per step")):
        lines.append(
            f"| unexplained per step, {label} (Σ\\|measured − parts\\| / Σ\\|measured\\|) | "
            + " | ".join(f"{100 * r[key]:.0f} %" for r in results.values())
            + " |"
        )
    for label, key in (("first order", "r"), ("second order", "r 2nd")):
        lines.append(f"| r per measured step, {label} | " + " | ".join(number(r[key]) for r in results.values()))
        lines[-1] += " |"
        cells = " | ".join(number(r[f"{key} window"]) for r in results.values())
        lines.append(f"| r over windows of {WINDOW}, {label} | {cells} |")
    lines.append("| measured steps | " + " | ".join(str(r["steps"]) for r in results.values()) + " |")
    return "\n".join(lines)


def spread(per_seed: dict[str, list[dict[str, float]]]) -> str:
    """Each seed's unexplained share and agreement, and their mean ± standard deviation over seeds."""
    rows = [
        ("unexplained by the first order, share", "unexplained", True),
        ("**unexplained**, share", "unexplained 2nd", True),
        ("unexplained per step, second order", "unexplained 2nd per step", False),
        ("r per measured step, first order", "r", False),
        ("r per measured step, second order", "r 2nd", False),
    ]
    names = list(per_seed)
    lines = ["Per seed (seed 0, 1, ...), then mean ± standard deviation over seeds:", ""]
    lines += ["| figure | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for label, key, of_measured in rows:
        cells = []
        for seeds in per_seed.values():
            values = [r[key] / r["measured"] if of_measured else r[key] for r in seeds]
            shown = [100 * v if key.startswith("unexplained") else v for v in values]
            unit = " %" if key.startswith("unexplained") else ""
            digits = 0 if unit else 2
            listed = ", ".join(f"{v:.{digits}f}" for v in shown)
            sd = statistics.stdev(shown) if len(shown) > 1 else 0.0
            cells.append(f"{listed} ({statistics.mean(shown):.{digits}f} ± {sd:.{digits}f}{unit})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_method(results: dict[str, dict[str, float]], seeds: dict[str, int]) -> str:
    """One row per run: its seeds, the measured change (summed over the measured steps, mean over seeds), each
    group's whole share of it (current, carried and curvature), what is left unexplained and the agreement; `rest`
    holds the gradient outside the quadrants' PPO-clip terms (a regularizer's own loss terms, such as KL-Cov's)."""
    header = ["run", "seeds", "measured per seed (nats)", *(f"`{name}`" for name in QUADRANTS), "`rest`"]
    header += ["unexplained, 1st order", "**unexplained**", "per step, 2nd order", "r 1st / 2nd order"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for name, r in results.items():
        shares = [r[f"total/{group}"] for group in QUADRANTS] + [r["rest all"], r["unexplained"], r["unexplained 2nd"]]
        cells = [str(seeds[name]), f"{r['measured'] / seeds[name]:+.4f}"]
        cells += [f"{100 * x / r['measured']:+.0f} %" for x in shares]
        cells += [f"{100 * r['unexplained 2nd per step']:.0f} %", f"{number(r['r'])} / {number(r['r 2nd'])}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--collapse_steps", type=int, default=300)
    parser.add_argument("--collapse_every", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per GRPO run (0, 1, ...)")
    parser.add_argument("--methods", default="", help="regularizers to add in the hard and collapse settings, a,b")
    parser.add_argument("--method_seeds", type=int, default=1, help="seeds per regularizer run")
    parser.add_argument("--out", type=Path, default=Path("runs/momentum-attribution"))
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    methods = [name for name in args.methods.split(",") if name]
    for name in methods:
        if name == "none" or not (REPO / recipe(name)[1]).is_file():
            parser.error(f"--methods: {name!r} has no toy recipe; allowed: the names of recipes/toy/<name>.yaml")
    flags = run_flags(methods)
    grpo = list(flags)[: 1 + len(SETTINGS)]  # the default run and GRPO's settings: the full tables
    seeds = {name: args.seeds if name in grpo else args.method_seeds for name in flags}
    jobs = [(name, seed) for name in flags for seed in range(seeds[name])]
    dirs = {job: run_dir(args.out, *job) for job in jobs}
    schedule = {
        name: (args.collapse_steps, args.collapse_every) if "collapse" in name else (args.steps, args.every)
        for name in flags
    }
    with ThreadPoolExecutor(2) as pool:  # the longest runs first, so the short ones share what is left
        order = sorted(jobs, key=lambda job: -schedule[job[0]][0])
        done = pool.map(lambda job: run(flags[job[0]], dirs[job], *schedule[job[0]], job[1]), order)
        runs = dict(zip(order, done, strict=True))
    # The tables pool every seed's measured steps; the spread rows give each seed's own figures.
    results = {name: summary([row for k in range(seeds[name]) for row in runs[name, k]]) for name in flags}
    per_seed = {name: [summary(runs[name, k]) for k in range(args.seeds)] for name in grpo}
    commands = "\n".join(" ".join(command(flags[name], dirs[name, k], *schedule[name], k)) for name, k in jobs)
    text = table({name: results[name] for name in grpo}) + "\n\n" + spread(per_seed) + "\n\n"
    if methods:
        text += (
            "Per method, in both studies' settings (GRPO's rows repeat the columns above; shares of the measured "
            "change summed over every seed's measured steps, each group's current, carried and curvature parts "
            "together):\n\n" + by_method({n: results[n] for n in flags if n != "default run"}, seeds)
        )
        text += "\n\n"
    text += f"The runs:\n\n```bash\n{commands}\n```\n"
    print(text)
    if args.markdown:
        title = "# The entropy change explained: Adam's momentum and the step's curvature included\n\n"
        given = f" --methods {','.join(methods)} --method_seeds {args.method_seeds}" if methods else ""
        source = (
            f"Written by `python perf/momentum_attribution.py --steps {args.steps} --every {args.every} "
            f"--collapse_steps {args.collapse_steps} --collapse_every {args.collapse_every} --seeds {args.seeds}"
            f"{given}` (docs/metrics.md explains the parts); summed over the measured steps of every seed's run, in "
            f"parentheses the share of the summed measured change. Groups: {', '.join(MOMENTUM_GROUPS)}.\n\n"
        )
        args.markdown.write_text(title + source + text)


if __name__ == "__main__":
    main()
