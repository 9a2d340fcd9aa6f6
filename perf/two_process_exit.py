"""Do 2-process gloo runs end cleanly? Repeated launches, counted by exit code and by the process group's release.

    python perf/two_process_exit.py [--launches 30] [--regularizer clip_b+steer] [--out exit.json]

Each launch is `accelerate launch` of 2 CPU processes running tests/scripts/dynamic_sampling_check.py: two GRPO steps
with dynamic sampling (one generation round, training on what the cap kept), then `trainer.end()`. The script records,
through a weak reference, whether the process group is gone after `end()`. A launch that exceeds --timeout counts as
a hang. docs/recipes.md ("Two CPU processes") quotes the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "dynamic_sampling_check.py"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
LAUNCH += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def launch_once(out: Path, regularizer: str, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(SCRIPT.parent)])}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [*LAUNCH, str(SCRIPT), str(out), regularizer, "1", "train"], env=env, capture_output=True, timeout=timeout
        )
        code = done.returncode
    except subprocess.TimeoutExpired:
        code = None  # a hang
    ranks = [out / f"rank{r}.json" for r in range(2)]
    released = all(path.exists() and json.loads(path.read_text())["released"] for path in ranks)
    return {"exit_code": code, "released": released, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=30)
    parser.add_argument("--regularizer", default="clip_b+steer")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a launch counts as a hang")
    parser.add_argument("--out", default="two_process_exit.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        runs = [launch_once(Path(work, str(i)), args.regularizer, args.timeout) for i in range(args.launches)]
    clean = sum(run["exit_code"] == 0 and run["released"] for run in runs)
    hangs = sum(run["exit_code"] is None for run in runs)
    summary = {"launches": len(runs), "clean": clean, "hangs": hangs, "runs": runs}
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"{clean} of {len(runs)} launches exited 0 with the process group released; {hangs} hung")


if __name__ == "__main__":
    main()
