"""Every bad input to `entropy-rl train` ends with one line `entropy-rl train: error: ...` and exit code 2, before any
model loads: config files, model paths, output directories, numbers, parameters of unselected regularizers, empty
training sets, broken checkpoints, and a directory that holds a run."""

from __future__ import annotations

import json
import os

import pytest

from entropy_rl import train_args, training
from entropy_rl.cli import main


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(training, "load_policy", refuse)


def one_line_error(argv, capsys) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("entropy-rl train: error: ") and "Traceback" not in err, err
    return err


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rate: 1.0e-4\nregularizer: [clip_cov\nseed: 1\n")
    err = one_line_error(["--config", str(recipe), "--output_dir", str(tmp_path / "run")], capsys)
    assert f"--config {recipe}:3:" in err and "not valid YAML" in err


@pytest.mark.parametrize("content,message", [("- a\n- b\n", "expected a mapping"), ("", "expected a mapping")])
def test_yaml_that_is_not_a_mapping(tmp_path, capsys, content, message):
    recipe = tmp_path / "list.yaml"
    recipe.write_text(content)
    assert message in one_line_error(["--config", str(recipe)], capsys)


def test_missing_config_file(tmp_path, capsys):
    err = one_line_error(["--config", str(tmp_path / "nope.yaml")], capsys)
    assert "--config" in err and "nope.yaml" in err  # named, with the packaged recipes offered instead


def test_local_model_folder_that_does_not_exist(tmp_path, capsys):
    err = one_line_error(["--model_name_or_path", "./nowhere/model", "--output_dir", str(tmp_path)], capsys)
    assert "model_name_or_path='./nowhere/model': no such local folder" in err


def test_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = one_line_error(["--model_name_or_path", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "r")], capsys)
    assert "is a folder without config.json" in err


def test_hub_id_offline_and_not_cached(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    err = one_line_error(["--model_name_or_path", "no-org/no-such-model-xyz", "--output_dir", str(tmp_path)], capsys)
    assert "not in the local cache while HF_HUB_OFFLINE is set" in err


def test_malformed_hub_id(tmp_path, capsys):
    err = one_line_error(["--model_name_or_path", "bad id!", "--output_dir", str(tmp_path)], capsys)
    assert "is neither a local folder nor a Hub id" in err


def test_output_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = one_line_error(["--output_dir", str(tmp_path / "file" / "run")], capsys)
    assert "is not writable (Not a directory)" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert "is not writable (Permission denied)" in one_line_error(["--output_dir", str(folder)], capsys)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--learning_rate=-1e-4"], "learning_rate=-0.0001; allowed: a finite number >= 0"),
        (["--learning_rate", "fast"], "argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
        (["--learning_rate", "nan"], "learning_rate=nan; allowed: a finite number"),
        (["--temperature", "inf"], "temperature=inf; allowed: a finite number"),
        (["--top_p", "1.5"], "top_p=1.5; allowed: a number in (0, 1]"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size=0"),
        (["--max_nan_reward_batches", "-1"], "max_nan_reward_batches=-1"),
        (["--save_steps", "0"], "save_steps=0"),
        (
            ["--regularizer", "steer", "--clip_cov_ratio", "0.5"],
            "clip_cov_ratio=0.5 is a parameter of clip_cov, which regularizer='steer' does not select",
        ),
        (["--clip_cov_lb", "nan", "--regularizer", "clip_cov"], "clip_cov_lb=nan"),
        (["--num_train_problems", "0"], "num_train_problems=0; allowed: an integer >= 1"),
    ],
)
def test_bad_numbers_and_unselected_parameters(argv, message, tmp_path, capsys):
    assert message in one_line_error([*argv, "--output_dir", str(tmp_path)], capsys)


def test_a_directory_holding_a_run_is_not_overwritten(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 61)))
    err = one_line_error(["--output_dir", str(tmp_path)], capsys)
    assert "holds a run (metrics.jsonl (60 rows))" in err
    assert "--resume_from_checkpoint latest" in err and "--overwrite_output_dir true" in err
    assert len(metrics.read_text().splitlines()) == 60


def test_latest_without_a_complete_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoint-3").mkdir()
    err = one_line_error(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"], capsys)
    assert "no complete checkpoint in" in err and "skipped: checkpoint-3 (" in err


def test_trl_true_means_latest(tmp_path, capsys):
    err = one_line_error(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "True"], capsys)
    assert "resume_from_checkpoint='True': no complete checkpoint" in err


def test_corrupted_checkpoint_names_the_file_and_the_previous_one(tmp_path, capsys):
    from test_checkpoints import make_checkpoint, truncate

    previous = make_checkpoint(tmp_path, 2)
    broken = make_checkpoint(tmp_path, 4)
    truncate(broken / "model.safetensors")
    err = one_line_error(["--output_dir", str(tmp_path), "--resume_from_checkpoint", str(broken)], capsys)
    assert "model.safetensors is " in err and f"resume from {previous} instead" in err


def test_resuming_a_finished_run_is_refused(tmp_path, capsys):
    # transformers would train one step past max_steps (it checks the limit after a step)
    from test_checkpoints import make_checkpoint

    make_checkpoint(tmp_path, 4)
    err = one_line_error(
        ["--output_dir", str(tmp_path), "--max_steps", "4", "--resume_from_checkpoint", "latest"], capsys
    )
    assert "is at step 4 and max_steps=4: the run is finished" in err


@pytest.mark.parametrize(
    "entry,shown",
    [
        ("os:system", "takes (command)"),  # a callable, but not with TRL's reward signature
        ("builtins:print", "unexpected keyword argument 'prompts'"),
        ("math_loose:nothing", "cannot be imported"),
    ],
)
def test_reward_function_that_trl_could_not_call_is_refused_at_start(tmp_path, capsys, entry, shown):
    err = one_line_error(["--reward_funcs", entry, "--output_dir", str(tmp_path / "r")], capsys)
    assert f"reward_funcs entry {entry!r}" in err and shown in err


def test_reward_function_missing_a_dataset_column_is_refused_at_start(tmp_path, capsys):
    # TRL's accuracy_reward reads a `solution` column; the built-in task has `answer`.
    err = one_line_error(["--reward_funcs", "accuracy_reward", "--output_dir", str(tmp_path / "r")], capsys)
    assert "'accuracy_reward'" in err and "missing a required argument: 'solution'" in err


def test_unknown_curve_benchmark_is_refused_before_the_model_loads(tmp_path, capsys):
    err = one_line_error(["--curve_benchmarks", "UNKNOWN", "--output_dir", str(tmp_path / "r")], capsys)
    assert "curve_benchmarks entry 'UNKNOWN': unknown benchmark 'UNKNOWN'; known: " in err


def test_empty_curve_benchmarks_means_no_curve_as_help_says():
    _, config, _ = train_args.parse_train_args(["--curve_benchmarks", "", "--output_dir", "unused"])
    assert config.curve_benchmarks == []
    help_text = training.EntropyGRPOConfig.__dataclass_fields__["curve_benchmarks"].metadata["help"]
    assert "--curve_benchmarks ''" in help_text and "no evaluation during training" in help_text


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_jsonl_dataset_says_it_is_empty(tmp_path, capsys, content):
    data = tmp_path / "train.jsonl"
    data.write_text(content)
    err = one_line_error(["--dataset_name", str(data), "--output_dir", str(tmp_path / "r")], capsys)
    assert f"dataset_name={str(data)!r} is empty" in err and "StopIteration" not in err


def test_unknown_dynamic_sampling_metric_is_refused_before_the_model_loads(tmp_path, capsys):
    argv = ["--dynamic_sampling", "true", "--dynamic_sampling_metric", "score", "--output_dir", str(tmp_path / "r")]
    err = one_line_error(argv, capsys)
    assert "dynamic_sampling_metric='score'" in err and "['arithmetic_reward']" in err


@pytest.mark.slow
def test_no_warning_is_printed_before_the_error_line(tmp_path):
    # A real process: TRL's config raises a FutureWarning (gradient_checkpointing) while the arguments are parsed;
    # it waits until the checks pass and is dropped when they fail.
    import subprocess
    import sys

    argv = ["--curve_benchmarks", "UNKNOWN", "--output_dir", str(tmp_path / "r")]
    done = subprocess.run(
        [sys.executable, "-m", "entropy_rl.cli", "train", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert done.stderr.startswith("entropy-rl train: error: ") and done.stderr.count("\n") == 1, done.stderr
