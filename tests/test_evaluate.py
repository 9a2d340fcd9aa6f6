"""Evaluator: benchmark specs, metrics, entropy, sharding invariance (1 vs 2 processes) and resumable curves."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import save_tiny_model, two_cpu_processes

from entropy_rl.cli.eval import build_parser, main
from entropy_rl.evaluation.benchmarks import BENCHMARK_DIR, BenchmarkError, Sampling, load_benchmark, resolve_data_dir
from entropy_rl.evaluation.runner import EvalSettings, evaluate_checkpoint
from entropy_rl.evaluation.scoring import avg_at_k_standard_error, pass_at_k, score_records

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

CURVE_KEYS = {
    "step",
    "checkpoint",
    "benchmark",
    "train_entropy",
    "eval_entropy",
    "avg@k",
    "avg@k_se",
    "k",
    "pass@k",
    "mean_length",
    "num_problems",
}


# ------------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def sampled_spec(tmp_path_factory) -> Path:
    """The arithmetic benchmark, sampled: k=3 at temperature 1 with top-p 0.9."""
    spec = (BENCHMARK_DIR / "arithmetic.yaml").read_text()
    spec = spec.replace("name: arithmetic", "name: arithmetic_sampled")
    spec = spec.replace("sampling: {k: 1, temperature: 0.0}", "sampling: {k: 3, temperature: 1.0, top_p: 0.9}")
    path = tmp_path_factory.mktemp("specs") / "arithmetic_sampled.yaml"
    path.write_text(spec)
    return path


def _subprocess_env() -> dict[str, str]:
    # One thread per process: the 1- and 2-process runs then do bit-identical arithmetic.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------------ metrics


def test_pass_at_k_matches_brute_force():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))  # samples 0..c-1 are the correct ones
                brute = sum(any(i < c for i in subset) for subset in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 1000, 7, 400
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_score_records():
    records = [
        {"correct": [True, False, False, False], "num_tokens": [1, 2, 3, 4], "entropy": [0.1, 0.2, 0.3, 0.4]},
        {"correct": [False] * 4, "num_tokens": [5] * 4, "entropy": [1.0] * 4},
    ]
    for record in records:
        record["status"] = ["ok"] * 4
    metrics = score_records(records, pass_ks=[2, 8])
    assert metrics["k"] == 4 and metrics["num_problems"] == 2
    assert metrics["avg@k"] == pytest.approx(0.125)
    assert metrics["pass@k"] == pytest.approx({"1": 0.125, "2": 0.25, "4": 0.5})
    assert metrics["mean_length"] == pytest.approx(3.75)
    assert metrics["eval_entropy"] == pytest.approx(0.625)
    # Sampling error: problem 1 has p = 1/4, so (1/4)(3/4)/3 = 1/16; problem 2 none; sqrt(1/16) / 2 problems.
    assert metrics["avg@k_se"] == pytest.approx(0.125)


def test_avg_at_k_standard_error_matches_resampling():
    # Re-drawing every problem's k samples from its own observed rate: avg@k's spread is the reported error.
    rng = np.random.default_rng(0)
    rates = rng.uniform(0, 1, 200)
    records = [{"correct": list(rng.random(8) < rate)} for rate in rates]
    reported = avg_at_k_standard_error(records)
    observed = [np.mean([np.mean(rng.random(8) < rate) for rate in rates]) for _ in range(2000)]
    assert reported == pytest.approx(np.std(observed), rel=0.1)
    assert avg_at_k_standard_error([{"correct": [True]}]) is None  # one sample per problem: no estimate


# --------------------------------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize(
    ("name", "count", "sampling"),
    [
        ("gsm8k", 1319, Sampling(1, 0.0)),
        ("math500", 500, Sampling(1, 0.0)),
        ("aime24", 30, Sampling(16, 0.6)),
    ],
)
def test_shared_benchmark_files_load(name, count, sampling):
    data_dir = resolve_data_dir()
    if data_dir is None or not (data_dir / f"{name}_test.jsonl").is_file():
        pytest.skip(f"no {name}_test.jsonl in {resolve_data_dir()}: set ENTROPY_RL_DATA_DIR to the benchmark files")
    benchmark = load_benchmark(name)
    assert len(benchmark.problems) == count and benchmark.sampling == sampling
    assert len({p["id"] for p in benchmark.problems}) == count
    problem = benchmark.problems[0]
    assert problem["question"] in problem["prompt"] and "\\boxed{}" in problem["prompt"] and problem["gold"]
    assert len(load_benchmark(name, limit=5).problems) == 5


def test_arithmetic_benchmark_is_generated():
    benchmark = load_benchmark("arithmetic")
    assert benchmark.sampling == Sampling(1, 0.0) and not benchmark.chat_template
    assert len(benchmark.problems) == 256
    problem = benchmark.problems[0]
    assert problem["prompt"] == problem["question"] and problem["prompt"].endswith("=")
    a, b = problem["question"].rstrip("=").split("+")
    assert problem["gold"] == str(int(a) + int(b))


def test_data_dir_env_and_local_file_beats_hub(tmp_path, monkeypatch):
    rows = [{"question": "1+1?", "answer": "so\n#### 2"}, {"question": "2+2?", "answer": "#### 4"}]
    (tmp_path / "gsm8k_test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setenv("ENTROPY_RL_DATA_DIR", str(tmp_path))
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was asked for a local set"))
    benchmark = load_benchmark("gsm8k")
    assert benchmark.source == str(tmp_path / "gsm8k_test.jsonl")
    assert [p["gold"] for p in benchmark.problems] == ["2", "4"]
    assert [p["id"] for p in benchmark.problems] == ["0", "1"]


def test_hub_only_benchmark_fails_offline_with_a_clear_message(module_model_dir):
    result = subprocess.run(
        [sys.executable, "-m", "entropy_rl.cli", "eval", "--model", str(module_model_dir), "--benchmarks", "amc23"],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "math-ai/amc23" in result.stderr and "--data_file" in result.stderr
    assert result.stderr.startswith("entropy-rl eval: error: ")


def test_data_file_replaces_the_source(tmp_path):
    path = tmp_path / "amc.jsonl"
    path.write_text(json.dumps({"id": 7, "question": "What is 6*7?", "answer": 42.0}) + "\n")
    benchmark = load_benchmark("amc23", data_file=path)
    assert benchmark.source == str(path)
    assert benchmark.problems == [
        {"id": "7", "question": "What is 6*7?", "prompt": benchmark.problems[0]["prompt"], "gold": "42.0"}
    ]
    assert benchmark.sampling == Sampling(16, 0.6)


@pytest.mark.parametrize(
    ("lines", "line_number", "message"),
    [
        (['{"question": "q", "answer": "#### 1"}', "", '{"question": "q2", "answer": '], 3, "malformed JSON"),
        (['{"question": "q", "answer": "#### 1"}', '{"answer": "#### 2"}'], 2, "missing field 'question'"),
        (['{"question": "q", "answer": "no marker"}'], 1, "no gold answer"),
        (["[1, 2]"], 1, "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, capsys, lines, line_number, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkError, match=f"{path}:{line_number}: .*{message}"):
        load_benchmark("gsm8k", data_file=path)
    # The CLI reports it without a traceback, before loading any model.
    assert main(["--model", str(tmp_path), "--benchmarks", "gsm8k", "--data_file", str(path)]) == 2
    assert f"{path}:{line_number}" in capsys.readouterr().err


def test_spec_typos_are_rejected(tmp_path):
    spec = (BENCHMARK_DIR / "arithmetic.yaml").read_text().replace("temperature", "temprature")
    (tmp_path / "typo.yaml").write_text(spec)
    with pytest.raises(BenchmarkError, match="unknown keys.*temprature"):
        load_benchmark(tmp_path / "typo.yaml")
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'"):
        load_benchmark("nope")


# --------------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("sampling", [Sampling(1, 0.0), Sampling(1, 0.7, top_p=0.8)])
def test_generation_entropy_matches_teacher_forced_scoring(module_model_dir, sampling):
    """The entropies recorded while generating equal those of a teacher-forced pass over the same tokens."""
    from entropy_rl.evaluation.generation import (
        _completion_mask,
        _Draws,
        _generate_hf,
        load_checkpoint_model,
        rescore_entropies,
    )

    model, tokenizer = load_checkpoint_model(module_model_dir, "cpu")
    prompts = ["3+4=", "12+35=", "99+1="]
    completions, entropies = _generate_hf(model, tokenizer, _Draws(prompts, [1, 2, 3], sampling, max_new_tokens=6))
    mask = _completion_mask(completions, [tokenizer.eos_token_id])
    temperature = sampling.temperature or 1.0
    for prompt, row, keep, streamed in zip(prompts, completions, mask, entropies, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rescored = rescore_entropies(model, prompt_ids, row[keep].tolist(), temperature)
        assert streamed[keep].tolist() == pytest.approx(rescored, abs=1e-4)


@pytest.mark.parametrize("sampling", [Sampling(1, 0.7), Sampling(1, 1.3, top_p=0.8)])
def test_sampler_draws_from_the_tempered_nucleus(sampling):
    import torch

    from entropy_rl.evaluation.generation import _SampleAndMeasure

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])  # the last token is banned
    n = 20_000
    sampler = _SampleAndMeasure(sampling, range(n), torch.device("cpu"))  # one seed per row
    picks = sampler(None, logits.expand(n, -1)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=5).double() / n
    probs = torch.softmax(logits.double() / sampling.temperature, dim=-1)
    mass_above = torch.cumsum(probs, 0) - probs  # the logits are sorted, so this is the mass ranked above
    expected = torch.where(mass_above > sampling.top_p, 0.0, probs)
    assert frequencies.tolist() == pytest.approx((expected / expected.sum()).tolist(), abs=0.015)
    # The entropy is that of the whole tempered distribution, whatever top-p then keeps.
    entropy = -(probs[:4] * probs[:4].log()).sum().item()
    assert sampler.entropies[0].tolist() == pytest.approx([entropy] * n, abs=1e-5)


def test_samples_do_not_depend_on_batching_and_restore_train_mode(module_model_dir, sampled_spec, tmp_path):
    from entropy_rl.evaluation.generation import load_checkpoint_model

    model, tokenizer = load_checkpoint_model(module_model_dir, "cpu")
    model.train()
    benchmark = load_benchmark(sampled_spec, limit=8)
    outputs = {}
    for batch_size in (3, 48):
        out = tmp_path / f"bs{batch_size}"
        settings = EvalSettings(batch_size=batch_size, progress=False)
        metrics = evaluate_checkpoint(model, tokenizer, [benchmark], settings=settings, output_dir=out)
        outputs[batch_size] = _read_jsonl(out / "arithmetic_sampled.jsonl")
        assert model.training
    assert [r["samples"] for r in outputs[3]] == [r["samples"] for r in outputs[48]]
    assert metrics["arithmetic_sampled"]["k"] == 3 and set(metrics["arithmetic_sampled"]["pass@k"]) == {"1", "3"}
    record = outputs[3][0]
    assert set(record) >= {"id", "prompt", "gold", "samples", "extracted", "correct", "status", "num_tokens", "entropy"}
    assert len(record["samples"]) == len(record["correct"]) == 3
    assert len({tuple(r["samples"]) for r in outputs[3]}) > 1  # sampled, not collapsed to one output
    reseeded = evaluate_checkpoint(
        model, tokenizer, [benchmark], settings=EvalSettings(seed=1, progress=False), output_dir=tmp_path / "seed1"
    )
    assert reseeded["arithmetic_sampled"]["eval_entropy"] != metrics["arithmetic_sampled"]["eval_entropy"]


def test_greedy_accuracy_matches_the_toy_reference_implementation():
    """End to end on the shipped toy policy: our generation + grading agree with entropy_rl.toy.accuracy."""
    from entropy_rl.toy import accuracy, load_toy

    model, tokenizer = load_toy()
    benchmark = load_benchmark("arithmetic", limit=128)
    metrics = evaluate_checkpoint(model, tokenizer, [benchmark], settings=EvalSettings(progress=False))["arithmetic"]
    problems = [{"prompt": p["prompt"], "answer": p["gold"]} for p in benchmark.problems]
    reference = accuracy(model, tokenizer, problems, greedy=True)
    assert reference > 0.2
    # Up to two problems may differ: the toy reward wants the exact string ("47"), ours extracts the last number.
    assert metrics["avg@k"] == pytest.approx(reference, abs=2 / 128)
    assert 1 < metrics["mean_length"] < 5 and metrics["eval_entropy"] > 0


def test_vllm_flag_errors_clearly_when_unavailable(module_model_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --vllm may work here")
    assert main(["--model", str(module_model_dir), "--benchmarks", "arithmetic", "--vllm"]) == 2
    assert "--vllm needs the vllm package and a CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ data parallel


def test_one_and_two_processes_give_identical_results(module_model_dir, sampled_spec, tmp_path):
    common = ["eval", "--model", str(module_model_dir), "--benchmarks", f"arithmetic,{sampled_spec}"]
    common += ["--limit", "10", "--batch_size", "6", "--grading_workers", "1"]
    single = subprocess.run(
        [sys.executable, "-m", "entropy_rl.cli", *common, "--output_dir", str(tmp_path / "one"), "--no_progress"],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    launch = [*two_cpu_processes(_free_port()), "-m", "entropy_rl.cli"]
    double = subprocess.run(
        [*launch, *common, "--output_dir", str(tmp_path / "two")],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr
    assert "rank 0 of 2" in double.stderr  # the progress bar proves two processes shared the work
    for name in ("arithmetic", "arithmetic_sampled"):
        one, two = _read_jsonl(tmp_path / "one" / f"{name}.jsonl"), _read_jsonl(tmp_path / "two" / f"{name}.jsonl")
        assert len(one) == 10 and one == two
    assert json.loads((tmp_path / "one" / "summary.json").read_text()) == json.loads(
        (tmp_path / "two" / "summary.json").read_text()
    )
    assert double.stdout.count("arithmetic_sampled") == 1  # only rank 0 prints the table


# ------------------------------------------------------------------------------------------------------- curves


def test_curve_resumes_without_duplicates(tmp_path, sampled_spec, capsys):
    run = tmp_path / "run"
    for step, seed in [(1, 0), (2, 1)]:
        save_tiny_model(run / f"checkpoint-{step}", seed=seed)
    (run / "checkpoint-x").mkdir()  # not a step: ignored
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "entropy/seq_mean": 0.5}) + "\n" + json.dumps({"step": 2, "reward": 0.1}) + "\n"
    )
    argv = ["--run", str(run), "--benchmarks", f"arithmetic,{sampled_spec}", "--limit", "4", "--no_progress"]
    curve = run / "curve.jsonl"

    assert main(argv) == 0
    rows = _read_jsonl(curve)
    assert [(r["checkpoint"], r["benchmark"]) for r in rows] == [
        ("checkpoint-1", "arithmetic"),
        ("checkpoint-1", "arithmetic_sampled"),
        ("checkpoint-2", "arithmetic"),
        ("checkpoint-2", "arithmetic_sampled"),
    ]
    assert all(set(row) == CURVE_KEYS for row in rows)
    assert [r["train_entropy"] for r in rows] == [0.5, 0.5, None, None]
    assert {r["k"] for r in rows} == {1, 3} and all(r["num_problems"] == 4 for r in rows)
    assert (run / "eval" / "checkpoint-2" / "arithmetic_sampled.jsonl").is_file()
    content = curve.read_bytes()

    capsys.readouterr()
    assert main(argv) == 0  # everything done: nothing evaluated, nothing appended
    assert curve.read_bytes() == content
    assert "nothing to evaluate" in capsys.readouterr().out

    lines = content.splitlines(keepends=True)
    curve.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while appending row 3
    assert main(argv) == 0
    assert _read_jsonl(curve) == rows  # rows 3 and 4 recomputed, identically; no duplicate, no torn line


def test_run_without_checkpoints_is_an_error(tmp_path, capsys):
    assert main(["--run", str(tmp_path), "--benchmarks", "arithmetic"]) == 2
    assert f"entropy-rl eval: error: {tmp_path}: no checkpoint-<step>/ directories" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "missing"), "--benchmarks", "arithmetic"]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_flags_are_snake_case_and_the_dashed_spelling_still_works():
    snake = ["--model", "m", "--benchmarks", "b", "--batch_size", "8", "--data_dir", "d", "--pass_k", "2,4"]
    dashed = ["--model", "m", "--benchmarks", "b", "--batch-size", "8", "--data-dir", "d", "--pass-k", "2,4"]
    assert build_parser().parse_args(snake) == build_parser().parse_args(dashed)
    assert build_parser().parse_args([*snake, "--no-progress"]).no_progress
    help_text = build_parser().format_help()
    assert "--batch_size" in help_text and "--batch-size" not in help_text  # the alias is not documented


def test_empty_benchmark_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(BenchmarkError, match=f"no problems in {path}"):
        load_benchmark("gsm8k", data_file=path)


# ------------------------------------------------------------------------------------------- argument validation


def _no_expensive_work(monkeypatch) -> None:
    """Fail the test if the command gets as far as starting a grader or loading a model."""
    from entropy_rl.cli import eval as eval_cli

    def expensive(*args, **kwargs):
        pytest.fail("expensive work started before the flags were checked")

    monkeypatch.setattr(eval_cli, "Grader", expensive)
    monkeypatch.setattr(eval_cli, "load_checkpoint_model", expensive)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--grading_timeout", "0"], "invalid --grading_timeout 0.0; allowed: seconds > 0"),
        (["--grading-timeout", "nan"], "invalid --grading_timeout nan; allowed: seconds > 0"),
        (["--grading_workers", "0"], "invalid --grading_workers 0; allowed: an integer >= 1"),
        (["--max_new_tokens", "0"], "invalid --max_new_tokens 0; allowed: an integer >= 1"),
        (["--batch_size", "0"], "invalid --batch_size 0; allowed: an integer >= 1"),
        (["--batch-size", "-4"], "invalid --batch_size -4; allowed: an integer >= 1"),
        (["--limit", "0"], "invalid --limit 0; allowed: an integer >= 1"),
        (["--k", "0"], "invalid --k 0; allowed: an integer >= 1"),
        (["--temperature", "-1"], "invalid --temperature -1.0; allowed: a number >= 0 (0: greedy)"),
        (["--top_p", "1.5"], "invalid --top_p 1.5; allowed: a number in (0, 1]"),
        (["--pass_k", "0,2"], "invalid --pass_k 0,2; allowed: integers >= 1"),
        (
            ["--k", "8", "--temperature", "1", "--pass_k", "4,16"],
            "invalid --pass_k 16: benchmark arithmetic draws k=8 samples per problem; allowed: values <= 8",
        ),
    ],
)
def test_bad_eval_numbers_exit_2_with_one_line_before_any_work(tmp_path, capsys, monkeypatch, flags, expected):
    _no_expensive_work(monkeypatch)
    assert main(["--model", str(tmp_path), "--benchmarks", "arithmetic", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"entropy-rl eval: error: {expected}") and err.count("\n") == 1, err


def test_max_new_tokens_override_is_used_not_replaced_by_the_default(monkeypatch):
    from entropy_rl.evaluation import runner

    benchmark = load_benchmark("arithmetic", limit=1)
    seen = {}

    def record(model, tokenizer, bench, batch, **options):
        seen.update(options)
        return []

    monkeypatch.setattr(runner, "generate_records", record)
    runner._generate_my_share(None, None, benchmark, EvalSettings(max_new_tokens=0, progress=False), None)
    assert seen["max_new_tokens"] == 0  # the library passes what it is given; the command rejects 0


@pytest.mark.parametrize("model", ["/nonexistent/model", "./missing-model", "~/missing-model", "a/b/c"])
def test_missing_local_model_folder_is_named_as_such(capsys, monkeypatch, model):
    _no_expensive_work(monkeypatch)
    assert main(["--model", model, "--benchmarks", "arithmetic"]) == 2
    err = capsys.readouterr().err
    assert err == f"entropy-rl eval: error: invalid --model {model}: the local folder does not exist\n"


def test_missing_run_directory_is_named_before_any_work(tmp_path, capsys, monkeypatch):
    _no_expensive_work(monkeypatch)
    assert main(["--run", str(tmp_path / "nope"), "--benchmarks", "arithmetic"]) == 2
    expected = f"entropy-rl eval: error: invalid --run {tmp_path / 'nope'}: run directory not found\n"
    assert capsys.readouterr().err == expected


def test_hub_model_id_offline_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "entropy_rl.cli", "eval", "--model", "no-such-org/no-such-model"]
        + ["--benchmarks", "arithmetic", "--limit", "1", "--no_progress"],
        env={**_subprocess_env(), "HF_HOME": str(tmp_path)},  # an empty cache: nothing to find offline
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "entropy-rl eval: error: invalid --model no-such-org/no-such-model: no such local folder, and the Hub model "
        "could not be loaded (offline: HF_HUB_OFFLINE is set): "
    )
    assert result.stderr.count("\n") == 1 and "Repo id must" not in result.stderr


def test_offline_hub_benchmark_names_the_local_path_it_tried(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'math-ai/amc23' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BenchmarkError) as caught:
        load_benchmark("amc23", data_dir=tmp_path)
    message = str(caught.value)
    assert f"no local file {tmp_path / 'amc23_test.jsonl'}, and the Hub dataset 'math-ai/amc23'" in message
    assert "--data_dir" in message and "eval --data_file" in message and "train --dataset_file" in message
    assert "\n" not in message
    monkeypatch.delenv("ENTROPY_RL_DATA_DIR", raising=False)
    with pytest.raises(BenchmarkError, match=r"amc23_test.jsonl: no data directory given, by --data_dir or \$ENTR"):
        load_benchmark("amc23")


def test_relative_source_path_is_read_from_the_spec_folder(tmp_path, monkeypatch):
    spec_dir = tmp_path / "specs"
    (spec_dir / "data").mkdir(parents=True)
    (spec_dir / "data" / "mine.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    spec = (
        (BENCHMARK_DIR / "gsm8k.yaml").read_text().replace("${ENTROPY_RL_DATA_DIR}/gsm8k_test.jsonl", "data/mine.jsonl")
    )
    (spec_dir / "mine.yaml").write_text(spec.replace("  hub: openai/gsm8k\n", ""))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    benchmark = load_benchmark(spec_dir / "mine.yaml")
    assert benchmark.source == str(spec_dir / "data" / "mine.jsonl") and benchmark.problems[0]["gold"] == "2"


@pytest.mark.parametrize(
    ("line", "column"),
    [('{"question": "q2", "answer": ', 30), ('{"question": "q", "answer": tru}', 29), ('{"question": 1,}', 16)],
)
@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_malformed_jsonl_line_names_the_right_line_and_column(tmp_path, line, column, line_end):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"question": "q", "answer": "#### 1"}}{line_end}{line}{line_end}', newline="")
    with pytest.raises(BenchmarkError, match=rf"bad.jsonl:2: malformed JSON \(.* at column {column}\)"):
        load_benchmark("gsm8k", data_file=path)


def test_grader_in_a_script_without_main_guard_says_why(tmp_path):
    script = tmp_path / "grade_it.py"
    script.write_text(
        "from entropy_rl.grading import Grader\n"
        "grader = Grader(workers=1)\n"
        "print(grader.grade('\\\\boxed{\\\\frac{1}{2}}', '\\\\sqrt{2}/2'))\n"  # needs math-verify: starts a worker
    )
    result = subprocess.run(
        [sys.executable, str(script)], env=_subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert 'under `if __name__ == "__main__":`' in result.stderr
    assert "failed to start within" not in result.stderr


def test_grader_arguments_are_checked():
    from entropy_rl.errors import ConfigError
    from entropy_rl.grading import Grader

    with pytest.raises(ConfigError, match=r"timeout_s=0; allowed: seconds > 0"):
        Grader(timeout_s=0)
    with pytest.raises(ConfigError, match=r"workers=0; allowed: an integer >= 1"):
        Grader(workers=0)
