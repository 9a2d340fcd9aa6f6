"""At home for a TRL user: a TRL script with one import changed, TRL's script arguments, LoRA, local data, rewards."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import TINY_GRPO

from entropy_rl.cli import main
from entropy_rl.jsonl import read_rows


@pytest.fixture()
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture()
def problems_file(tmp_path):
    """A JSONL file in TRL's prompt-only format, with the `answer` column the arithmetic reward reads."""
    from entropy_rl.toy import make_problems

    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in make_problems(32, split="train", seed=0)))
    return path


def readme_script(config_cls, model_dir, train_dataset, output_dir, **extra):
    """The README's TRL script: model by path, a TRL reward function, a TRL-style config; only the import is ours."""
    from entropy_rl import EntropyGRPOTrainer

    def exact_answer(completions, answer, **kwargs):
        return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]

    args = config_cls(output_dir=str(output_dir), max_steps=2, **{**TINY_GRPO, **extra})
    trainer = EntropyGRPOTrainer(
        model=str(model_dir), reward_funcs=exact_answer, args=args, train_dataset=train_dataset
    )
    trainer.train()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["GRPOConfig", "EntropyGRPOConfig"])
def test_a_trl_script_runs_with_either_config(config_name, model_dir, train_dataset, tmp_path, caplog):
    import trl

    import entropy_rl

    config_cls = getattr(trl, config_name) if config_name == "GRPOConfig" else entropy_rl.EntropyGRPOConfig
    with caplog.at_level(logging.WARNING, logger="entropy_rl.trainer"):
        trainer = readme_script(config_cls, model_dir, train_dataset, tmp_path / "run", learning_rate=5e-4)
    assert isinstance(trainer.args, entropy_rl.EntropyGRPOConfig)
    assert trainer.args.learning_rate == 5e-4 and trainer.args.regularizer == "none" and trainer.args.diagnostics
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and "entropy/token_mean" in rows[0]
    upgraded = "plain GRPOConfig upgraded to EntropyGRPOConfig" in caplog.text
    assert upgraded == (config_name == "GRPOConfig")


def test_a_plain_config_keeps_every_trl_field(tmp_path):
    """The upgrade copies TRL's resolved fields (none re-derived) and names TRL's own entropy options' method."""
    from dataclasses import fields

    from trl import GRPOConfig

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.trainer import as_entropy_config

    plain = GRPOConfig(output_dir=str(tmp_path), steps_per_generation=4, entropy_coef=0.01, **TINY_GRPO)
    upgraded = as_entropy_config(plain, model=None)
    assert isinstance(upgraded, EntropyGRPOConfig) and upgraded is not plain
    for spec in fields(GRPOConfig):
        assert getattr(upgraded, spec.name) == getattr(plain, spec.name), spec.name
    assert upgraded.regularizer == "entropy_bonus" and upgraded.diagnostics and upgraded.dynamics_every == 10
    assert as_entropy_config(upgraded, model=None) is upgraded
    with pytest.raises(TypeError, match="GRPOConfig or an EntropyGRPOConfig"):
        as_entropy_config(object(), model=None)


def test_model_init_kwargs_reach_from_pretrained(model_dir, train_dataset, tmp_path):
    """TRL's `--model_init_kwargs` (and ModelConfig's --dtype) load the named model; the user's keys win."""
    import torch

    from entropy_rl.trainer import EntropyGRPOTrainer
    from entropy_rl.training import load_policy, parse_train_args

    argv = ["--model_name_or_path", str(model_dir), "--dtype", "bfloat16", "--output_dir", str(tmp_path / "run")]
    _, config, model_args = parse_train_args([*argv, "--model_init_kwargs", '{"dtype": "float16"}'])
    model, tokenizer = load_policy(model_args, config)
    assert model == str(model_dir) and tokenizer is None  # TRL loads both from the id, as in its script
    assert config.model_init_kwargs["dtype"] == "float16" and config.model_init_kwargs["use_safetensors"] is True
    trainer = EntropyGRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=config,
        train_dataset=train_dataset,
    )
    assert trainer.model.dtype == torch.float16


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        # transformers 4.x refuses it earlier, for want of bitsandbytes: either way the flag is named
        (["--load_in_4bit", "true"], "load_in_4bit=True "),
        (["--model_init_kwargs", '{"dtype": "float16"}'], "model_init_kwargs="),
        (["--attn_implementation", "sdpa"], "attn_implementation='sdpa'"),
    ],
)
def test_checkpoint_loading_flags_are_refused_for_the_toy(flags, named, tmp_path, capsys):
    assert main(["train", "--output_dir", str(tmp_path), *flags]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.slow
def test_use_peft_trains_a_lora_adapter_on_the_toy(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "run"
    argv = ["train", "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "3", "--output_dir", str(out)]
    argv += ["--per_device_train_batch_size", "16", "--num_generations", "4", "--save_strategy", "no"]
    assert main([*argv, "--disable_tqdm", "true", "--dynamics_every", "1"]) == 0
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and adapter["peft_type"] == "LORA"
    assert (out / "final" / "adapter_model.safetensors").stat().st_size > 0
    assert not (out / "final" / "model.safetensors").exists()  # only the adapter trained and saved
    rows = read_rows(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(row["tokens"] > 0 and "dynamics/measured_dH" in row for row in rows)  # diagnostics see the LoRA model


@pytest.mark.slow
def test_dataset_file_and_reward_funcs_by_name_and_import_path(problems_file, tmp_path, monkeypatch):
    """`--dataset_name FILE.jsonl` is TRL's local-file dataset; `--reward_funcs` mixes a name and module:function."""
    calls = tmp_path / "calls.txt"
    (tmp_path / "my_rewards.py").write_text(
        "def counted(completions, answer, **kwargs):\n"
        f"    open({str(calls)!r}, 'a').write(f'{{len(completions)}} {{answer[0]}}\\n')\n"
        "    return [0.0] * len(completions)\n"
    )
    monkeypatch.chdir(tmp_path)  # the module lies in the current directory, as TRL's script finds it
    out = tmp_path / "run"
    argv = ["train", "--dataset_name", str(problems_file), "--reward_funcs", "arithmetic", "my_rewards:counted"]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "16", "--num_generations", "4"]
    assert main([*argv, "--output_dir", str(out), "--save_strategy", "no", "--disable_tqdm", "true"]) == 0
    assert [row["step"] for row in read_rows(out / "metrics.jsonl")] == [1, 2]
    seen = calls.read_text().split("\n")[:-1]
    answers = {json.loads(line)["answer"] for line in problems_file.read_text().splitlines()}
    assert len(seen) == 2 and all(line.split()[0] == "16" and line.split()[1] in answers for line in seen)
    saved = json.loads((out / "entropy_rl_config.json").read_text())
    assert saved["script"]["dataset_name"] == str(problems_file) and saved["model"]["use_peft"] is False


def test_reward_names_cover_ours_and_trls():
    from trl.rewards import accuracy_reward, think_format_reward

    from entropy_rl.toy import arithmetic_reward
    from entropy_rl.training import resolve_reward

    assert resolve_reward("arithmetic") is arithmetic_reward
    assert resolve_reward("accuracy_reward") is accuracy_reward
    assert resolve_reward("think_format_reward") is think_format_reward
    assert resolve_reward("trl.rewards.think_format_reward") is think_format_reward  # TRL's dotted spelling
    assert resolve_reward("entropy_rl.toy:arithmetic_reward") is arithmetic_reward
    assert callable(resolve_reward("get_soft_overlong_punishment"))  # TRL's factory, with its script's values


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda d: d / "rows.txt", "has suffix '.txt'"),
        (lambda d: d / "no_prompt.jsonl", "has no 'prompt' column"),
        (lambda d: d / "missing.jsonl", "dataset_name="),
    ],
)
def test_bad_local_datasets_fail_naming_the_field(make, named, tmp_path, capsys):
    path = make(tmp_path)
    if path.name != "missing.jsonl":
        path.write_text('{"question": "1+1=", "answer": "2"}\n')
    assert main(["train", "--dataset_name", str(path), "--output_dir", str(tmp_path / "run")]) == 2
    assert named in capsys.readouterr().err


def test_dataset_file_only_with_a_spec(problems_file, tmp_path, capsys):
    argv = ["train", "--dataset_name", str(problems_file), "--dataset_file", str(problems_file)]
    assert main([*argv, "--output_dir", str(tmp_path)]) == 2
    assert "dataset_file=" in capsys.readouterr().err


def test_version_and_recipe_list(capsys):
    from entropy_rl import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"entropy-rl {__version__}"
    assert main(["train", "--list_recipes"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"toy/grpo", "toy/clip_cov", "qwen2.5-math-7b/steer", "accelerate/cpu_2proc"} <= set(listed)
    assert main(["eval", "--list_benchmarks"]) == 0
    assert {"arithmetic", "gsm8k", "math500", "aime24", "amc23"} <= set(capsys.readouterr().out.split())
