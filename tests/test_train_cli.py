"""`entropy-rl train`: the built-in default shows entropy collapse; bad input fails at start with a clear message."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from entropy_rl.cli import main
from entropy_rl.cli.train import report
from entropy_rl.jsonl import append_row, read_rows
from entropy_rl.rundir import write_config

REPO = Path(__file__).resolve().parents[1]


def default_run() -> dict:
    """Written by perf/default_run.py: the default run's figures as ranges over kernel settings, with tolerance."""
    return json.loads((REPO / "docs" / "results" / "default-run.json").read_text())


@pytest.mark.slow
def test_default_run_lands_in_the_documented_ranges(tmp_path, capsys):
    """The built-in default cut to its first 150 steps (shipped policy, GRPO on addition): entropy falls, reward rises,
    and both land inside the ranges docs/results/default-run.md gives for this shortened run."""
    documented = default_run()
    steps = documented["short_steps"]
    argv = ["train", "--max_steps", str(steps), "--output_dir", str(tmp_path), "--save_strategy", "no"]
    assert main([*argv, "--disable_tqdm", "true"]) == 0
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))

    def mean(part, key):
        return statistics.mean(r[key] for r in part)

    window = steps // 10  # as `entropy-rl train` and perf/default_run.py summarise a run
    first, last = rows[:window], rows[-window:]
    for part, chunk in (("first", first), ("last", last)):
        for name, key in (("entropy", "entropy/token_mean"), ("reward", "reward")):
            low, high = documented["ranges"]["short"][part][name]
            assert low <= mean(chunk, key) <= high, (part, name, mean(chunk, key), (low, high))
    assert mean(last, "entropy/token_mean") < mean(first, "entropy/token_mean") - 0.01
    assert mean(last, "reward") > mean(first, "reward") + 0.02
    assert mean(rows, "cov/logp_adv") > 0  # the sign that drives entropy down (Cui et al.)
    assert "dynamics/pearson_r" in rows[-1]
    # The parameter-space prediction is first-order exact: it tracks the measured change (0.95 on the full default).
    assert rows[-1]["dynamics/pearson_r_param"] > 0.8
    # The default evaluates the policy on the held-out set during training, every 50 steps.
    curve = read_rows(tmp_path / "curve.jsonl")
    assert [(r["step"], r["benchmark"], r["num_problems"]) for r in curve] == [
        (s, "arithmetic", 256) for s in (50, 100, 150)
    ]
    assert all(r["train_entropy"] == rows[r["step"] - 1]["entropy/seq_mean"] for r in curve)
    out = capsys.readouterr().out
    assert "metrics.jsonl" in out and (tmp_path / "entropy_reward.png").stat().st_size > 0
    assert "parameter-space prediction vs measured entropy change: r = " in out
    assert (tmp_path / "dynamics.png").stat().st_size > 0


def test_readme_and_the_results_page_quote_the_measured_ranges():
    """The figures README.md gives for the default run are the ranges perf/default_run.py measured, not older ones."""
    documented = default_run()
    page = (REPO / "docs" / "results" / "default-run.md").read_text()
    readme = " ".join((REPO / "README.md").read_text().split())
    for length in ("full", "short"):
        for part in ("first", "last"):
            for name in ("entropy", "reward"):
                low, high = documented["ranges"][length][part][name]
                quoted = f"{low:.3f}–{high:.3f}"
                assert quoted in page, (length, part, name, quoted)
                if length == "full":
                    assert quoted in readme, (part, name, quoted)


def test_readme_quotes_the_timed_commands():
    """README.md's times for its commands are those perf/readme_commands.py measured from a clean clone."""
    page = (REPO / "docs" / "results" / "readme-commands.md").read_text()
    rows = re.findall(r"^\| (\d) \| (\d+) s \| .*?: (\d+) s \| (\d+) s \|", page, flags=re.M)
    assert rows and rows[0][0] == "1", page
    readme = " ".join((REPO / "README.md").read_text().split())
    for command, install, _, total in rows:
        quoted = f"{total} s from a clean clone, {install} s of it the install"
        assert quoted in readme, (command, quoted)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--regularizer", "clip_kov"], "regularizer='clip_kov'"),
        (["--regularizer", "kl_cov"], "kl_cov only with off-policy"),
        (["--clip_cov_ratio", "0", "--regularizer", "clip_cov"], "clip_cov_ratio=0.0"),
        (["--reward_funcs", "nonexistent_reward"], "reward_funcs entry 'nonexistent_reward'"),
        (["--dataset_name", "nope"], "dataset_name='nope'"),
    ],
)
def test_bad_values_fail_at_start_naming_field_and_value(argv, message, tmp_path, capsys):
    assert main(["train", "--output_dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_incomplete_checkpoint_is_refused_naming_what_is_missing(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "pytorch_model.bin").write_bytes(b"pickle")  # never unpickled
    assert main(["train", "--output_dir", str(tmp_path), "--resume_from_checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-4" in err and "model.safetensors" in err and "optimizer.pt" in err


@pytest.mark.parametrize("flag", ["--learning_rat", "--not_a_field"])
def test_unknown_or_abbreviated_flag_is_refused(flag, tmp_path, capsys):
    assert main(["train", "--output_dir", str(tmp_path), flag, "1e-4"]) == 2
    assert flag in capsys.readouterr().err


def test_math_reward_grades_only_the_box_and_math_loose_plain_answers_too():
    from entropy_rl.rewards import math_loose_reward, math_reward

    completions = ["so \\boxed{\\frac{1}{2}}", "The answer is 0.5", "\\boxed{3}", "__import__('os').system('x')"]
    golds = ["1/2", "\\frac12", "4", "0"]
    assert math_reward(None, completions, golds) == [1.0, 0.0, 0.0, 0.0]
    assert math_loose_reward(None, completions, golds) == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.slow
def test_train_on_a_benchmark_file_with_the_math_reward(tmp_path, make_model, tokenizer):
    from entropy_rl.evaluation.benchmarks import resolve_data_dir

    data_dir = resolve_data_dir()
    if data_dir is None:
        pytest.skip("set ENTROPY_RL_DATA_DIR to the directory of the offline benchmark files")
    data = data_dir / "gsm8k_train.jsonl"
    if not data.exists():
        pytest.skip(f"shared benchmark data not found at {data}")
    model_dir = tmp_path / "model"
    make_model().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = [
        "train",
        "--model_name_or_path",
        str(model_dir),
        "--dataset_name",
        "eval/benchmarks/gsm8k.yaml",  # a spec in the benchmark format; a bare name would be a Hub id, as in TRL
        "--dataset_file",
        str(data),
        "--reward_funcs",
        "math",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        "--max_completion_length",
        "8",
        "--output_dir",
        str(tmp_path / "run"),
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
    ]
    assert main(argv) == 0
    assert [r["step"] for r in read_rows(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_report_reads_the_metrics_file_the_run_wrote(tmp_path, capsys):
    # Regression: the report read a hard-coded metrics.jsonl, so `--metrics_file x.jsonl` gave "0 steps" and no plot.
    write_config(tmp_path, {"metrics_file": "x.jsonl", "regularizer": "none", "seed": 0})
    for step in range(1, 21):
        row = {"step": step, "entropy/token_mean": 1.0 / step, "entropy/seq_mean": 1.0 / step, "reward": step / 20}
        append_row(tmp_path / "x.jsonl", {**row, "cov/logp_adv": 0.1})
    report(tmp_path)
    out = capsys.readouterr().out
    assert f"metrics: {tmp_path / 'x.jsonl'} (20 steps)" in out
    assert f"plot:    {tmp_path / 'entropy_reward.png'}" in out and (tmp_path / "entropy_reward.png").stat().st_size > 0
    assert "last 2 steps: entropy 0.051  reward 0.975" in out


@pytest.mark.slow
def test_train_with_a_metrics_file_name_reports_its_steps_and_plot(tmp_path, make_model, tokenizer, capsys):
    model_dir = tmp_path / "model"
    make_model().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(model_dir), "--metrics_file", "x.jsonl", "--output_dir", str(out)]
    argv += ["--max_steps", "3", "--per_device_train_batch_size", "8", "--num_generations", "4"]
    argv += ["--max_completion_length", "8"]  # TRL's default is 256: a model was named
    assert main([*argv, "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1"]) == 0
    assert [r["step"] for r in read_rows(out / "x.jsonl")] == [1, 2, 3] and not (out / "metrics.jsonl").exists()
    printed = capsys.readouterr().out
    assert f"metrics: {out / 'x.jsonl'} (3 steps)" in printed
    assert f"plot:    {out / 'entropy_reward.png'}" in printed and (out / "entropy_reward.png").stat().st_size > 0


def test_bad_launcher_flag_fails_with_the_command_error_line(tmp_path, capsys):
    assert main(["train", "--num_processes", "2", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entropy-rl train: error: invalid config: --num_processes='2' without --accelerate_config")


def test_the_plan_names_model_task_steps_evaluation_and_run_folder(tmp_path):
    from entropy_rl.cli.progress import plan_lines
    from entropy_rl.train_args import parse_train_args

    lines = plan_lines(*parse_train_args(["--output_dir", str(tmp_path)]))
    text = "\n".join(lines)
    assert "the built-in toy policy (warm-started, shipped in " in text
    assert "task:     arithmetic, reward arithmetic" in text
    assert "GRPO, 500 steps of 64 completions per device (8 per prompt)" in text
    assert "held-out: arithmetic every 50 steps and at the end" in text
    assert lines[-1] == f"run:      {tmp_path}"
    model_lines = plan_lines(*parse_train_args(["--output_dir", str(tmp_path), "--model_name_or_path", "org/model"]))
    assert model_lines[0] == "model:    org/model"


def test_progress_is_one_bar_that_names_evaluations_and_estimates_the_time_left(capsys, monkeypatch):
    from types import SimpleNamespace

    from entropy_rl.cli import progress

    args = SimpleNamespace(curve_benchmarks=["arithmetic"], curve_every=5)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=40, global_step=0)
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(state.global_step))  # one second per step
    callback = progress.TrainProgress()
    callback.on_train_begin(args, state, None)
    descriptions = []
    for step in range(1, 13):
        callback.on_step_begin(args, state, None)
        state.global_step = step
        callback.on_step_end(args, state, None)
        descriptions.append(callback.bar.desc)
    callback.on_log(args, state, None, logs={"reward": 0.5, "entropy/token_mean": 0.41})
    assert callback.bar.n == 12 and callback.bar.postfix == "reward=0.500, entropy=0.410"
    assert descriptions[4] == descriptions[9] == "evaluating held-out arithmetic"
    assert descriptions[5] == descriptions[10] == "training"
    callback.on_train_end(args, state, None)
    out, err = capsys.readouterr()
    # Timed over steps 2..11 (1 s each): 29 steps are left after step 11.
    assert "about 29 s to go on this machine (1.00 s per step)" in out + err
    assert "evaluating held-out arithmetic at the last step" in out
