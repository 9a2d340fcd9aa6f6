"""At home for a TRL user: a TRL script with one import changed, TRL's script arguments, LoRA, local data, rewards."""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING

import pytest
from helpers import TINY_GRPO

from entropy_rl.cli import main
from entropy_rl.jsonl import read_rows


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
def test_a_trl_script_runs_with_either_config(config_name, tiny_model_dir, train_dataset, tmp_path, caplog):
    import trl

    import entropy_rl

    config_cls = getattr(trl, config_name) if config_name == "GRPOConfig" else entropy_rl.EntropyGRPOConfig
    with caplog.at_level(logging.WARNING, logger="entropy_rl.trainer"):
        trainer = readme_script(config_cls, tiny_model_dir, train_dataset, tmp_path / "run", learning_rate=5e-4)
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


@pytest.mark.parametrize(
    "named",
    [
        ["--model_name_or_path", "org/model"],
        ["--dataset_name", "data/problems.jsonl"],
        ["--dataset_name", "trl-lib/DeepMath-103K", "--reward_funcs", "accuracy_reward"],
    ],
)
def test_a_command_line_naming_a_model_or_dataset_parses_field_for_field_as_trl_grpo(named, tmp_path):
    """Not the built-in task: TRL's GRPOConfig defaults, exactly what `trl grpo` parses from the same flags (on CPU
    TRL needs --use_cpu and --bf16 false to start at all; entropy-rl sets both itself there), ours at their own."""
    from dataclasses import fields

    from trl import GRPOConfig
    from trl.scripts.grpo import make_parser

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.train_args import builtin_task, defaults_used, parse_train_args

    argv = [*named, "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"]
    _, ours, _ = parse_train_args(argv)
    _, trls, _, _ = make_parser().parse_args_and_config(args=argv)
    for spec in fields(GRPOConfig):
        assert getattr(ours, spec.name) == getattr(trls, spec.name), spec.name
    assert ours.learning_rate == 1e-6 and ours.lr_scheduler_type == "linear" and ours.save_steps == 500
    for spec in fields(EntropyGRPOConfig):
        if spec.name not in {f.name for f in fields(GRPOConfig)}:
            default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
            assert getattr(ours, spec.name) == default, spec.name  # no held-out toy curve, no toy settings
    assert not builtin_task(argv) and defaults_used(argv).startswith("TRL's GRPOConfig defaults")


@pytest.mark.parametrize("argv", [[], ["--max_steps", "3"], ["--dataset_name", "arithmetic_hard"]])
def test_the_built_in_task_alone_takes_the_toy_defaults(argv):
    from entropy_rl.train_args import BUILTIN_DEFAULTS, builtin_task, defaults_used, parse_train_args

    _, config, _ = parse_train_args(argv)
    assert builtin_task(argv) and defaults_used(argv).startswith("the built-in task's")
    assert config.learning_rate == BUILTIN_DEFAULTS["learning_rate"] and config.curve_benchmarks == ["arithmetic"]
    assert config.max_steps == (3 if argv[:1] == ["--max_steps"] else BUILTIN_DEFAULTS["max_steps"])
    recipe = ["--config", "toy/grpo"]
    assert not builtin_task(recipe) and defaults_used(recipe).startswith("the recipe's")


def test_the_run_says_which_defaults_it_used(tmp_path, capsys):
    argv = ["train", "--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "run")]
    assert main(argv) == 2  # fails at the model, after the settings are known
    assert "entropy-rl train: defaults: TRL's GRPOConfig defaults" in capsys.readouterr().out


def test_model_init_kwargs_reach_from_pretrained(tiny_model_dir, train_dataset, tmp_path):
    """TRL's `--model_init_kwargs` (and ModelConfig's --dtype) load the named model; the user's keys win."""
    import torch

    from entropy_rl.train_args import parse_train_args
    from entropy_rl.trainer import EntropyGRPOTrainer
    from entropy_rl.training import load_policy

    argv = ["--model_name_or_path", str(tiny_model_dir), "--dtype", "bfloat16", "--output_dir", str(tmp_path / "run")]
    _, config, model_args = parse_train_args([*argv, "--model_init_kwargs", '{"dtype": "float16"}'])
    model, tokenizer = load_policy(model_args, config)
    assert model == str(tiny_model_dir) and tokenizer is None  # TRL loads both from the id, as in its script
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
    argv += [
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "16",
        "--num_generations",
        "4",
        "--max_completion_length",
        "8",
    ]
    assert main([*argv, "--output_dir", str(out), "--save_strategy", "no", "--disable_tqdm", "true"]) == 0
    assert [row["step"] for row in read_rows(out / "metrics.jsonl")] == [1, 2]
    seen = calls.read_text().split("\n")[:-1]
    answers = {json.loads(line)["answer"] for line in problems_file.read_text().splitlines()}
    assert len(seen) == 2 and all(line.split()[0] == "16" and line.split()[1] in answers for line in seen)
    saved = json.loads((out / "entropy_rl_config.json").read_text())
    assert saved["script"]["dataset_name"] == str(problems_file) and saved["model"]["use_peft"] is False


def test_reward_names_cover_ours_and_trls():
    from trl.rewards import accuracy_reward, think_format_reward

    from entropy_rl.reward_loading import resolve_reward
    from entropy_rl.toy import arithmetic_reward

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


def test_eval_dataset_as_trls_script_builds_it(problems_file, tmp_path):
    """--dataset_test_split: a split of the dataset (a folder here, a Hub id alike), a local file, or the built-in
    task's test split; nothing without eval_strategy; a local training file is one split."""
    from entropy_rl.errors import ConfigError
    from entropy_rl.train_args import parse_train_args
    from entropy_rl.train_data import build_eval_dataset

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text(problems_file.read_text())
    (folder / "test.jsonl").write_text("".join(problems_file.read_text().splitlines(keepends=True)[:5]))

    def eval_set(*argv):
        script_args, config, _ = parse_train_args([*argv, "--output_dir", str(tmp_path / "run")])
        return build_eval_dataset(script_args, config, seed=0)

    steps = ["--eval_strategy", "steps", "--eval_steps", "1"]
    assert eval_set("--dataset_name", str(folder)) is None
    assert len(eval_set("--dataset_name", str(folder), *steps)) == 5  # dataset_test_split defaults to 'test'
    assert (
        len(eval_set("--dataset_name", str(problems_file), *steps, "--dataset_test_split", str(folder / "test.jsonl")))
        == 5
    )
    builtin = eval_set(*steps)
    assert len(builtin) > 0 and {"prompt", "answer"} <= set(builtin.column_names)
    with pytest.raises(ConfigError, match="dataset_test_split='test' with the local file dataset_name="):
        eval_set("--dataset_name", str(problems_file), *steps)
    with pytest.raises(ConfigError, match="dataset_test_split='nope'"):
        eval_set("--dataset_name", str(folder), *steps, "--dataset_test_split", "nope")


@pytest.mark.slow
def test_eval_strategy_evaluates_through_trl_with_the_diagnostics_under_eval(
    tiny_model_dir, problems_file, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(problems_file)]
    argv += ["--dataset_test_split", str(problems_file), "--eval_strategy", "steps", "--eval_steps", "2"]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8"]
    argv += ["--num_generations", "4", "--max_completion_length", "6", "--reward_funcs", "arithmetic"]
    assert main([*argv, "--output_dir", str(out), "--save_strategy", "no", "--disable_tqdm", "true"]) == 0
    printed = capsys.readouterr().out
    for key in ("eval_loss", "eval_reward", "eval_entropy/token_mean", "eval_cov/logp_adv", "eval_tokens"):
        assert f"'{key}'" in printed, key
    assert [row["step"] for row in read_rows(out / "metrics.jsonl")] == [1, 2]  # eval rows are TRL's logs, not rows
