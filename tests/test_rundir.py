"""entropy_rl.rundir: the run directory's files, read and repaired in one place."""

from __future__ import annotations

import json

import pytest

from entropy_rl import rundir
from entropy_rl.jsonl import read_rows
from entropy_rl.rundir import RunDirError


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_metrics_file_of_the_saved_config_is_honoured(tmp_path):
    rundir.write_config(tmp_path, {"metrics_file": "x.jsonl", "regularizer": "steer", "seed": 3})
    assert rundir.read_config(tmp_path)["metrics_file"] == "x.jsonl"
    assert rundir.metrics_path(tmp_path) == tmp_path / "x.jsonl"
    assert rundir.metrics_path(tmp_path, {}) == tmp_path / rundir.METRICS_FILE
    write_jsonl(tmp_path / "x.jsonl", [{"step": 1, "entropy/seq_mean": 0.5}, {"step": 2, "entropy/seq_mean": None}])
    run = rundir.load_run(tmp_path)
    assert run.metrics_path == tmp_path / "x.jsonl" and run.label == "steer seed 3" and run.curve is None
    assert rundir.train_entropy_by_step(tmp_path) == {1: 0.5, 2: None}


def test_missing_or_broken_config_is_empty(tmp_path):
    assert rundir.read_config(tmp_path) == {}
    (tmp_path / rundir.CONFIG_FILE).write_text("{not json")
    assert rundir.read_config(tmp_path) == {} and rundir.metrics_path(tmp_path) == tmp_path / "metrics.jsonl"


def test_train_entropy_of_an_unreadable_run_is_empty_with_a_warning(tmp_path, caplog):
    assert rundir.train_entropy_by_step(tmp_path) == {}
    assert "train_entropy will be null" in caplog.text and "metrics.jsonl: file not found" in caplog.text


def test_curve_torn_last_line_is_repaired_before_appending(tmp_path):
    assert rundir.read_curve(tmp_path) == []
    rundir.append_curve_row(tmp_path, {"step": 1, "benchmark": "a"})
    curve = tmp_path / rundir.CURVE_FILE
    curve.write_text(curve.read_text() + '{"step": 2, "bench')  # killed mid-append
    assert rundir.read_curve(curve) == [{"step": 1, "benchmark": "a"}]
    assert curve.read_text() == '{"step": 1, "benchmark": "a"}\n'
    rundir.append_curve_row(tmp_path, {"step": 2, "benchmark": "a"})
    assert [row["step"] for row in rundir.read_curve(tmp_path)] == [1, 2]
    curve.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(RunDirError, match=r"curve.jsonl:2: not valid JSON"):
        rundir.read_curve(tmp_path)


def test_checkpoints_in_step_order(tmp_path):
    for name in ("checkpoint-10", "checkpoint-2", "checkpoint-x", "final"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-3").write_text("a file, not a checkpoint")
    assert rundir.list_checkpoints(tmp_path) == [(2, tmp_path / "checkpoint-2"), (10, tmp_path / "checkpoint-10")]


def test_continue_metrics_drops_steps_after_the_resumed_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, [{"step": 1}, {"step": 2}, {"step": 3}])
    assert rundir.continue_metrics(path, 2) == [{"step": 1}, {"step": 2}]
    assert read_rows(path) == [{"step": 1}, {"step": 2}]
    assert rundir.continue_metrics(tmp_path / "new.jsonl", 0) == []
