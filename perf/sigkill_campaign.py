"""SIGKILL campaign: kill a Clip-Cov run at random moments, resume it each time, compare with an uninterrupted run.

    python perf/sigkill_campaign.py [--kills 12] [--in_save 4] [--max_steps 40] [--save_steps 4] [--seed 0]
                                    [--work /tmp/sigkill]
                                    [--out docs/results/sigkill-campaign.json]

A tiny random policy (tests' size) trains with Clip-Cov, whose random token choice makes the regularizer state part of
what a resume must restore. The reference run goes uninterrupted. The victim run is started, killed with SIGKILL,
and restarted the way a preemptible job script would do it (`--resume_from_checkpoint latest` when a complete
checkpoint exists, `--overwrite_output_dir true` when the run died before its first one), `--kills` times, then left
to finish. Most kills fall at a random moment of training: a random time into a random step of the next two
checkpoint intervals (the row of the step before it appeared, then 0 to one reference step's time: generation,
update, metrics row or checkpoint save). Timed by the run's progress, not by the clock, they land in training
however busy the machine is. `--in_save` of them wait until this attempt writes a checkpoint (new files in its
staging folder) and kill after a random 0-50 ms. The result compares every metrics row and the final weights with
the reference run and records where each kill landed; `--out` gets it as JSON, stdout as a markdown table for
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from entropy_rl import checkpoint_files, rundir
from entropy_rl.jsonl import read_rows

TESTS = Path(__file__).resolve().parents[1] / "tests"


def train_command(model_dir: Path, out: Path, max_steps: int, save_steps: int, *extra: str) -> list[str]:
    flags = {
        "model_name_or_path": model_dir,
        "output_dir": out,
        "reward_funcs": "helpers.length_parity_reward",
        "max_steps": max_steps,
        "save_steps": save_steps,
        "save_total_limit": 2,
        "per_device_train_batch_size": 16,
        "num_generations": 4,
        "max_completion_length": 6,
        "learning_rate": 1e-3,
        "dynamics_every": 3,
        "regularizer": "clip_cov",
        "clip_cov_ratio": 0.1,
        "clip_cov_lb": -5,
        "disable_tqdm": "true",
        "report_to": "none",
    }
    command = [sys.executable, "-m", "entropy_rl.cli", "train"]
    for key, value in flags.items():
        command += [f"--{key}", str(value)]
    return [*command, *extra]


def environment() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def resume_step(out: Path) -> int:
    checkpoint, _ = checkpoint_files.latest_checkpoint(out)
    return int(checkpoint.name.split("-")[1]) if checkpoint else 0


def how_to_restart(out: Path) -> list[str]:
    """What a job script passes to continue the run in `out`."""
    checkpoint, _ = checkpoint_files.latest_checkpoint(out)
    if checkpoint is not None:
        return ["--resume_from_checkpoint", "latest"]
    return ["--overwrite_output_dir", "true"] if rundir.run_contents(out) else []


def save_in_progress(out: Path, since: float) -> list[str]:
    """Files of a checkpoint this attempt is writing (staging entries newer than `since`; older ones are leftovers
    of an earlier kill, cleared by the next save)."""
    staging = out / checkpoint_files.STAGING_DIR
    if not staging.is_dir():
        return []
    try:
        return sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.stat().st_mtime >= since)
    except FileNotFoundError:  # renamed into place while we looked
        return []


def wait_for_save(proc: subprocess.Popen, out: Path, since: float, deadline: float) -> bool:
    while time.time() < deadline and proc.poll() is None:
        if save_in_progress(out, since):
            return True
        time.sleep(0.005)
    return False


def last_step(out: Path, since: float = 0.0) -> int:
    """The step of the last metrics row, counting only a file written since `since` (a resumed run keeps the rows of
    the attempt before until its own first step)."""
    path = out / "metrics.jsonl"
    try:
        if path.stat().st_mtime < since:
            return 0
        rows = read_rows(path)
    except (OSError, ValueError):  # not there yet, or caught mid-rewrite
        return 0
    return rows[-1]["step"] if rows else 0


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, since: float) -> None:
    while proc.poll() is None and last_step(out, since) < step:
        time.sleep(0.01)


def attempt(command: list[str], out: Path, kill: tuple[str, int, float], rng: random.Random) -> dict:
    """Start the run and kill it (`kill`: ("step", s, offset) = `offset` s after the row of step s appeared;
    ("save", 0, 0) = 0-50 ms after this attempt started writing a checkpoint); report where the kill landed."""
    mode, target, offset = kill
    started = time.time()
    proc = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if mode == "save":
        wait_for_save(proc, out, started, started + 600)
        time.sleep(rng.uniform(0, 0.05))
    else:
        wait_for_step(proc, out, target, started)
        time.sleep(offset)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    return {
        "after_s": round(time.time() - started, 2),
        "mode": mode if mode == "save" else f"{offset:.2f} s after the row of step {target}",
        "killed": killed,
        "returncode": proc.returncode,
        "error": None if killed or proc.returncode == 0 else stderr.strip().splitlines()[-1:],
        "last_row": last_step(out),
        "save_interrupted": save_in_progress(out, started),
        "checkpoints": [path.name for _, path in rundir.list_checkpoints(out)] if out.is_dir() else [],
    }


def reference_run(command: list[str], out: Path) -> tuple[float, float]:
    """Run uninterrupted; return (seconds to its first metrics row, seconds in all)."""
    started = time.time()
    proc = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_row = None
    while proc.poll() is None:
        if first_row is None and read_rows(out / "metrics.jsonl"):
            first_row = time.time() - started
        time.sleep(0.01)
    if proc.returncode != 0:
        sys.exit(f"the reference run failed with exit code {proc.returncode}")
    return first_row or 0.0, time.time() - started


def compare(victim: Path, reference: Path) -> dict:
    from safetensors.torch import load_file

    got, want = read_rows(victim / "metrics.jsonl"), read_rows(reference / "metrics.jsonl")
    steps_ok = [r["step"] for r in got] == [r["step"] for r in want]
    worst, differing = 0.0, []
    for a, b in zip(got, want, strict=False):
        for key in sorted((set(a) | set(b)) - {"wall_time"}):
            x, y = a.get(key), b.get(key)
            if isinstance(x, int | float) and isinstance(y, int | float):
                diff = abs(x - y)
                worst = max(worst, diff)
                if diff > 1e-7 + 1e-5 * abs(y):
                    differing.append(f"step {a['step']} {key}: {x} vs {y}")
            elif x != y:
                differing.append(f"step {a['step']} {key}: {x!r} vs {y!r}")
    weights_a, weights_b = (load_file(p / rundir.FINAL_DIR / "model.safetensors") for p in (victim, reference))
    weight_diff = max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_b)
    return {
        "rows": len(got),
        "steps_exactly_once": steps_ok,
        "max_abs_metric_diff": worst,
        "differing": differing[:20],
        "max_abs_weight_diff": weight_diff,
        "same_tensors": set(weights_a) == set(weights_b),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--in_save", type=int, default=4, help="how many of the kills wait for a checkpoint save")
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--save_steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sigkill-campaign"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/sigkill-campaign.json"))
    args = parser.parse_args(argv)
    import shutil

    from entropy_rl.toy import build_model, build_tokenizer

    shutil.rmtree(args.work, ignore_errors=True)
    model_dir = args.work / "model"
    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden_size=32, num_layers=2, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    reference, victim = args.work / "reference", args.work / "victim"
    start_s, reference_s = reference_run(
        train_command(model_dir, reference, args.max_steps, args.save_steps), reference
    )

    rng = random.Random(args.seed)
    modes = ["save"] * args.in_save + ["step"] * (args.kills - args.in_save)
    rng.shuffle(modes)
    step_s = (reference_s - start_s) / args.max_steps  # one training step of the reference run
    attempts = []
    campaign_started = time.time()
    for mode in modes:
        restart = how_to_restart(victim)
        resumed_at = resume_step(victim)
        if resumed_at >= args.max_steps:
            break  # finished: nothing left to kill
        # A random moment: within a random step of the next two checkpoint intervals (generation, update, metrics
        # row or checkpoint save), wherever the run stands; robust to how fast the shared machine is right now.
        target = min(args.max_steps, resumed_at + rng.randint(2, 2 * args.save_steps + 1))
        kill = (mode, target - 1, rng.uniform(0, step_s)) if mode == "step" else (mode, 0, 0.0)
        command = train_command(model_dir, victim, args.max_steps, args.save_steps, *restart)
        attempts.append(attempt(command, victim, kill, rng))
        print(json.dumps(attempts[-1]), flush=True)
    if not (victim / rundir.FINAL_DIR).is_dir():  # else the last killed attempt ran to the end before its kill
        command = train_command(model_dir, victim, args.max_steps, args.save_steps, *how_to_restart(victim))
        final = subprocess.run(command, env=environment(), capture_output=True, text=True)
        if final.returncode != 0:
            sys.exit(f"the last attempt failed: {final.stderr.strip().splitlines()[-1:]}")
    result = {
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("work", "out")},  # no machine paths
        "reference_wall_s": round(reference_s, 1),
        "reference_first_row_s": round(start_s, 1),
        "campaign_wall_s": round(time.time() - campaign_started, 1),
        "kills": sum(a["killed"] for a in attempts),
        "kills_during_a_save": sum(a["killed"] and bool(a["save_interrupted"]) for a in attempts),
        "attempts": attempts,
        "comparison": compare(victim, reference),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))


def summary(result: dict) -> str:
    c = result["comparison"]
    lines = [
        "| kill | when (after the attempt started) | last row | complete checkpoints after it | save interrupted |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, a in enumerate(result["attempts"], start=1):
        when = f"{a['after_s']} s: {a['mode']}" if a["killed"] else f"not killed (exit {a['returncode']})"
        staged = a["save_interrupted"]
        staged = f"{staged[0]} ({len(staged) - 1} files)" if staged else "-"
        lines.append(f"| {i} | {when} | {a['last_row']} | {', '.join(a['checkpoints']) or '-'} | {staged} |")
    lines.append("")
    lines.append(
        f"{result['kills']} kills ({result['kills_during_a_save']} during a checkpoint save); "
        f"final run: {c['rows']} rows, "
        f"every step exactly once: {c['steps_exactly_once']}, "
        f"largest metric difference {c['max_abs_metric_diff']:.3g}, "
        f"largest weight difference {c['max_abs_weight_diff']:.3g}; campaign {result['campaign_wall_s']} s, "
        f"reference run {result['reference_wall_s']} s."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
