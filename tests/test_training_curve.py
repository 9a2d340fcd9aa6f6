"""The entropy-reward curve written during training: the same rows as an offline `entropy-rl eval --run` of the same
checkpoints with the same seed, and no lost or duplicated row after a SIGKILL and a resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import two_cpu_processes

from entropy_rl import rundir
from entropy_rl.errors import ConfigError
from entropy_rl.jsonl import read_rows, rewrite_rows

TESTS = Path(__file__).parent
CURVE_FLAGS = ["--curve_limit", "16", "--curve_k", "2", "--curve_temperature", "1.0", "--curve_seed", "3"]
OFFLINE_FLAGS = ["--limit", "16", "--k", "2", "--temperature", "1.0", "--seed", "3"]


def test_continue_curve_drops_rows_after_the_resume_step_and_a_torn_line(tmp_path):
    path = tmp_path / rundir.CURVE_FILE
    rows = [{"step": step, "benchmark": "arithmetic", "avg@k": step / 10} for step in (2, 4, 6)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 8, "bench')
    assert rundir.continue_curve(tmp_path, 4) == rows[:2]
    assert read_rows(path) == rows[:2] and path.read_text().endswith("\n")


def test_unknown_curve_benchmark_is_refused_before_training(tmp_path, make_model, tokenizer):
    from datasets import Dataset

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.toy import make_problems
    from entropy_rl.trainer import EntropyGRPOTrainer

    args = EntropyGRPOConfig(
        output_dir=str(tmp_path), curve_benchmarks=["nope"], eval_steps=2, report_to="none", max_steps=1
    )
    with pytest.raises(ConfigError, match="curve_benchmarks entry 'nope'"):
        EntropyGRPOTrainer(
            model=make_model(),
            reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
            args=args,
            train_dataset=Dataset.from_list(make_problems(8)),
            processing_class=tokenizer,
        )


def test_curve_needs_whole_eval_steps():
    from entropy_rl.config import EntropyGRPOConfig

    with pytest.raises(ConfigError, match="eval_steps"):
        EntropyGRPOConfig(output_dir="unused", curve_benchmarks=["arithmetic"], eval_steps=0.5, report_to="none")


@pytest.mark.parametrize(
    "vllm, message",
    [
        ({"vllm_mode": "server"}, "vllm_mode='server'"),
        ({"vllm_mode": "colocate", "vllm_tensor_parallel_size": 2}, "vllm_tensor_parallel_size=2"),
        ({"vllm_mode": "colocate", "vllm_enable_sleep_mode": True}, "vllm_enable_sleep_mode=True"),
    ],
)
def test_curve_with_vllm_needs_the_colocated_engine(vllm, message):
    from entropy_rl.config import EntropyGRPOConfig

    with pytest.raises(ConfigError, match=message):
        EntropyGRPOConfig(
            output_dir="unused", report_to="none", use_vllm=True, curve_benchmarks=["arithmetic"], eval_steps=2, **vllm
        )
    EntropyGRPOConfig(output_dir="unused", report_to="none", use_vllm=True, vllm_mode="server")  # no curve: fine


def train_command(model_dir: Path, out: Path, *extra: str) -> list[str]:
    flags = {
        "--model_name_or_path": str(model_dir),
        "--output_dir": str(out),
        "--reward_funcs": "arithmetic",
        "--max_steps": "8",
        "--save_steps": "2",
        "--eval_steps": "2",
        "--per_device_train_batch_size": "16",
        "--num_generations": "4",
        "--max_completion_length": "6",
        "--learning_rate": "1e-3",
        "--dynamics_every": "0",
        "--curve_benchmarks": "arithmetic",
        "--disable_tqdm": "true",
    }
    return [
        sys.executable,
        "-m",
        "entropy_rl.cli",
        "train",
        *(x for kv in flags.items() for x in kv),
        *CURVE_FLAGS,
        *extra,
    ]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "eval_seconds"} for row in rows]


@pytest.mark.slow
def test_curve_survives_sigkill_and_resume_and_equals_offline_eval(tmp_path, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_command(tiny_model_dir, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    # Kill once the step-4 row is written (its checkpoint follows it), before the run ends.
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(row.get("step", 0) >= 4 for row in read_rows(run / rundir.CURVE_FILE)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A kill in the middle of an append leaves a torn line; resuming from checkpoint-2 discards the later rows. The
    # step-2 row is removed too (as when curve_benchmarks is first set on resume): the resumed run fills that gap.
    rows = read_rows(run / rundir.CURVE_FILE)
    assert any(row["step"] == 2 for row in rows) and any(row["step"] > 2 for row in rows)
    rewrite_rows(run / rundir.CURVE_FILE, [row for row in rows if row["step"] != 2])
    with open(run / rundir.CURVE_FILE, "a") as handle:
        handle.write('{"step": 6, "checkpoint": "checkp')
    resume = ["--resume_from_checkpoint", str(run / "checkpoint-2")]
    done = subprocess.run(train_command(tiny_model_dir, run, *resume), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]

    live = read_rows(run / rundir.CURVE_FILE)
    assert [(row["step"], row["benchmark"]) for row in live] == [(s, "arithmetic") for s in (2, 4, 6, 8)]
    assert all(row["eval_seconds"] > 0 and row["train_entropy"] is not None for row in live)

    # The same checkpoints evaluated offline, with the same seed and sampling, give the same rows.
    offline = tmp_path / "offline"
    offline.mkdir()
    for item in [*run.glob("checkpoint-*"), run / "metrics.jsonl", run / rundir.CONFIG_FILE]:
        (shutil.copytree if item.is_dir() else shutil.copy)(item, offline / item.name)

    def evaluate(run_dir: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "entropy_rl.cli", "eval", "--run", str(run_dir), "--benchmarks", "arithmetic"]
        return subprocess.run([*command, *OFFLINE_FLAGS, "--no_progress"], env=env, capture_output=True, text=True)

    done = evaluate(offline)
    assert done.returncode == 0, done.stderr[-4000:]
    assert read_rows(offline / rundir.CURVE_FILE) == without_timing(live)
    # And an offline evaluation of the live run itself has nothing left to do: no duplicate rows.
    assert "nothing to evaluate" in evaluate(run).stdout
    assert read_rows(run / rundir.CURVE_FILE) == live


@pytest.mark.slow
def test_curve_on_two_training_processes_equals_offline_eval_on_one(tmp_path, tiny_model_dir):
    # Each training process evaluates its share of the problems; the rows must not depend on the process count.
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    launch = two_cpu_processes()
    command = train_command(tiny_model_dir, run, "--max_steps", "2", "--per_device_train_batch_size", "8")
    done = subprocess.run([*launch, "-m", *command[2:]], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    live = read_rows(run / rundir.CURVE_FILE)
    assert [row["step"] for row in live] == [2]
    offline = tmp_path / "offline"
    offline.mkdir()
    for item in [run / "checkpoint-2", run / "metrics.jsonl", run / rundir.CONFIG_FILE]:
        (shutil.copytree if item.is_dir() else shutil.copy)(item, offline / item.name)
    command = [sys.executable, "-m", "entropy_rl.cli", "eval", "--run", str(offline), "--benchmarks", "arithmetic"]
    done = subprocess.run([*command, *OFFLINE_FLAGS, "--no_progress"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert read_rows(offline / rundir.CURVE_FILE) == without_timing(live)
