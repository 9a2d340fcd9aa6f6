"""The per-run summaries a study page is computed from (<doc_dir>/<name>_runs/) and `entropy-rl study
--from_summaries`, which renders the page from them alone: the same page as from the run directories."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from test_study import CONFIG, FIGURES, mini_argv, synthetic_run

from entropy_rl.cli.study import build_parser, load_study, main
from entropy_rl.jsonl import read_rows
from entropy_rl.study.page import write_page
from entropy_rl.study.plan import plan_runs
from entropy_rl.study.spec import FitSpec
from entropy_rl.study.summary import RECORD_FILE, STATUS, SUMMARY_KEYS, read_summaries, summary_keys, write_summaries

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

SYNTHETIC = ["--config", CONFIG, "--methods", "none,clip_cov", "--steps", "40", "--save_steps", "2", "--seeds", "3"]


def comparable(page: str, summaries: Path, runs: Path) -> str:
    """The page without what legitimately differs between a render from the runs and one from their summaries: the
    "this invocation" column, this invocation's time, and the directory a fit's note names."""
    before, rest = page.split("## Time")
    time, after = rest.split("## Reproduce")
    time = re.sub(r"This invocation took [\d.]+ min", "This invocation took (time)", time)
    time = re.sub(r"^(\| `[^`]+` \| \d+ \| )[^|]+( \|)", r"\1(status)\2", time, flags=re.MULTILINE)
    return f"{before}## Time{time}## Reproduce{after}".replace(str(summaries), str(runs))


def synthetic_study(tmp_path: Path) -> tuple[list[str], Path]:
    """A study of 2 methods x 3 synthetic runs (tests/test_study.py), its page written and its summaries with it."""
    argv = [*SYNTHETIC, "--doc_dir", str(tmp_path / "docs"), "--output", str(tmp_path / "runs")]
    study, data = load_study(build_parser().parse_args(argv))
    results = [
        synthetic_run(tmp_path / "synthetic" / method / f"seed{seed}", method, seed, floor)
        for method, floor in (("none", 0.2), ("clip_cov", 0.6))
        for seed in range(3)
    ]
    for result in results:
        for row in result.run.metrics:  # a logit-space prediction on every step, as the trainer logs it: not read
            row.setdefault("dynamics/predicted_dH", -0.01)
        # each run started half an hour before its last evaluation
        config = result.run.path / "entropy_rl_config.json"
        os.utime(config, (config.stat().st_mtime - 1800,) * 2)
    write_summaries(study, results, argv, data, 16)
    write_page(study, data, plan_runs(study, 16), results, 16, argv, 60.0)
    return argv, study.doc_dir


def test_the_page_from_the_summaries_is_the_page_from_the_runs(tmp_path, capsys):
    argv, docs = synthetic_study(tmp_path)
    from_runs = (docs / "toy.md").read_text()
    figures = {name: (docs / name).read_bytes() for name in FIGURES}
    for path in (docs / "toy_runs").rglob("*"):  # as a checkout leaves them: file times are not kept
        os.utime(path)
    # The re-render's own command line differs from the study's: the page shows the study's, from study.json.
    assert main(["--config", CONFIG, "--doc_dir", str(docs), "--from_summaries"]) == 0
    assert "toy_runs" in capsys.readouterr().out
    from_summaries = (docs / "toy.md").read_text()
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory made
    assert from_summaries.count(f"| {STATUS} |") == 6
    assert comparable(from_summaries, docs / "toy_runs", tmp_path / "synthetic") == comparable(
        from_runs, docs / "toy_runs", tmp_path / "synthetic"
    )
    assert "Wall clock from the first run's start to the last evaluation: 30.0 min." in from_summaries
    assert "## Findings" in from_summaries and "**strong**" in from_summaries  # the findings, compared above
    rerender = f"`entropy-rl study {' '.join(argv)} --from_summaries` re-renders the page"
    assert "per-run summaries this page was computed from are in `toy_runs/`" in from_summaries
    assert rerender in from_summaries
    assert {name: (docs / name).read_bytes() for name in FIGURES} == figures


def test_a_missing_summary_is_a_config_error_naming_it(tmp_path, capsys):
    argv, docs = synthetic_study(tmp_path)
    shutil.rmtree(docs / "toy_runs" / "clip_cov" / "seed2")
    assert main([*argv, "--from_summaries"]) == 2
    err = capsys.readouterr().err
    assert f"{docs / 'toy_runs' / 'clip_cov' / 'seed2'}: the summary of `clip_cov` seed 2 is missing " in err
    assert "entropy_rl_config.json, metrics.jsonl, study_time.json" in err
    (docs / "toy_runs" / RECORD_FILE).unlink()
    assert main([*argv, "--from_summaries"]) == 2
    assert f"{docs / 'toy_runs' / RECORD_FILE}: not found" in capsys.readouterr().err
    assert main([*argv, "--from_summaries", "--dry_run"]) == 2
    assert "not with --from_summaries" in capsys.readouterr().err


def test_a_law_fitted_to_a_training_metric_keeps_its_column(tmp_path):
    study, _ = load_study(build_parser().parse_args(SYNTHETIC))
    assert summary_keys(study) == SUMMARY_KEYS and "reward" not in SUMMARY_KEYS
    reward = dataclasses.replace(study, fit=FitSpec("reward", 0.25, 0.05))
    assert summary_keys(reward) == (*SUMMARY_KEYS, "reward")


# ------------------------------------------------------------------------------------------------ a trained study
@pytest.fixture(scope="module")
def miniature(tmp_path_factory) -> Path:
    """The --quick miniature on two methods, trained and evaluated once for this module."""
    tmp_path = tmp_path_factory.mktemp("study")
    assert main(mini_argv(tmp_path, "--methods", "none,clip_cov")) == 0
    return tmp_path


def test_a_trained_study_s_page_renders_again_from_its_summaries_alone(miniature, tmp_path):
    argv = mini_argv(miniature, "--methods", "none,clip_cov")
    docs = miniature / "docs"
    from_runs = (docs / "toy.md").read_text()
    (miniature / "runs").rename(tmp_path / "runs")  # not needed: moved out of reach
    try:
        assert main([*argv, "--from_summaries"]) == 0
    finally:
        (tmp_path / "runs").rename(miniature / "runs")
    from_summaries = (docs / "toy.md").read_text()
    assert comparable(from_summaries, docs / "toy_runs", miniature / "runs") == comparable(
        from_runs, docs / "toy_runs", miniature / "runs"
    )
    assert f"```bash\nentropy-rl study {' '.join(argv)}\n```" in from_summaries  # the study's command, not this one
    record = json.loads((docs / "toy_runs" / RECORD_FILE).read_text())
    assert record["argv"] == argv and record["problems"] == 16


def test_the_summary_keeps_only_what_the_page_reads(miniature):
    for method in ("none", "clip_cov"):
        run, summary = miniature / "runs" / method / "seed0", miniature / "docs" / "toy_runs" / method / "seed0"
        full, kept = read_rows(run / "metrics.jsonl"), read_rows(summary / "metrics.jsonl")
        assert [row["step"] for row in kept] == [row["step"] for row in full] == list(range(1, 7))
        assert {key for row in kept for key in row} <= set(SUMMARY_KEYS)
        assert kept == [{key: row[key] for key in SUMMARY_KEYS if key in row} for row in full]  # not rounded
        # a third of the run's even here, where every step measures the entropy change (8 of its 34 keys per row)
        assert (summary / "metrics.jsonl").stat().st_size < 0.4 * (run / "metrics.jsonl").stat().st_size
        assert (summary / "curve.jsonl").read_bytes() == (run / "curve.jsonl").read_bytes()
        assert sorted(path.name for path in summary.iterdir()) == [
            "curve.jsonl", "entropy_rl_config.json", "metrics.jsonl", "study_time.json"
        ]  # fmt: skip


def test_read_summaries_gives_the_study_as_run(miniature):
    found = read_summaries(miniature / "docs" / "toy_runs", Path(CONFIG).parent)
    assert (found.study.steps, found.study.save_steps, found.study.seeds) == (6, 2, 1)
    assert [(r.method, r.seed, r.status) for r in found.results] == [("none", 0, STATUS), ("clip_cov", 0, STATUS)]
    times = json.loads((miniature / "runs" / "none" / "seed0" / "study_time.json").read_text())
    assert (found.results[0].train_s, found.results[0].eval_s) == (times["train_s"], times["eval_s"])


def test_on_a_fresh_machine_the_study_restores_its_summarized_runs_and_trains_only_new_seeds(miniature, capsys):
    """No run directories, the committed summaries: a dry run lists the runs as summarized and writes nothing; the
    study restores them (nothing retrained or re-evaluated), trains only the seed added, and its page and summaries
    hold both."""
    argv = [*mini_argv(miniature, "--methods", "none"), "--seeds", "2"]
    docs, runs = miniature / "docs", miniature / "runs"
    kept = miniature.parent / f"{miniature.name}-kept"
    shutil.copytree(docs, kept / "docs")
    runs.rename(kept / "runs")
    before = (docs / "toy_runs" / "none" / "seed0" / "metrics.jsonl").read_bytes()
    try:
        capsys.readouterr()
        assert main([*argv, "--dry_run"]) == 0
        out = capsys.readouterr().out
        assert "none seed 0: summarized" in out and "none seed 1: new" in out
        assert f"no pilot: 1 evaluated run(s) of none under {runs} and the summaries in {docs / 'toy_runs'}" in out
        assert not runs.exists()
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "none seed 0: restored from its summary; 0 checkpoints evaluated now" in out
        assert "none seed 1: trained;" in out
        restored = runs / "none" / "seed0"
        assert (restored / "restored_from_summary.json").is_file() and not (restored / "final").exists()
        assert (docs / "toy_runs" / "none" / "seed0" / "metrics.jsonl").read_bytes() == before
        assert (docs / "toy_runs" / "none" / "seed1" / "metrics.jsonl").is_file()
        page = (docs / "toy.md").read_text()
        assert "| `none` | 0 | restored from its summary |" in page and "| `none` | 1 | trained |" in page
        assert "Setup: 1 methods × 2 seed(s)" in page
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(docs)
        (kept / "runs").rename(runs)
        (kept / "docs").rename(docs)
