"""SIGKILL right after each file of a checkpoint (tests/scripts/kill_window.py): no checkpoint-<step>/ folder is ever
incomplete, `--resume_from_checkpoint latest` picks the newest complete one, and the resumed run ends with the metrics
of the uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SCRIPTS

TESTS = Path(__file__).parent
# Files a checkpoint holds that are written by native code with no Python-visible call (the tokenizers library's
# Rust writer): no kill point falls between them and the next file, so they get no case of their own.
NATIVE_WRITES = {"tokenizer.json"}
# One case per file: the run is killed right after it is complete (before the next file is started).
FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "entropy_rl_state_rank0.pt",
    "entropy_rl_checkpoint.json",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory, make_model_module):
    work = tmp_path_factory.mktemp("kill_window")
    model_dir = work / "model"
    model, tokenizer = make_model_module
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "kill_window.py"), str(model_dir), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


@pytest.fixture(scope="module")
def make_model_module():
    from entropy_rl.toy import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    return build_model(tokenizer, hidden_size=32, num_layers=2, seed=0), tokenizer


def case_after(results, name: str) -> dict:
    found = [c for c in results["cases"] if c["after"].endswith(f".staging/checkpoint-2/{name}")]
    assert len(found) == 1, f"no kill case right after {name}: calls were {results['calls']}"
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", FILES)
def test_killed_right_after_a_file_leaves_no_incomplete_checkpoint(results, name):
    case = case_after(results, name)
    assert case["status"] == -9  # really killed there
    assert case["checkpoints"] == {"checkpoint-1": None}  # the half-written one is invisible; the previous is whole
    assert case["latest"] == "checkpoint-1"


@pytest.mark.slow
def test_killed_right_after_the_rename_the_new_checkpoint_is_complete(results):
    case = next(c for c in results["cases"] if c["after"] == "rename .staging/checkpoint-2")
    assert case["status"] == -9
    assert case["checkpoints"] == {"checkpoint-1": None, "checkpoint-2": None} and case["latest"] == "checkpoint-2"


@pytest.mark.slow
def test_every_file_of_a_checkpoint_has_a_kill_case(results):
    written = {call.rsplit("/", 1)[-1] for call in results["calls"] if "/checkpoint-2/" in call}
    assert set(results["final_files"]) - NATIVE_WRITES <= written
    assert set(FILES) <= written  # the cases above are among the calls


@pytest.mark.slow
def test_resumed_after_a_kill_on_either_side_of_the_rename_reproduces_the_uninterrupted_run(results):
    resumed = [c for c in results["cases"] if "resume_status" in c]
    assert len(resumed) == 2
    skip = {"wall_time"}
    for case in resumed:
        assert case["resume_status"] == 0, case["after"]
        assert [r["step"] for r in case["resumed_rows"]] == [1, 2, 3]
        for got, want in zip(case["resumed_rows"], results["reference_rows"], strict=True):
            assert {k: v for k, v in got.items() if k not in skip} == pytest.approx(
                {k: v for k, v in want.items() if k not in skip}, rel=1e-5, abs=1e-7
            ), (case["after"], got["step"])
