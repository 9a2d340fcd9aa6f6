"""`entropy-rl study` end to end in miniature (train, evaluate, fit, page), its skipping and resuming, and its checks.

The miniature is the study's own `--quick` preset (6 steps, 1 seed, 16 problems) over three methods, so the command
that writes docs/results/toy.md cannot rot without CI noticing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from entropy_rl.cli.study import build_parser, load_study, main, worker_commands
from entropy_rl.jsonl import read_rows, rewrite_rows
from entropy_rl.rundir import load_run
from entropy_rl.study.analysis import RunResult, compare_all, holm, paired, welch
from entropy_rl.study.page import write_page
from entropy_rl.study.power import detectable_difference, seeds_needed, welch_power

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "recipes" / "toy" / "study.yaml")
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

METHODS = ("none", "clip_cov", "clip_b")
FIGURES = ("toy_entropy.png", "toy_accuracy.png", "toy_dynamics.png", "toy_law.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mini_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config",
        CONFIG,
        "--quick",
        "--methods",
        ",".join(METHODS),
        "--output",
        str(tmp_path / "runs"),
        "--doc_dir",
        str(tmp_path / "docs"),
        *extra,
    ]


@pytest.mark.slow
def test_miniature_study_writes_the_page_then_skips_and_resumes(tmp_path, capsys):
    assert main(mini_argv(tmp_path)) == 0
    page = (tmp_path / "docs" / "toy.md").read_text()
    for heading in ("## Findings", "## Final numbers per method", "## Predicted vs measured", "## Entropy-performance"):
        assert heading in page
    assert "GRPO (`none`)" in page and "70% of its starting entropy" in page
    assert "`clip_cov` vs `none`" in page and "`clip_b` vs `none`" in page
    assert "joint (all runs)" in page and "entropy-rl study --config" in page
    for name in FIGURES:
        assert (tmp_path / "docs" / name).read_bytes().startswith(PNG_MAGIC), name
    runs = {method: tmp_path / "runs" / method / "seed0" for method in METHODS}
    for run_dir in runs.values():
        assert [row["step"] for row in read_rows(run_dir / "metrics.jsonl")] == list(range(1, 7))
        curve = read_rows(run_dir / "curve.jsonl")
        expected = [(2, 32, 16), (4, 32, 16), (6, 32, 16)]  # the study YAML's k; --quick evaluates 16 problems
        assert [(row["step"], row["k"], row["num_problems"]) for row in curve] == expected
    capsys.readouterr()

    # Re-run: nothing retrains or re-evaluates; the page is rewritten from the same files.
    before = {m: (d / "metrics.jsonl").read_bytes() for m, d in runs.items()}
    finals = {m: (d / "final" / "model.safetensors").stat().st_mtime_ns for m, d in runs.items()}
    curves = {m: (d / "curve.jsonl").read_bytes() for m, d in runs.items()}
    (tmp_path / "docs" / "toy.md").unlink()
    assert main(mini_argv(tmp_path)) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (finished); 0 checkpoints evaluated now") == len(METHODS)
    assert {m: (d / "metrics.jsonl").read_bytes() for m, d in runs.items()} == before
    assert {m: (d / "final" / "model.safetensors").stat().st_mtime_ns for m, d in runs.items()} == finals
    assert {m: (d / "curve.jsonl").read_bytes() for m, d in runs.items()} == curves
    assert "skipped (finished)" in (tmp_path / "docs" / "toy.md").read_text()
    assert main(mini_argv(tmp_path, "--dry_run")) == 0  # a finished run is listed with its plain train command
    listing = capsys.readouterr().out
    assert listing.count(" seed 0: finished") == len(METHODS) and "--overwrite_output_dir" not in listing

    # A run killed after its step-4 checkpoint resumes from it and ends with the same rows, none duplicated.
    killed = runs["clip_cov"]
    shutil.rmtree(killed / "final")
    shutil.rmtree(killed / "checkpoint-6")
    assert main(mini_argv(tmp_path)) == 0
    assert "clip_cov seed 0: resumed from checkpoint-4" in capsys.readouterr().out
    rows = read_rows(killed / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 7))
    original = [json.loads(line) for line in before["clip_cov"].decode().splitlines()]
    for got, want in zip(rows, original, strict=True):
        assert {k: v for k, v in got.items() if k != "wall_time"} == pytest.approx(
            {k: v for k, v in want.items() if k != "wall_time"}, rel=1e-5, abs=1e-7
        )

    # Other settings on the same directories are refused before anything trains.
    assert main(mini_argv(tmp_path, "--steps", "8")) == 2
    assert "was trained with other settings (max_steps: 6 then, 8 now)" in capsys.readouterr().err
    assert main(mini_argv(tmp_path, "--eval_k", "2")) == 2
    # The study evaluates during training (curve_* train flags): other evaluation settings are other train settings.
    assert "was trained with other settings (curve_k: 32 then, 2 now)" in capsys.readouterr().err

    # An option the config gained after a run was trained: at its default the run counts as finished, set otherwise
    # the run is refused.
    saved_path = runs["none"] / "entropy_rl_config.json"
    saved = json.loads(saved_path.read_text())
    assert saved.pop("dynamics_second_order") is False
    saved_path.write_text(json.dumps(saved))
    assert main(mini_argv(tmp_path)) == 0
    assert "none seed 0: skipped (finished)" in capsys.readouterr().out
    saved["dynamics_momentum_groups"] = True
    saved_path.write_text(json.dumps(saved))
    assert main(mini_argv(tmp_path)) == 2
    assert "dynamics_momentum_groups: True then, False now" in capsys.readouterr().err


def test_a_run_finished_by_another_process_since_the_plan_is_not_trained_again(tmp_path):
    """Two study processes on one output folder: the one whose plan went stale finds the run finished under its lock."""
    from entropy_rl.evaluation.benchmarks import load_benchmark
    from entropy_rl.study.execute import eval_settings, execute
    from entropy_rl.study.plan import plan_runs

    argv = mini_argv(tmp_path, "--methods", "none")
    study, _ = load_study(build_parser().parse_args(argv))
    benchmark = load_benchmark(study.eval.benchmark, limit=study.eval.problems)
    (stale,) = plan_runs(study, len(benchmark.problems))
    assert stale.state == "new"
    assert main(argv) == 0  # the other process
    metrics = stale.run_dir / "metrics.jsonl"
    rows = metrics.read_bytes()
    (result,) = execute(study, [stale], benchmark, eval_settings(study, benchmark))
    assert result.status == "skipped (finished) by another process"
    assert metrics.read_bytes() == rows


def test_an_invocation_killed_while_training_is_credited_until_its_last_metrics_row(tmp_path, monkeypatch):
    """A kill skips the code after train_run, so the study's time table would lose that invocation's training."""
    from entropy_rl.evaluation.benchmarks import load_benchmark
    from entropy_rl.study import execute as study_execute
    from entropy_rl.study.plan import plan_runs

    study, _ = load_study(build_parser().parse_args(mini_argv(tmp_path, "--methods", "none")))
    benchmark = load_benchmark(study.eval.benchmark, limit=study.eval.problems)
    (plan,) = plan_runs(study, len(benchmark.problems))
    times_path = plan.run_dir / "study_time.json"

    def killed_after_100_s(*args):
        since = json.loads(times_path.read_text())["training_since"]
        rewrite_rows(plan.run_dir / "metrics.jsonl", [{"step": 1}])
        os.utime(plan.run_dir / "metrics.jsonl", (since + 100, since + 100))  # its last row, 100 s after the start
        raise KeyboardInterrupt  # stands for the kill: nothing after train_run runs

    monkeypatch.setattr(study_execute, "train_run", killed_after_100_s)
    with pytest.raises(KeyboardInterrupt):
        study_execute.execute(study, [plan], benchmark, study_execute.eval_settings(study, benchmark))
    assert "train_s" not in json.loads(times_path.read_text())

    study_execute.start_training_clock(plan.run_dir)  # the next invocation credits the killed one
    assert json.loads(times_path.read_text())["train_s"] == pytest.approx(100, abs=1e-3)
    study_execute.stop_training_clock(plan.run_dir, 30.0)
    assert json.loads(times_path.read_text()) == pytest.approx({"train_s": 130.0}, abs=1e-3)
    study_execute.start_training_clock(plan.run_dir)  # a finished invocation leaves nothing to credit
    assert json.loads(times_path.read_text())["train_s"] == pytest.approx(130.0, abs=1e-3)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--methods", "none,clip_kov"], "--methods='none,clip_kov'"),
        (["--steps", "7"], "save_steps=2; allowed: a divisor of 7"),
        (["--seeds", "0"], "seeds=0"),
        (["--eval_k", "0"], "eval.k=0; allowed: an integer >= 1"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_value(extra, message, tmp_path, capsys):
    assert main(mini_argv(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_study_key_is_refused(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(Path(CONFIG).read_text().replace("\nsave_steps:", "\nsteeds: 3\nsave_steps:"))
    assert main(["--config", str(config), "--dry_run"]) == 2
    assert "unknown keys ['steeds']" in capsys.readouterr().err


def test_dry_run_lists_every_run_with_its_train_command(tmp_path, capsys):
    assert main(["--config", CONFIG, "--dry_run", "--output", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    data = yaml.safe_load(Path(CONFIG).read_text())
    assert out.count(": new\n") == len(data["methods"]) * data["seeds"]  # every method x seed, nothing trained yet
    assert "entropy-rl train --config" in out and "clip_b.yaml" in out and "--seed 2" in out
    assert "Power plan" in out and "no pilot: 0 evaluated run(s) of none" in out  # nothing to plan from yet
    assert not (tmp_path / "runs").exists()


def test_dry_run_plans_the_seeds_from_a_pilot(tmp_path, capsys):
    pilot = tmp_path / "pilot"
    for method, floor in (("none", 0.2), ("clip_cov", 0.6)):
        for seed in range(3):
            synthetic_run(pilot / method / f"seed{seed}", method, seed, floor)
    training = pilot / "clip_cov" / "seed3"  # still training (no final/): its last checkpoint is not its end
    synthetic_run(training, "clip_cov", 3, 0.9).run.path.joinpath("final").rmdir()
    argv = ["--config", CONFIG, "--methods", "none,clip_cov", "--output", str(tmp_path / "runs"), "--dry_run"]
    assert main([*argv, "--pilot", str(pilot), "--detect", "0.01"]) == 0
    out = capsys.readouterr().out

    def final_accuracies(method: str) -> list[float]:
        runs = [pilot / method / f"seed{seed}" / "curve.jsonl" for seed in range(3)]
        return [json.loads(path.read_text().splitlines()[-1])["avg@k"] for path in runs]

    accuracies = {method: final_accuracies(method) for method in ("none", "clip_cov")}
    sds = [float(np.std(accuracies[m], ddof=1)) for m in ("clip_cov", "none")]
    expected = seeds_needed(*sds, 0.01, 0.05)  # one method compared: Holm's first step is the plain level
    assert f"clip_cov: seed std {sds[0]:.4f} over 3 runs -> {expected} seeds" in out
    assert f"the study needs {max(5, expected)} seeds" in out


def test_welch_power_matches_simulation_and_plans_invert():
    from scipy import stats

    rng = np.random.default_rng(0)
    sd, base_sd, seeds, difference = 0.02, 0.015, 5, 0.03
    trials = 4000
    hits = sum(
        stats.ttest_ind(rng.normal(difference, sd, seeds), rng.normal(0, base_sd, seeds), equal_var=False).pvalue < 0.05
        for _ in range(trials)
    )
    assert welch_power(sd, base_sd, seeds, difference, 0.05) == pytest.approx(hits / trials, abs=0.03)
    needed = seeds_needed(0.018, 0.018, 0.03, 0.05)
    assert welch_power(0.018, 0.018, needed, 0.03, 0.05) >= 0.8 > welch_power(0.018, 0.018, needed - 1, 0.03, 0.05)
    smallest = detectable_difference(0.018, 0.018, 3, 0.05)
    assert welch_power(0.018, 0.018, 3, smallest, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert 0.05 < smallest < 0.07  # three seeds at this spread detect only about 0.06


def test_welch_and_paired_tests_equal_scipy():
    from scipy import stats

    method, base = [0.531, 0.50, 0.56, 0.52], [0.596, 0.58, 0.61]
    diff, (low, high), p = welch(method, base)
    reference = stats.ttest_ind(method, base, equal_var=False)
    assert p == pytest.approx(reference.pvalue, rel=1e-12)
    interval = reference.confidence_interval(0.95)
    assert (diff, low, high) == pytest.approx((np.mean(method) - np.mean(base), interval.low, interval.high))
    final, late = [0.61, 0.58, 0.60], [0.60, 0.59, 0.57]
    assert paired(final, late)[2] == pytest.approx(stats.ttest_rel(final, late).pvalue, rel=1e-12)
    assert welch([0.5], base) is None and paired([0.5], [0.4]) is None  # one seed: no test


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])


@pytest.mark.parametrize(
    "values,verdict",
    [
        ([0.50, 0.52, 0.51], "higher"),
        ([0.30, 0.31, 0.32], "lower"),
        ([0.40, 0.45, 0.50], "no significant difference"),
        ([0.5], "cannot tell (fewer than 2 seeds)"),
    ],
)
def test_compare_all_calls_a_difference_only_where_the_corrected_test_does(values, verdict):
    baseline = [0.40, 0.41, 0.42]
    assert compare_all({"m": welch(values, baseline)})["m"].verdict == verdict
    # The same difference among more comparisons needs a smaller p-value: p = 0.02 alone is significant, not among 5.
    assert compare_all({"m": (0.1, (0.01, 0.19), 0.02)})["m"].verdict == "higher"
    five = compare_all({f"m{i}": (0.1, (0.01, 0.19), 0.02 + i / 100) for i in range(5)})
    assert {c.verdict for c in five.values()} == {"no significant difference"}


def synthetic_run(run_dir: Path, method: str, seed: int, floor: float, late_slope: float = 0.0) -> RunResult:
    """40 steps whose entropy decays from 1.0 towards `floor`, accuracy on the law 0.9 - 0.25 exp(H) plus seed noise
    (plus `late_slope` per step after step 20), a checkpoint evaluated every 2 steps and a measured entropy change
    (half the prediction, plus noise) every 5."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 41)
    entropy = floor + (1.0 - floor) * np.exp(-steps / 10) + rng.normal(0, 0.005, len(steps))
    rows = []
    for step, h in zip(steps.tolist(), entropy.tolist(), strict=True):
        row = {"step": step, "entropy/seq_mean": h}
        if step % 5 == 0:
            predicted = float(rng.normal(-0.02, 0.01))
            measured = 0.5 * predicted + rng.normal(0, 1e-3)
            param = measured + float(rng.normal(0, 1e-5))  # the parameter-space prediction: first-order exact
            parts = {"pos_adv_S_gt_N": 0.6, "pos_adv_S_lt_N": 0.05, "neg_adv_S_gt_N": 0.05, "neg_adv_S_lt_N": 0.3}
            row |= {"dynamics/predicted_dH": predicted, "dynamics/measured_dH": measured}
            row |= {"dynamics/predicted_dH_param": param, "dynamics/dH_param/other": 0.0}
            row |= {f"dynamics/dH_param/{name}": share * param for name, share in parts.items()}
        rows.append(row)
    curve = []
    for step, h in zip(steps[1::2].tolist(), entropy[1::2].tolist(), strict=True):
        accuracy = 0.9 - 0.25 * float(np.exp(h)) + float(rng.normal(0, 0.003)) + late_slope * max(step - 20, 0)
        curve.append(
            {
                "step": step,
                "benchmark": "arithmetic",
                "avg@k": accuracy,
                "avg@k_se": 0.001,
                "k": 4,
                "num_problems": 16,
                "pass@k": {"1": accuracy, "4": min(1.0, 2 * accuracy)},
                "eval_entropy": h,
            }
        )
    (run_dir / "final").mkdir(parents=True)  # a finished run
    rewrite_rows(run_dir / "metrics.jsonl", rows)
    rewrite_rows(run_dir / "curve.jsonl", curve)
    (run_dir / "entropy_rl_config.json").write_text(json.dumps({"regularizer": method, "seed": seed}))
    return RunResult(method, seed, load_run(run_dir), "trained", 10.0, 5.0)


def test_page_states_collapse_tested_differences_and_the_early_prediction(tmp_path):
    # GRPO collapses (1.0 -> ~0.2 nats); the other method holds entropy at ~0.6 and so stays less accurate on the law.
    argv = ["--config", CONFIG, "--methods", "none,clip_cov", "--steps", "40", "--save_steps", "2"]
    study, data = load_study(build_parser().parse_args([*argv, "--doc_dir", str(tmp_path / "docs")]))
    results = [
        synthetic_run(tmp_path / method / f"seed{seed}", method, seed, floor)
        for method, floor in (("none", 0.2), ("clip_cov", 0.6))
        for seed in range(3)
    ]
    page = write_page(study, data, [], results, 16, argv, 60.0).read_text()
    assert "GRPO (`none`) collapsed: it lost at least 70% of its starting entropy" in page
    assert "`clip_cov` vs `none`: final entropy **higher**" in page
    assert "final avg@32 **lower**" in page
    assert "1 of 1 methods ended with significantly higher entropy than GRPO and 0 of 1" in page
    assert "| method | seeds | std of final avg@32 | evaluation s.e. |" in page
    assert "Holm p = " in page and "after Holm's correction across the 1 methods" in page
    assert "**strong**" in page  # measured = half the prediction
    assert "Parameter-space prediction `dynamics/predicted_dH_param`" in page
    assert "| `none` | 24 | 0.98 | 0.97 | 1.00 | 1.00 | strong |" in page  # both predictions, per step and window
    assert "The law fitted on GRPO's runs puts its ceiling" in page
    # clip_cov holds entropy at 0.6, so on the law it stays well under GRPO's ceiling (accuracy at H = 0)
    assert "minus GRPO's ceiling (t-test with the seeds' and the fit's standard errors" in page
    assert "`clip_cov` -0." in page and "**below** the ceiling" in page
    assert "one law fitted to all 3 runs' points: " in page and ", 95 % interval [" in page
    assert "- Over the last third of training (the 7 checkpoints from step 28 to 40) GRPO's avg@32 changed by " in page
    assert "| method | measured | `pos_adv_S_gt_N`" in page  # the attribution table
    assert "Fitted on the first 25% of each run's points (5 of 20)" in page
    assert "(median over 6 runs; quartiles " in page  # the early prediction's error with its spread
    assert "weak" not in page.split("## Entropy and accuracy")[0]  # the law holds by construction
    assert "consistent with coefficients shared" in page
    for name in FIGURES:
        assert (tmp_path / "docs" / name).read_bytes().startswith(PNG_MAGIC), name


@pytest.mark.parametrize(
    ("late_slope", "late_checkpoints", "verdict"),
    [
        (0.0, True, "**a plateau**: the interval's upper end is below the 0.03"),
        (0.004, True, "**not a plateau**: accuracy was still rising"),
        (
            0.0,
            False,
            "- Plateau: cannot tell, the last third of training holds 0 checkpoint(s) per run, fewer than the 4",
        ),
    ],
)
def test_plateau_is_the_last_third_s_gain_against_the_planned_difference(
    tmp_path, late_slope, late_checkpoints, verdict
):
    argv = ["--config", CONFIG, "--methods", "none,clip_cov", "--steps", "40", "--save_steps", "2"]
    study, data = load_study(build_parser().parse_args([*argv, "--doc_dir", str(tmp_path / "docs")]))
    results = [
        synthetic_run(tmp_path / method / f"seed{seed}", method, seed, 0.2, late_slope)
        for method in ("none", "clip_cov")
        for seed in range(3)
    ]
    if not late_checkpoints:  # the last third (from step 27) evaluated nowhere
        for result in results:
            result.run.curve[:] = [row for row in result.run.curve if row["step"] < 27]
    page = write_page(study, data, [], results, 16, argv, 60.0).read_text()
    assert verdict in page


def test_workers_split_the_runs_and_the_parent_writes_one_page(tmp_path):
    out = tmp_path / "runs"
    argv = ["--quick", "--steps", "2", "--methods", "none,clip_cov", "--output", str(out), "--workers", "2"]
    assert main(argv) == 0
    for method in ("none", "clip_cov"):
        assert (out / method / "seed0" / "final" / "model.safetensors").exists()
    page = (out / "docs" / "toy.md").read_text()
    assert "`clip_cov`" in page and "`none`" in page
    # The workers trained both runs in this invocation: the time table says so, not "skipped".
    assert "| `none` | 0 | trained |" in page and "| `clip_cov` | 0 | trained |" in page
    assert "skipped" not in page


def test_dashed_flags_are_hidden_aliases_of_the_snake_case_ones():
    parser = build_parser()
    dashed = parser.parse_args(["--save-steps", "3", "--eval-problems", "8", "--doc-dir", "d", "--dry-run"])
    snake = parser.parse_args(["--save_steps", "3", "--eval_problems", "8", "--doc_dir", "d", "--dry_run"])
    assert vars(dashed) == vars(snake)
    assert (snake.save_steps, snake.eval_problems, snake.doc_dir, snake.dry_run) == (3, 8, "d", True)
    usage = parser.format_help()
    assert "--save_steps" in usage and "--dynamics_every" in usage and "--save-steps" not in usage


def test_each_worker_gets_its_runs_whatever_the_spelling(tmp_path, capsys):
    argv = ["--quick", "--workers", "2", "--doc-dir", "docs", "--methods=none,clip_cov,kl_cov", "--runs=none:0"]
    commands = worker_commands(argv, [["none:0", "kl_cov:0"], ["clip_cov:0"]])
    study = ["--quick", "--doc-dir", "docs", "--methods=none,clip_cov,kl_cov"]  # the parent's study, as it is
    assert [command[2:] for command in commands] == [
        ["entropy_rl.cli", "study", *study, "--runs", "none:0,kl_cov:0"],
        ["entropy_rl.cli", "study", *study, "--runs", "clip_cov:0"],
    ]
    out = str(tmp_path / "runs")
    assert main(["--quick", "--output", out, "--runs", "none:0,steer:3"]) == 2
    assert "invalid config: runs='none:0,steer:3'; allowed: comma-separated method:seed runs of the study" in (
        capsys.readouterr().err
    )
    assert main(["--quick", "--output", out, "--runs", "none:0", "--workers", "2"]) == 2
    assert "workers=2; allowed: 1 with --runs" in capsys.readouterr().err
