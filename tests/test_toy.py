"""Tests for the built-in toy task: tokenizer, problems, reward, model, the shipped policy and its warm-up."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from entropy_rl.toy import (
    POLICY_DIR,
    accuracy,
    arithmetic_reward,
    build_model,
    build_tokenizer,
    load_toy,
    make_problems,
    warm_start,
)
from entropy_rl.toy import warmup as warmup_module
from entropy_rl.toy.task import split_pairs

SAMPLES = ["12+35=", "0+0=", "Q: what is 7*8?\nA: 56.", "a b\n\nc", "~§é"]
# Mechanics-only warm-up: stops at max_steps without reaching the target (and warns about it).
QUICK = {"target_accuracy": 1.0, "max_steps": 2, "show_progress": False}
NOT_REACHED = "ignore:toy warm-up stopped"


def test_tokenizer_round_trips_through_save_and_auto_reload(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    special = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert special == [0, 1, 2, 3]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.padding_side == "left"
    for text in SAMPLES:
        ids = tokenizer(text)["input_ids"]
        assert reloaded(text)["input_ids"] == ids
        assert len(ids) == len(text)  # one token per character, unknown ones included
    assert reloaded.decode(tokenizer("a b\n\nc")["input_ids"]) == "a b\n\nc"
    chat = [{"role": "user", "content": "1+2="}]
    rendered = reloaded.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == "Q:1+2=\nA:"


def test_plain_prompts_get_no_special_tokens_and_completions_decode_without_eos() -> None:
    tokenizer = build_tokenizer()
    # TRL tokenizes plain-text prompts with `processing_class(text=prompts)`, i.e. add_special_tokens=True.
    ids = tokenizer(text=["12+35="])["input_ids"][0]
    assert ids == tokenizer.convert_tokens_to_ids(list("12+35="))
    answer = tokenizer("47", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(answer, skip_special_tokens=True) == "47"
    batch = tokenizer(["1+2=", "12+35="], padding=True)
    assert batch["input_ids"][0][:2] == [tokenizer.pad_token_id] * 2  # left padding


def test_problems_are_correct_deterministic_and_splits_disjoint() -> None:
    train, test = set(split_pairs("train")), set(split_pairs("test"))
    assert not train & test
    assert len(train) + len(test) == 100 * 100
    assert 0.15 < len(test) / 10_000 < 0.25
    assert all((b, a) in test for a, b in test)  # commutative twins share a split
    assert set(split_pairs("test", max_operand=20)) <= test  # the rule does not depend on max_operand

    problems = make_problems(500, "train", seed=3)
    assert problems == make_problems(500, "train", seed=3)
    assert problems != make_problems(500, "train", seed=4)
    assert len({p["prompt"] for p in problems}) == 500
    for problem in problems:
        a, b = problem["prompt"].removesuffix("=").split("+")
        assert (int(a), int(b)) in train
        assert problem["answer"] == str(int(a) + int(b))
    test_prompts = {p["prompt"] for p in make_problems(len(test), "test", seed=0)}
    assert len(test_prompts) == len(test)
    assert not test_prompts & {p["prompt"] for p in make_problems(len(train), "train", seed=0)}
    assert len(make_problems(len(test) + 5, "test")) == len(test) + 5  # cycles once the split is exhausted


@pytest.mark.parametrize("split", ["valid", "Train", ""])
def test_bad_split_names_the_value_and_the_choices(split: str) -> None:
    with pytest.raises(ValueError, match=rf"split must be one of \('train', 'test'\), got {split!r}"):
        make_problems(3, split)


def test_reward_is_exact_match_after_strip() -> None:
    completions = {"47": 1.0, " 47\n": 1.0, "47 ": 1.0, "047": 0.0, "+47": 0.0, "47.0": 0.0, "4 7": 0.0, "47<eos>": 0.0}
    completions |= {"": 0.0, "48": 0.0, "47\n47": 0.0}
    rewards = arithmetic_reward(["12+35="] * len(completions), list(completions), ["47"] * len(completions))
    assert rewards == list(completions.values())
    conversational = [[{"role": "assistant", "content": "47"}]]
    assert arithmetic_reward([None], conversational, ["47"]) == [1.0]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        arithmetic_reward([None, None], ["1", "2"], ["1"])


def test_reward_never_executes_hostile_completions(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('x')",
        "1e999",
        "9" * 1_000_000,
        "(lambda: 47)()",
        "40+7",
        "\x00" * 1000,
    ]
    started = time.perf_counter()
    assert arithmetic_reward([None] * len(hostile), hostile, ["47"] * len(hostile)) == [0.0] * len(hostile)
    assert time.perf_counter() - started < 1.0
    assert not marker.exists()


def test_build_model_is_small_tied_float32_and_seeded() -> None:
    tokenizer = build_tokenizer()
    before = torch.random.get_rng_state()
    model = build_model(tokenizer, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    assert 700_000 < sum(p.numel() for p in model.parameters()) < 900_000
    assert model.dtype == torch.float32
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    generation = model.generation_config
    assert (generation.pad_token_id, generation.bos_token_id, generation.eos_token_id) == (0, 1, 2)
    again = build_model(tokenizer, seed=0).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    other = build_model(tokenizer, seed=1).state_dict()
    assert not torch.equal(model.state_dict()["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_accuracy_is_reproducible_and_leaves_state_alone() -> None:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer).train()
    problems = make_problems(20, "test")
    before = torch.random.get_rng_state()
    first = accuracy(model, tokenizer, problems, greedy=False, seed=1)
    assert first == accuracy(model, tokenizer, problems, greedy=False, seed=1)
    assert accuracy(model, tokenizer, problems, greedy=True, batch_size=7) == 0.0  # random init never answers
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.training


@pytest.mark.filterwarnings(NOT_REACHED)
def test_warm_start_saves_atomically_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="toy warm-up stopped at max_steps=2"):
        path = warm_start(tmp_path, **QUICK)
    assert path.parent == tmp_path and path.name.startswith("toy-")
    for name in ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "warmup.json"]:
        assert (path / name).is_file(), name
    assert not list(path.glob("*.bin")) and not list(tmp_path.glob(".*.tmp-*"))
    record = json.loads((path / "warmup.json").read_text())
    assert record["steps"] == 2 and record["reached_target"] is False
    assert {"test_greedy_accuracy", "test_sampled_accuracy", "wall_seconds", "seed", "versions"} <= {
        *record,
        *record["settings"],
    }

    started = time.perf_counter()
    assert warm_start(tmp_path, **QUICK) == path
    assert time.perf_counter() - started < 0.5
    monkeypatch.setenv("ENTROPY_RL_CACHE", str(tmp_path))
    assert warm_start(**QUICK) == path  # the environment variable picks the cache root
    assert warm_start(tmp_path, **{**QUICK, "max_steps": 1}) != path  # settings are part of the key

    model, tokenizer = load_toy(path)
    assert model.dtype == torch.float32
    assert tokenizer("12+35=")["input_ids"] == build_tokenizer()("12+35=")["input_ids"]


@pytest.mark.filterwarnings(NOT_REACHED)
def test_warm_start_is_deterministic(tmp_path: Path) -> None:
    first = load_file(warm_start(tmp_path / "a", **QUICK) / "model.safetensors")
    second = load_file(warm_start(tmp_path / "b", **QUICK) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.filterwarnings(NOT_REACHED)
def test_concurrent_warm_starts_train_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_train = warmup_module._train_in_child

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(warmup_module, "_train_in_child", counting_train)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(warm_start(tmp_path, **QUICK))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 2 and paths[0] == paths[1]
    assert len(calls) == 1
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_shipped_policy_leaves_room_to_improve_and_records_how_it_was_made() -> None:
    """The shipped warm-up reached its target, is partly right, loads by default, and its recorded settings are those
    the current recipe gives (a recipe change without `rebuild_policy()` fails here, before the slow test below)."""
    record = json.loads((POLICY_DIR / "warmup.json").read_text())
    assert record["settings"] == warmup_module.warmup_settings()
    assert record["reached_target"]
    assert 0.10 <= record["test_sampled_accuracy"] <= 0.70
    assert sorted(p.name for p in POLICY_DIR.iterdir()) == sorted(warmup_module.POLICY_FILES)
    assert (POLICY_DIR / "model.safetensors").stat().st_size < 4_000_000  # 797 056 float32 parameters
    model, tokenizer = load_toy()
    sampled = accuracy(model, tokenizer, make_problems(300, "test", seed=1), greedy=False, seed=1)
    assert 0.10 <= sampled <= 0.70


@pytest.mark.slow
def test_warm_up_replays_the_recorded_start_on_any_cpu(tmp_path: Path) -> None:
    """The first 100 steps of the recorded warm-up, re-run here, give the recorded losses: the code and recipe that
    made the shipped weights are the current ones, whatever the CPU (its last bits only part trajectories later)."""
    record = json.loads((POLICY_DIR / "warmup.json").read_text())
    settings = record["settings"]
    with pytest.warns(UserWarning, match="stopped at max_steps=100"):  # a target of 1.0 is not meant to be reached
        path = warm_start(tmp_path, target_accuracy=1.0, max_steps=100, seed=settings["seed"], show_progress=False)
    replayed = json.loads((path / "warmup.json").read_text())["history"]
    recorded = [row for row in record["history"] if row["step"] <= 100]
    assert [row["step"] for row in replayed] == [row["step"] for row in recorded] == [25, 50, 75, 100]
    for mine, theirs in zip(replayed, recorded, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-3), (mine, theirs)


@pytest.mark.slow
def test_shipped_policy_is_what_the_recorded_warm_up_produces(tmp_path: Path) -> None:
    """Re-running the warm-up from the settings recorded next to the shipped weights gives them bit for bit, on the
    torch build and CPU vendor they were made with (MKL's AVX2 branch differs in the last bits between vendors)."""
    record = json.loads((POLICY_DIR / "warmup.json").read_text())
    if record["versions"]["torch"] != torch.__version__:
        pytest.skip(f"bit-identity holds for one torch build: shipped with {record['versions']['torch']}")
    if record["versions"]["cpu_vendor"] != warmup_module.cpu_vendor():
        pytest.skip(
            f"bit-identity holds for one CPU vendor: shipped from {record['versions']['cpu_vendor']}, this CPU is "
            f"{warmup_module.cpu_vendor()} (test_warm_up_replays_the_recorded_start_on_any_cpu still checks the recipe)"
        )
    settings = record["settings"]
    path = warm_start(
        tmp_path,
        target_accuracy=settings["target_accuracy"],
        max_steps=settings["max_steps"],
        seed=settings["seed"],
        show_progress=False,
    )
    shipped, again = load_file(POLICY_DIR / "model.safetensors"), load_file(path / "model.safetensors")
    assert shipped.keys() == again.keys()
    assert all(torch.equal(shipped[k], again[k]) for k in shipped)
    rerun = json.loads((path / "warmup.json").read_text())
    assert rerun["history"] == record["history"] and rerun["test_greedy_accuracy"] == record["test_greedy_accuracy"]
    for name in warmup_module.POLICY_FILES[1:-1]:  # config, tokenizer: as saved by the same code
        assert (path / name).read_text() == (POLICY_DIR / name).read_text(), name


def test_hard_problems_are_those_the_policy_gets_wrong_greedily(tmp_path: Path, monkeypatch) -> None:
    """`arithmetic_hard` keeps the pairs whose greedy answer is wrong, computes them once and then reads the cache."""
    from entropy_rl.toy import hard

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=32, num_layers=1, seed=0)
    path = tmp_path / "toy-test"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    pool = split_pairs("test")[:60]
    monkeypatch.setattr(hard, "POLICY_DIR", path)
    monkeypatch.setenv("ENTROPY_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hard, "split_pairs", lambda split: pool)
    # The selection must agree with decoding each prompt on its own (the hard set decodes them left-padded, batched).
    answers = {}
    loaded, tok = load_toy(path)
    for a, b in pool[:5]:
        ids = tok([f"{a}+{b}="], return_tensors="pt")
        out = loaded.generate(**ids, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
        answers[(a, b)] = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    pairs = hard.hard_pairs("test")
    assert set(pairs) <= set(pool) and len(pairs) > 50
    for pair, text in answers.items():
        assert (pair in pairs) == (text != str(sum(pair)))
    assert len(list((tmp_path / "cache").glob("hard-*/hard_test.json"))) == 1
    monkeypatch.setattr(hard, "_greedy_wrong", lambda *args: pytest.fail("recomputed despite the cache"))
    problems = hard.make_hard_problems(70, "test", seed=1)
    assert len(problems) == 70 and {(p["prompt"], p["answer"]) for p in problems} == {
        (f"{a}+{b}=", str(a + b)) for a, b in pairs
    }
    with pytest.raises(ValueError, match="split must be one of"):
        hard.hard_pairs("validation")
