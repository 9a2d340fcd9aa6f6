"""The trainer's helper objects on their own (entropy_rl/trainer/: step_sums, metrics_file, agreement, unscorable,
param_probe), and the rule that keeps them helpers: none reads the trainer or another object's private attributes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from entropy_rl.jsonl import read_rows
from entropy_rl.trainer.agreement import DynamicsAgreement
from entropy_rl.trainer.metrics_file import MetricsFile
from entropy_rl.trainer.step_sums import StepSums
from entropy_rl.trainer.unscorable import UnscorableCount

TRAINER_DIR = Path(__file__).resolve().parents[1] / "entropy_rl" / "trainer"
# The modules the trainer holds objects of or calls (grpo.py is the trainer, checkpoints.py its mix-in).
HELPERS = ("agreement", "batch_keys", "metrics_file", "param_probe", "sampling", "step_end", "step_sums", "unscorable")


def test_step_sums_reduce_once_and_split_by_name():
    sums = StepSums()
    sums.add("b", torch.tensor([1.0, 2.0], dtype=torch.float64))
    sums.add("b", torch.tensor([0.5, 0.5], dtype=torch.float64))
    sums.add("a", torch.tensor([3.0]))  # float32 joins as float64
    sums.setdefault("a", torch.zeros(1))  # already filled: left as it is
    sums.setdefault("c", torch.zeros(2))
    calls = []

    def all_reduce(flat):
        calls.append(flat)
        return flat * 2  # two ranks holding the same sums

    totals = sums.reduce(all_reduce, "cpu")
    assert len(calls) == 1 and calls[0].dtype == torch.float64
    assert totals == {"a": [6.0], "b": [3.0, 5.0], "c": [0.0, 0.0]}
    assert sums.get("a") is None  # emptied for the next step


def test_metrics_file_appends_rows_and_a_resume_continues_without_gaps_or_duplicates(tmp_path):
    run = tmp_path / "run"
    first = MetricsFile(str(run), "metrics.jsonl", is_main=True)
    assert first.open(0) == []
    assert not run.exists()  # nothing is written before the first row
    first.start({"seed": 1})
    for step in (1, 2, 3):
        first.write(step, step / 3, {"reward": float(step)})
        assert [row["step"] for row in read_rows(first.path)] == list(range(1, step + 1))  # flushed every step
    assert list(read_rows(first.path)[0]) == ["step", "epoch", "wall_time", "reward"]

    resumed = MetricsFile(str(run), "metrics.jsonl", is_main=True)
    assert [row["step"] for row in resumed.open(2)] == [1, 2]
    resumed.start({"seed": 1})
    resumed.write(3, 1.0, {"reward": 30.0})
    rows = read_rows(resumed.path)
    assert [row["step"] for row in rows] == [1, 2, 3] and rows[-1]["reward"] == 30.0

    other = MetricsFile(str(run), "metrics.jsonl", is_main=False)
    assert other.open(3) is None
    other.start({})
    other.write(4, 1.0, {"reward": 4.0})
    assert len(read_rows(resumed.path)) == 3  # only the main process writes


def test_agreement_records_the_measured_change_and_the_running_pearson_r():
    agreement = DynamicsAgreement()
    agreement.restore(
        [
            {"step": 1, "dynamics/predicted_dH": 1.0, "dynamics/measured_dH": 2.0, "dynamics/predicted_dH_param": 1.0},
            {"step": 2},
            {"step": 3, "dynamics/predicted_dH": 2.0, "dynamics/measured_dH": 3.0, "dynamics/predicted_dH_param": 2.1},
        ]
    )
    row = {"dynamics/predicted_dH": 3.0, "dynamics/predicted_dH_param": 2.9}
    agreement.record(row, 4.5)
    assert row["dynamics/measured_dH"] == 4.5
    assert row["dynamics/pearson_r"] == pytest.approx(0.9933992677987828)
    assert "dynamics/pearson_r_param" in row
    assert (agreement.predicted, agreement.measured) == ([1.0, 2.0, 3.0], [2.0, 3.0, 4.5])


def test_unscorable_count_stops_a_streak_of_wholly_broken_batches():
    from entropy_rl.errors import RewardError

    count = UnscorableCount()
    nan = float("nan")
    count.count(torch.tensor([[nan, 1.0], [nan, nan]]), torch.tensor([[False, False], [True, True]]))
    (counts,) = count.take()
    assert counts.tolist() == [1.0, 0.0, 2.0]  # one unscorable, all of its values None: not broken
    assert count.take() == []
    assert count.check(1, 0, 2, step=1, limit=2) == 0.5
    assert count.check(2, 2, 2, step=2, limit=2) == 1.0  # one wholly broken batch: a warning
    with pytest.raises(RewardError, match=r"in 2 rollout batches in a row \(steps 2-3\)"):
        count.check(2, 2, 2, step=3, limit=2)


def test_param_probe_refuses_what_it_cannot_measure():
    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.errors import ConfigError
    from entropy_rl.trainer.param_probe import ParamProbe, PolicyLoss

    loss = PolicyLoss(print, print, 0.2, 0.2, attributable=True)  # check() reads none of it

    probe = ParamProbe(EntropyGRPOConfig(output_dir="unused", dynamics_momentum_groups=True), loss)
    plain = dict(world=1, fsdp=False, fsdp1=False, deepspeed=False, zero3=False, loss_type="dapo")
    probe.check(**plain, importance_sampling_level="token")
    with pytest.raises(ConfigError, match="dynamics_momentum_groups=True; allowed: False with loss_type='dapo' / imp"):
        probe.check(**plain, importance_sampling_level="sequence")
    with pytest.raises(ConfigError, match="dynamics_param=True with FSDP version 1 / ZeRO-3"):
        ParamProbe(EntropyGRPOConfig(output_dir="unused"), loss).check(
            **plain | {"deepspeed": True, "zero3": True}, importance_sampling_level="token"
        )


def _private_reads(path: Path) -> list[str]:
    """`x._name` where x is not `self` (a module's private name, e.g. torch's, would be listed here too)."""
    found = re.finditer(r"\b(\w+)\._[A-Za-z]\w*", path.read_text())
    return [m.group(0) for m in found if m.group(1) not in ("self", "cls")]


@pytest.mark.parametrize("name", HELPERS)
def test_helpers_read_neither_the_trainer_nor_private_attributes_of_other_objects(name):
    """A helper gets what it needs as arguments: no `trainer.` reads and no other object's private attributes."""
    path = TRAINER_DIR / f"{name}.py"
    assert not re.findall(r"(?<![.\w])trainer\.", path.read_text())  # trl.trainer.* is a module
    assert not _private_reads(path)


@pytest.mark.parametrize("name", ["training.py", "training_curve.py"])
def test_the_trainers_users_read_only_its_public_attributes(name):
    assert not _private_reads(TRAINER_DIR.parent / name)


class _OneProcess:
    """What StepEnd reads of accelerate's Accelerator, on one process; counts the collectives."""

    num_processes, process_index, is_main_process, device = 1, 0, True, torch.device("cpu")

    def __init__(self):
        self.reduces = 0

    def reduce(self, x, reduction):
        self.reduces += 1
        return x


def test_step_end_reduces_every_slot_once_and_appends_the_row(tmp_path):
    from collections import defaultdict

    from entropy_rl import stats
    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.regularizers.common import DrawStream
    from entropy_rl.trainer.param_probe import PolicyLoss
    from entropy_rl.trainer.step_end import StepEnd
    from entropy_rl.trainer.step_sums import TOKENS

    accelerator, logged = _OneProcess(), defaultdict(list)
    reg_sums = {"clip_frac": torch.tensor([1.0, 4.0], dtype=torch.float64)}
    end = StepEnd(
        EntropyGRPOConfig(output_dir=str(tmp_path / "run"), dynamics_every=0),
        accelerator,
        loss=PolicyLoss(print, print, 0.2, 0.2, attributable=True),
        one_pass=print,
        logged=logged,
    )
    end.begin(0)
    end.metrics_file.start({})
    end.unscorable.count(torch.tensor([[float("nan")], [1.0]]), torch.zeros(2, 1, dtype=torch.bool))
    end.sums.add(TOKENS, torch.zeros(len(stats.SUM_FIELDS), dtype=torch.float64))
    end.finish(1, 0.5, reg_sums=reg_sums, draws=DrawStream(torch.Generator().manual_seed(0)))
    assert accelerator.reduces == 1
    assert end.last_row == {"tokens": 0.0, "reg/clip_frac": 0.25}
    assert end.sums.get(TOKENS) is None  # emptied for the next step
    assert logged["reward/nan_frac"] == [0.5] and logged["reg/clip_frac"] == [0.25]
    (row,) = read_rows(end.metrics_file.path)
    assert row["step"] == 1 and row["reward/nan_frac"] == 0.5 and row["reg/clip_frac"] == 0.25
