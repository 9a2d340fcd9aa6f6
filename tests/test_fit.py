"""entropy_rl.fit, entropy_rl.plot and their commands on synthetic run directories (no trainer, evaluator or GPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from entropy_rl.cli import main as cli_main
from entropy_rl.cli.fit import main
from entropy_rl.cli.plot import main as plot_main
from entropy_rl.fit import LawFitError, band, fit_early, fit_joint, fit_law, load_pairs, moving_average, predict
from entropy_rl.plot import plot_run
from entropy_rl.rundir import RunDirError, load_run

A, B = 0.25, 0.9  # true law: R = 0.9 - 0.25 exp(H), ceiling 0.65
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def entropy_path(steps: np.ndarray, start: float = 1.2, floor: float = 0.2, tau: float = 30.0) -> np.ndarray:
    """Entropy collapsing exponentially, as in a GRPO run without entropy control."""
    return floor + (start - floor) * np.exp(-steps / tau)


def law(H: np.ndarray, a: float = A, b: float = B) -> np.ndarray:
    return b - a * np.exp(H)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_run(
    root: Path,
    name: str,
    *,
    steps: int = 120,
    noise: float = 0.01,
    seed: int = 0,
    a: float = A,
    b: float = B,
    curve_every: int | None = 10,
    regularizer: str | None = "none",
    tau: float = 30.0,
) -> Path:
    """A run directory: metrics.jsonl with the law's reward per step, curve.jsonl with two benchmarks that follow it."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    s = np.arange(1, steps + 1)
    H = entropy_path(s, tau=tau)
    reward = law(H, a, b) + rng.normal(0, noise, len(s))
    write_jsonl(
        run / "metrics.jsonl",
        [
            {"step": int(t), "entropy/seq_mean": h, "entropy/token_mean": h * 0.9, "reward": r, "loss": 0.1}
            for t, h, r in zip(s, H, reward, strict=True)
        ],
    )
    if curve_every:
        rows = []
        for t in [0, *range(curve_every, steps + 1, curve_every)]:  # step 0: base model, no metrics row
            h = float(entropy_path(np.array(t), tau=tau))
            for bench, offset in (("math500", 0.02), ("aime", -0.02)):
                acc = float(law(h, a, b) + offset + rng.normal(0, noise))
                rows.append(
                    {
                        "step": t,
                        "benchmark": bench,
                        "train_entropy": h,
                        "eval_entropy": h,
                        "avg@k": acc,
                        "pass@k": {"1": acc, "8": min(1.0, acc + 0.2)},
                        "k": 8,
                    }
                )
        write_jsonl(run / "curve.jsonl", rows)
    if regularizer is not None:
        (run / "entropy_rl_config.json").write_text(json.dumps({"regularizer": regularizer, "seed": seed}))
    return run


# ------------------------------------------------------------------------------------------------ fitting
def test_fit_law_recovers_known_parameters_with_t_intervals():
    rng = np.random.default_rng(1)
    H = entropy_path(np.arange(1, 81))
    R = law(H) + rng.normal(0, 0.01, H.size)
    fit = fit_law(H, R)
    assert fit.a == pytest.approx(A, abs=0.01)
    assert fit.b == pytest.approx(B, abs=0.02)
    assert fit.ceiling == pytest.approx(B - A, abs=0.02)
    assert fit.r2 > 0.98
    assert fit.rmse == pytest.approx(0.01, rel=0.3)
    assert fit.n == 80
    for ci, truth in ((fit.a_ci, A), (fit.b_ci, B), (fit.ceiling_ci, B - A)):
        assert ci[0] < truth < ci[1]
    assert predict(fit, np.array([0.0, 1.0])) == pytest.approx([fit.b - fit.a, fit.b - fit.a * math.e])
    # The band at H = 0 is the ceiling's interval.
    low, high = band(fit, np.array([0.0]))
    assert (low[0], high[0]) == pytest.approx(fit.ceiling_ci)


def _binomial_ok(hits: int, trials: int, p: float = 0.95) -> bool:
    """Within 3 binomial standard errors of the nominal coverage (a false alarm about 1 time in 370)."""
    return abs(hits / trials - p) <= 3 * math.sqrt(p * (1 - p) / trials)


@pytest.mark.parametrize("n", [5, 12, 40])
def test_intervals_reach_nominal_coverage_on_synthetic_laws(n):
    # 1,000 simulated runs of a known law with Gaussian noise: a nominal 95 % interval must hold the truth 95 % of the
    # time within binomial error, for a, b, the ceiling b - a and the curve at an observed entropy.
    rng = np.random.default_rng(n)
    H = entropy_path(np.linspace(1, 120, n))
    trials, hits = 1000, np.zeros(4, dtype=int)
    for _ in range(trials):
        fit = fit_law(H, law(H) + rng.normal(0, 0.02, n))
        low, high = band(fit, H[n // 2 : n // 2 + 1])
        truths = ((fit.a_ci, A), (fit.b_ci, B), (fit.ceiling_ci, B - A), ((low[0], high[0]), law(H[n // 2])))
        hits += [ci[0] <= truth <= ci[1] for ci, truth in truths]
    assert all(_binomial_ok(int(h), trials) for h in hits), hits / trials


def test_fit_law_is_exact_on_noiseless_data():
    H = np.array([1.0, 0.8, 0.5, 0.3])
    fit = fit_law(H, law(H))
    assert (fit.a, fit.b) == pytest.approx((A, B))
    assert fit.rmse == pytest.approx(0, abs=1e-12)
    assert fit.ceiling_ci == pytest.approx((B - A, B - A))  # no residual: no uncertainty


def test_fit_early_predicts_later_steps():
    rng = np.random.default_rng(2)
    H = entropy_path(np.arange(1, 201))
    R = law(H) + rng.normal(0, 0.005, H.size)
    prediction = fit_early(H, R, 0.2)
    assert (prediction.n_fit, prediction.n_test) == (40, 160)
    assert prediction.rmse < 0.015
    assert prediction.fit.a == pytest.approx(A, abs=0.02)


def test_fit_joint_shares_parameters_across_runs():
    rng = np.random.default_rng(3)
    runs = []
    for tau in (20.0, 80.0):  # e.g. no control vs an entropy regularizer: different paths, same law
        H = entropy_path(np.arange(1, 101), tau=tau)
        runs.append((H, law(H) + rng.normal(0, 0.01, H.size)))
    joint = fit_joint(runs)
    assert (joint.fit.a, joint.fit.b) == pytest.approx((A, B), abs=0.02)
    assert joint.fit.n == 200
    assert joint.rmse_ratio < 1.05
    assert joint.p_value > 0.01
    # A run on a different law makes the shared fit clearly worse.
    H = entropy_path(np.arange(1, 101))
    other = fit_joint([runs[0], (H, law(H, a=0.4, b=1.1))])
    assert other.rmse_ratio > 2 and other.p_value < 1e-6


def test_moving_average_is_trailing():
    assert moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2) == pytest.approx([1.0, 1.5, 2.5, 3.5])
    assert moving_average(np.array([1.0, 5.0]), 1) == pytest.approx([1.0, 5.0])


# ------------------------------------------------------------------------------------------------ loading runs
def test_load_pairs_reads_curve_and_metrics(tmp_path):
    run = make_run(tmp_path, "r")
    pairs = load_pairs(run)  # curve.jsonl present: avg@k, mean of both benchmarks
    assert pairs.metric == "avg@k" and pairs.benchmark == "mean of aime, math500"
    assert pairs.steps.tolist() == list(range(10, 121, 10))
    assert pairs.unmatched == 1 and "1 curve.jsonl steps have no metrics.jsonl row" in pairs.source
    assert pairs.label == "none seed 0"
    one = load_pairs(run, metric="pass@8", benchmark="math500")
    assert one.benchmark == "math500" and one.R.max() <= 1.0
    by_row_k = load_pairs(run, metric="pass@k", benchmark="math500")  # each row's own k (8)
    np.testing.assert_allclose(by_row_k.R, one.R)
    reward = load_pairs(run, metric="reward", smooth=5)
    assert reward.benchmark is None and len(reward.R) == 120


def test_load_pairs_drops_nan_rows_and_says_how_many(tmp_path):
    run = make_run(tmp_path, "r", curve_every=None, regularizer=None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[3]["reward"] = None
    rows[7]["entropy/seq_mean"] = float("nan")  # Python's json writes NaN; readers accept it
    del rows[9]["reward"]
    write_jsonl(run / "metrics.jsonl", rows)
    pairs = load_pairs(run)
    assert pairs.metric == "reward" and pairs.dropped == 3 and len(pairs.R) == 117
    assert "3 of 120 steps dropped" in pairs.source
    assert pairs.label == "r"  # no config: the directory name


def test_last_row_of_a_repeated_step_wins(tmp_path):
    run = make_run(tmp_path, "r", curve_every=None)
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "entropy/seq_mean": 9.0, "reward": 0.0}) + "\n")
    loaded = load_run(run)
    assert len(loaded.metrics) == 120 and loaded.column("entropy/seq_mean")[4] == 9.0


# ------------------------------------------------------------------------------------------------ errors
def test_error_too_few_points():
    with pytest.raises(LawFitError, match="2 point.*at least 3"):
        fit_law(np.array([1.0, 0.5]), np.array([0.1, 0.2]))


def test_error_constant_entropy():
    with pytest.raises(LawFitError, match="entropy is constant.*H = 0.7.*zero variance"):
        fit_law(np.full(10, 0.7), np.linspace(0, 1, 10))


def test_error_nan_in_direct_call():
    with pytest.raises(LawFitError, match="1 of 4 points are NaN/inf"):
        fit_law(np.array([1.0, 0.5, np.nan, 0.2]), np.array([0.1, 0.2, 0.3, 0.4]))


def test_error_too_few_left_after_dropping_nan(tmp_path, capsys):
    run = make_run(tmp_path, "r", curve_every=None, steps=5)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows[:3]:
        row["reward"] = None
    write_jsonl(run / "metrics.jsonl", rows)
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entropy-rl fit: error: ")
    assert "3 of 5 steps dropped for a null/NaN/inf" in err and "2 point(s)" in err


def test_error_every_step_nan(tmp_path):
    run = make_run(tmp_path, "r", curve_every=None, steps=4)
    write_jsonl(run / "metrics.jsonl", [{"step": i, "entropy/seq_mean": None, "reward": 0.1} for i in range(4)])
    with pytest.raises(LawFitError, match="4 of 4 steps dropped.*no step has both H and R"):
        load_pairs(run)


def test_error_missing_files_and_keys(tmp_path):
    with pytest.raises(RunDirError, match="run directory not found"):
        load_run(tmp_path / "nope")
    run = make_run(tmp_path, "r", curve_every=None)
    with pytest.raises(LawFitError, match=r"curve.jsonl: file not found.*--metric reward"):
        load_pairs(run, metric="avg@k")
    with pytest.raises(RunDirError, match=r"metrics.jsonl: key 'accuracy' is in no row; keys present: .*reward"):
        load_pairs(run, metric="accuracy")
    with pytest.raises(RunDirError, match=r"key 'entropy/foo' is in no row"):
        load_pairs(run, entropy_key="entropy/foo")
    (run / "metrics.jsonl").unlink()
    with pytest.raises(RunDirError, match=r"metrics.jsonl: file not found"):
        load_run(run)


def test_error_bad_values_name_file_step_and_key(tmp_path):
    run = make_run(tmp_path, "r")
    with pytest.raises(LawFitError, match=r"no rows for benchmark 'gsm8k'; benchmarks present: math500, aime"):
        load_pairs(run, benchmark="gsm8k")
    with pytest.raises(LawFitError, match=r"has a value for pass@4"):
        load_pairs(run, metric="pass@4")
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 500, "entropy/seq_mean": 0.3, "reward": "high"}) + "\n")
    with pytest.raises(RunDirError, match=r"metrics.jsonl step 500 key 'reward': expected a number, got 'high'"):
        load_pairs(run, metric="reward")
    write_jsonl(run / "metrics.jsonl", [{"step": "one", "reward": 1}, {"step": 2}])
    with pytest.raises(RunDirError, match=r"key 'step' must be an integer, got 'one'"):
        load_run(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl:2: not valid JSON"):
        load_run(run)


def test_error_bad_fit_fraction(tmp_path, capsys):
    H = entropy_path(np.arange(1, 11))
    with pytest.raises(LawFitError, match="first 0.2 of 10 points is 2"):
        fit_early(H, law(H), 0.2)
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--fit_fraction", "1.5"])
    assert "strictly between 0 and 1" in capsys.readouterr().err


def test_error_joint_needs_two_runs_and_one_metric(tmp_path, capsys):
    with pytest.raises(LawFitError, match="at least 2 runs"):
        fit_joint([(np.array([1.0, 0.5, 0.2]), np.array([0.1, 0.2, 0.3]))])
    with_curve = make_run(tmp_path, "a")
    without = make_run(tmp_path, "b", curve_every=None)
    assert main([str(with_curve), str(without), "--joint"]) == 2
    assert "--joint needs the same R in every run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CLI and plots
def test_fit_flags_are_snake_case_and_the_dashed_spelling_still_works():
    from entropy_rl.cli.fit import build_parser

    snake = ["r", "--entropy_key", "entropy/token_mean", "--entropy_window", "3", "--fit_fraction", "0.5"]
    dashed = ["r", "--entropy-key", "entropy/token_mean", "--entropy-window", "3", "--fit-fraction", "0.5"]
    assert build_parser().parse_args(snake) == build_parser().parse_args(dashed)
    assert "--fit-fraction" not in build_parser().format_help()


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_cli_single_run_writes_json_next_to_the_run(tmp_path, capsys):
    run = make_run(tmp_path, "run1", regularizer="clip_cov", seed=7)
    assert main([str(run), "--benchmark", "math500", "--fit_fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "clip_cov seed 7" in out and "ceiling" in out and "predicting the other 6" in out
    report = json.loads((run / "fit.json").read_text())
    assert report["law"] == "R = b - a * exp(H)" and report["joint"] is None
    (entry,) = report["runs"]
    assert entry["label"] == "clip_cov seed 7" and entry["benchmark"] == "math500" and entry["metric"] == "avg@k"
    fit = entry["fit"]
    assert set(fit) == {"a", "b", "ceiling", "r2", "rmse", "n", "h_range", "a_ci95", "b_ci95", "ceiling_ci95"}
    assert fit["a"] == pytest.approx(A, abs=0.05) and fit["ceiling"] == pytest.approx(B - A + 0.02, abs=0.05)
    assert entry["prediction"]["n_fit"] == 6 and entry["prediction"]["rmse"] < 0.05
    assert cli_main(["fit", str(run), "--metric", "reward", "--output", str(run / "reward.json")]) == 0
    assert json.loads((run / "reward.json").read_text())["runs"][0]["fit"]["n"] == 120


def test_cli_joint_plot_and_output_path(tmp_path, capsys):
    runs = [
        make_run(tmp_path / "runs", "a", curve_every=None, tau=20, regularizer="none", seed=1),
        make_run(tmp_path / "runs", "b", curve_every=None, tau=80, regularizer="clip_b+steer", seed=1),
    ]
    assert main([*map(str, runs), "--joint", "--smooth", "3", "--plot"]) == 0
    report = json.loads((tmp_path / "runs" / "fit.json").read_text())  # several runs: their common directory
    assert [r["label"] for r in report["runs"]] == ["none seed 1", "clip_b+steer seed 1"]
    joint = report["joint"]
    assert joint["fit"]["a"] == pytest.approx(A, abs=0.03) and joint["rmse_ratio"] < 1.1
    assert set(joint) == {"fit", "separate_rmse", "separate_r2", "rmse_ratio", "per_run", "f_test"}
    assert len(report["plots"]) == 3
    for path in report["plots"]:
        assert_png(Path(path))
    out = tmp_path / "elsewhere" / "report.json"
    assert main([*map(str, runs), "--output", str(out)]) == 0
    a_ci95 = json.loads(out.read_text())["runs"][0]["fit"]["a_ci95"]
    assert a_ci95[0] < json.loads(out.read_text())["runs"][0]["fit"]["a"] < a_ci95[1]
    assert "joint fit" in capsys.readouterr().out


def test_plot_cli_and_plot_run(tmp_path, capsys):
    runs = [make_run(tmp_path, "a", seed=1), make_run(tmp_path, "b", seed=1, tau=60)]  # same label twice
    out = tmp_path / "figs"
    assert plot_main([*map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["entropy_vs_step.png", "law_fit.png", "performance_vs_step.png"]
    for path in printed:
        assert_png(Path(path))
    assert load_run(runs[0]).label == "none seed 1"
    path = plot_run(runs[0])
    assert path == runs[0] / "entropy_reward.png"
    assert_png(path)


def test_plot_cli_draws_runs_too_short_to_fit(tmp_path, capsys):
    run = make_run(tmp_path, "short", steps=20, curve_every=10)  # two evaluated steps with metrics rows
    assert plot_main([str(run)]) == 0
    captured = capsys.readouterr()
    assert "no fitted curve" in captured.err and "2 point(s)" in captured.err
    assert_png(run / "law_fit.png")
    assert plot_main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"entropy-rl plot: error: {tmp_path / 'missing'}: run directory not found\n"


# ------------------------------------------------------------------------------------------------ edge cases
@pytest.fixture()
def figures(monkeypatch):
    """The Figure objects the plotting functions save, by file name (they are also written as usual)."""
    import entropy_rl.plot as plot_module

    saved = {}
    original = plot_module.save_figure

    def capture(fig, path):
        saved[Path(path).name] = fig
        return original(fig, path)

    monkeypatch.setattr(plot_module, "save_figure", capture)
    return saved


def test_empty_curve_file_is_one_line_in_fit_and_plot(tmp_path, capsys):
    run = make_run(tmp_path, "run", curve_every=None)
    (run / "curve.jsonl").write_text("")
    expected = f"{run / 'curve.jsonl'}: no rows (no checkpoint evaluated yet: run `entropy-rl eval --run`, or use "
    for command, entry in (("fit", main), ("plot", plot_main)):
        assert entry([str(run)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"entropy-rl {command}: error: {expected}") and err.count("\n") == 1, err


def test_fit_warns_below_the_documented_minimum_number_of_points(tmp_path, capsys):
    from entropy_rl.fit import MIN_RELIABLE_POINTS

    docs = (Path(__file__).parents[1] / "docs" / "fit.md").read_text()
    assert f"fewer than {MIN_RELIABLE_POINTS} points" in docs  # the minimum is documented, with its reason
    few = make_run(tmp_path, "few", steps=10 * (MIN_RELIABLE_POINTS - 1), curve_every=10)  # one point short
    enough = make_run(tmp_path, "enough", steps=10 * MIN_RELIABLE_POINTS, curve_every=10)
    assert main([str(few), "--benchmark", "math500"]) == 0
    captured = capsys.readouterr()
    warning = f"only {MIN_RELIABLE_POINTS - 1} points (fewer than {MIN_RELIABLE_POINTS}): R2 and the 95% intervals"
    assert warning in captured.out and f"entropy-rl fit: warning: none seed 0: {warning}" in captured.err
    assert main([str(enough), "--benchmark", "math500"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.out + captured.err


def _filled_x_range(ax) -> tuple[float, float] | None:
    from matplotlib.collections import FillBetweenPolyCollection, PolyCollection

    bands = [c for c in ax.collections if isinstance(c, PolyCollection | FillBetweenPolyCollection)]
    if not bands:
        return None
    xs = np.concatenate([path.vertices[:, 0] for band in bands for path in band.get_paths()])
    return float(xs.min()), float(xs.max())


def test_fit_plot_draws_the_band_out_to_the_ceiling(tmp_path, figures):
    run = make_run(tmp_path, "run")
    assert main([str(run), "--benchmark", "math500", "--plot"]) == 0
    (ax,) = figures["law_fit.png"].axes
    span = _filled_x_range(ax)
    assert span is not None and span[0] == pytest.approx(0.0)  # the band reaches H = 0, around the ceiling
    fit = json.loads((run / "fit.json").read_text())["runs"][0]["fit"]
    assert span[1] == pytest.approx(fit["h_range"][1])


def test_band_at_zero_entropy_is_the_ceiling_interval():
    rng = np.random.default_rng(0)
    H = entropy_path(np.arange(1, 41))
    fit = fit_law(H, law(H) + rng.normal(0, 0.02, H.size))
    low, high = band(fit, np.array([0.0, 1.0]))
    assert (low[0], high[0]) == pytest.approx(fit.ceiling_ci)
    assert low[1] < predict(fit, 1.0) < high[1]


def test_plot_splits_reward_and_heldout_scores_and_warns(tmp_path, capsys, figures):
    evaluated = make_run(tmp_path, "evaluated", regularizer="none")  # R: avg@k of curve.jsonl
    reward_only = make_run(tmp_path, "reward_only", curve_every=None, regularizer="clip_cov")  # R: reward
    assert plot_main([str(evaluated), str(reward_only), "--out", str(tmp_path / "figs")]) == 0
    err = capsys.readouterr().err
    assert "entropy-rl plot: warning: the runs' R are different measures" in err
    assert "none seed 0: mean of aime, math500 avg@k" in err and "clip_cov seed 0: reward" in err
    for name in ("performance_vs_step.png", "law_fit.png"):
        labels = [ax.get_ylabel() for ax in figures[name].axes]
        assert len(labels) == 2 and "training reward (batch mean)" in labels, (name, labels)
    # Runs that measure the same thing share one axis and get no warning.
    figures.clear()
    assert plot_main([str(evaluated), str(make_run(tmp_path, "other", seed=2)), "--out", str(tmp_path / "f2")]) == 0
    assert "warning" not in capsys.readouterr().err and len(figures["performance_vs_step.png"].axes) == 1


def test_entropy_line_survives_alternating_null_steps(tmp_path, figures):
    run = make_run(tmp_path, "run", curve_every=None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows[::2]:
        row["entropy/seq_mean"] = row["entropy/token_mean"] = None  # e.g. steps whose batch was all padding
    write_jsonl(run / "metrics.jsonl", rows)
    assert plot_main([str(run), "--metric", "reward"]) == 0
    plot_run(run)
    for name, ax in (("entropy_vs_step.png", 0), ("entropy_reward.png", 0)):
        lines = figures[name].axes[ax].get_lines()
        assert lines and all(np.isfinite(line.get_ydata()).all() for line in lines)
        assert max(len(line.get_ydata()) for line in lines) == len(rows) // 2


def test_score_label_comes_from_the_metric_and_out_of_range_scores_are_rejected(tmp_path):
    from entropy_rl.plot import metric_label

    run = make_run(tmp_path, "run")
    assert metric_label(load_pairs(run, benchmark="math500")) == "math500 avg@k\n(fraction of samples correct)"
    assert metric_label(load_pairs(run, metric="pass@8", benchmark="math500")) == (
        "math500 pass@8\n(fraction of problems solved within 8 samples)"
    )
    assert metric_label(load_pairs(run, metric="reward")) == "training reward (batch mean)"
    rows = [json.loads(line) for line in (run / "curve.jsonl").read_text().splitlines()]
    rows[3]["avg@k"] = 55.0  # a percentage: not what the evaluator writes
    write_jsonl(run / "curve.jsonl", rows)
    with pytest.raises(LawFitError, match=r"step 10 benchmark 'aime' avg@k: 55.0; allowed: a fraction in \[0, 1\]"):
        load_pairs(run, benchmark="aime")


def test_ceiling_values_are_in_the_legend_outside_the_axes(tmp_path, figures):
    runs = [make_run(tmp_path, name, seed=i, tau=t) for i, (name, t) in enumerate((("a", 30), ("b", 60)))]
    assert main([*map(str, runs), "--benchmark", "math500", "--plot"]) == 0
    fig = figures["law_fit.png"]
    fig.draw_without_rendering()  # lays the figure out as saving it did
    (ax,) = fig.axes
    assert not ax.texts  # no note inside the axes, where it would cross a curve
    legend = ax.get_legend()
    texts = [text.get_text() for text in legend.get_texts()]
    assert sum(text.startswith("ceiling b - a = ") and text.endswith("at H = 0") for text in texts) == 2
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())
