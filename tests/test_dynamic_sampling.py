"""DAPO's dynamic sampling: the group filter, the batch refill, and the same kept groups on 1 and 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, two_cpu_processes

from entropy_rl.dynamic_sampling import groups_with_spread, join_rows, select_rows
from entropy_rl.errors import ConfigError

SCRIPT = SCRIPTS / "dynamic_sampling_check.py"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(SCRIPTS.parents[1]), str(SCRIPT.parent)]),
}
TWO_PROCESSES = two_cpu_processes()
NAN = float("nan")


def test_groups_with_spread_reads_the_weighted_reward_and_ignores_unscorable_rows():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [NAN, NAN], [2.0, 0.0], [NAN, NAN]])
    rewards = torch.cat([rewards, torch.tensor([[NAN, NAN]])])  # 4 groups of 2
    weights = torch.tensor([1.0, 1.0])
    # group 1: 1+0 vs 0+1, equal sums: no spread on the sum TRL normalises, spread per function
    assert groups_with_spread(rewards, weights, 2, per_function=False).tolist() == [False, False, False, False]
    assert groups_with_spread(rewards, weights, 2, per_function=True).tolist() == [False, True, False, False]
    # weights change the sum: 1 vs 2 now differ
    weighted = groups_with_spread(rewards, torch.tensor([1.0, 2.0]), 2, per_function=False)
    assert weighted.tolist() == [False, True, False, False]
    rewards[4] = torch.tensor([0.0, 0.0])  # group 2 was one scorable row (no spread); now 0 vs 2
    assert groups_with_spread(rewards, weights, 2, per_function=False).tolist() == [False, False, True, False]


def test_select_rows_fills_in_round_order_then_cuts_to_a_divisible_batch():
    spreads = [torch.tensor([False, True, False]), torch.tensor([True, True, False])]
    full = select_rows(spreads, num_generations=2, target_rows=4, divisor=2, capped=False)
    assert full.rows == [(0, 2), (0, 3), (1, 0), (1, 1)]
    assert (full.kept_groups, full.generated_groups, full.rounds) == (3, 6, 2)
    # Capped with 2 groups (4 rows) kept of a 6-row target: 4 rows train, cut to a multiple of the divisor 4.
    short = select_rows([torch.tensor([True, False, True])], 2, target_rows=6, divisor=4, capped=True)
    assert short.rows == [(0, 0), (0, 1), (0, 4), (0, 5)]
    cut = select_rows([torch.tensor([True, False, False])], 2, target_rows=6, divisor=4, capped=True)
    assert cut.rows == [(0, row) for row in range(6)], "nothing divisible kept: the last round trains as it is"


def test_join_rows_pads_prompts_left_and_completions_right():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "completion_ids": torch.tensor([[7]]), "advantages": torch.tensor([1.0])}
    b = {"prompt_ids": torch.tensor([[4]]), "completion_ids": torch.tensor([[8, 9]]), "advantages": torch.tensor([2.0])}
    joined = join_rows([a, b], pad_token_id=0)
    assert joined["prompt_ids"].tolist() == [[5, 6], [0, 4]]
    assert joined["completion_ids"].tolist() == [[7, 0], [8, 9]]
    assert joined["advantages"].tolist() == [1.0, 2.0]


def test_config_takes_zero_rounds_as_no_cap_and_refuses_unknown_cap_behaviour():
    from entropy_rl.config import EntropyGRPOConfig

    common = {"output_dir": "unused", "dynamic_sampling": True, "report_to": "none"}
    assert EntropyGRPOConfig(**common, dynamic_sampling_max_rounds=0).dynamic_sampling_max_rounds == 0
    with pytest.raises(ConfigError, match="dynamic_sampling_max_rounds=-1"):
        EntropyGRPOConfig(**common, dynamic_sampling_max_rounds=-1)
    with pytest.raises(ConfigError, match="dynamic_sampling_at_cap='skip'; allowed: 'error' or 'train'"):
        EntropyGRPOConfig(**common, dynamic_sampling_at_cap="skip")
    with pytest.raises(ConfigError, match="overlong_penalty_factor=-1.0"):
        EntropyGRPOConfig(**common, overlong_penalty_factor=-1.0)


def launch(out: Path, processes: int, regularizer: str, max_rounds: int, at_cap: str) -> subprocess.CompletedProcess:
    launcher = TWO_PROCESSES if processes == 2 else [sys.executable]
    command = [*launcher, str(SCRIPT), str(out), regularizer, str(max_rounds), at_cap]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)


def run(
    out: Path, processes: int, regularizer: str = "none", max_rounds: int = 10, at_cap: str = "error"
) -> list[dict]:
    done = launch(out, processes, regularizer, max_rounds, at_cap)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    assert all(rank["released"] for rank in ranks), "the process group outlived trainer.end()"
    return [rank["batches"] for rank in ranks]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_one_and_two_processes_keep_the_same_groups_and_fill_the_batch(tmp_path):
    (single,) = run(tmp_path / "one", 1)
    first, second = run(tmp_path / "two", 2)
    assert len(single) == 2
    for whole, rank0, rank1 in zip(single, first, second, strict=True):
        assert rank0["prompts"] + rank1["prompts"] == whole["prompts"]
        assert rank0["advantages"] + rank1["advantages"] == pytest.approx(whole["advantages"])
        assert len(whole["prompts"]) == 16, "the batch is full again"
        assert all(a != 0 for a in whole["advantages"]), "a group without reward spread was kept"
    rows = metrics(tmp_path / "one")
    assert [row["dynamic_sampling/filled"] for row in rows] == [1.0, 1.0]
    # one prompt in three has spread: several rounds per batch, a third of the groups kept on average
    assert all(row["dynamic_sampling/rounds"] > 1 for row in rows)
    assert all(0 < row["dynamic_sampling/kept_fraction"] < 1 for row in rows)

    def counts(rows: list[dict]) -> list[dict]:
        return [{key: value for key, value in row.items() if key.startswith("dynamic_sampling/")} for row in rows]

    assert counts(metrics(tmp_path / "two")) == counts(rows)


@pytest.mark.slow
def test_capped_rounds_train_on_what_was_kept_with_step_level_regularizers_and_diagnostics(tmp_path):
    first, second = run(tmp_path / "two", 2, regularizer="clip_b+steer", max_rounds=1, at_cap="train")
    rows = metrics(tmp_path / "two")
    assert any(row["dynamic_sampling/kept_fraction"] > 0 for row in rows), "the fixed seed keeps some groups"
    for rank0, rank1, row in zip(first, second, rows, strict=True):
        assert len(rank0["prompts"]) == len(rank1["prompts"]), "every process trains on as many rows"
        assert row["dynamic_sampling/rounds"] == 1 and row["dynamic_sampling/capped"] == 1.0
        kept = rank0["advantages"] + rank1["advantages"]
        if row["dynamic_sampling/kept_fraction"] > 0:
            assert all(a != 0 for a in kept) and len(kept) < 16
        assert any(key.startswith("reg/clip_b") for key in row) and any(key.startswith("reg/steer") for key in row)
        assert "entropy/token_mean" in row and "dynamics/measured_dH" in row


@pytest.mark.slow
def test_the_round_cap_stops_the_run_by_default_as_verl(tmp_path):
    # One round and a third of the prompts with spread: the batch of 4 groups cannot fill in one round.
    done = launch(tmp_path / "one", 1, "none", max_rounds=1, at_cap="error")
    assert done.returncode != 0
    assert "DynamicSamplingError: dynamic sampling: 1 generation rounds (dynamic_sampling_max_rounds=1)" in done.stderr
