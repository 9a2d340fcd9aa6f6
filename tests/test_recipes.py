"""Recipes (recipes/toy, recipes/qwen2.5-math-7b), accelerate configs (recipes/accelerate) and `--accelerate_config`.

Recipes are parsed exactly as `entropy-rl train --config RECIPE.yaml` parses them (TrlParser over TrainScriptArguments
+ EntropyGRPOConfig + TRL's ModelConfig, unknown keys fatal), so every key must be a real field and every value must
pass EntropyGRPOConfig's validation. One thing cannot be checked as is on a machine without a GPU: transformers'
TrainingArguments refuses `bf16: true` there ("Your setup doesn't support bf16/gpu"), a check of the machine, not of
the recipe. Only then the test appends `--bf16 false` on the command line, as a user would: the YAML's keys are still
matched against the fields first (the override cannot hide a typo) and the YAML value of bf16 is checked separately.
`use_vllm: true` needs no override: vLLM is looked for when the trainer starts, not when the config is built.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from entropy_rl.cli.launch import accelerate_config_names, build_launch, maybe_relaunch, resolve_accelerate_config
from entropy_rl.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
ACCELERATE_DIR = RECIPES / "accelerate"
PAPER_METHODS = {"grpo", "clip_higher", "clip_cov", "kl_cov", "steer", "clip_b", "clip_v"}
TOY_METHODS = PAPER_METHODS | {"entropy_bonus", "high_entropy_tokens", "clip_b+steer"}
ACCELERATE_NAMES = {"single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2", "multi_node", "cpu_2proc"}
QWEN_CONTEXT = 4096  # Qwen2.5-Math-7B max_position_embeddings

# YAML files under recipes/ that are not `entropy-rl train` recipes: the `entropy-rl study` configs.
NOT_TRAIN_RECIPES = {"study.yaml", "hard_study.yaml"}

TOY = sorted(p for p in (RECIPES / "toy").glob("*.yaml") if p.name not in NOT_TRAIN_RECIPES)
QWEN = sorted(p for p in (RECIPES / "qwen2.5-math-7b").glob("*.yaml") if p.name not in NOT_TRAIN_RECIPES)
ACCELERATE = sorted(ACCELERATE_DIR.glob("*.yaml"))


def ids(paths: list[Path]) -> list[str]:
    return [f"{path.parent.name}/{path.name}" for path in paths]


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


def bf16_unavailable() -> bool:
    import torch

    return not (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def parse_all(path: Path, *overrides: str):
    """(script_args, config, model_args) as `entropy-rl train --config path *overrides` builds them."""
    from entropy_rl.train_args import parse_train_args

    args = ["--config", str(path), *overrides]
    if load(path).get("bf16") is True and bf16_unavailable():
        args += ["--bf16", "false"]
    return parse_train_args(args)


def parse(path: Path, *overrides: str):
    """(script_args, config) of `parse_all`, with the model id moved onto script_args for the checks below."""
    script_args, config, model_args = parse_all(path, *overrides)
    script_args.model_name_or_path = model_args.model_name_or_path
    return script_args, config


def field_names() -> set[str]:
    from trl import ModelConfig

    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.train_args import TrainScriptArguments

    classes = (TrainScriptArguments, EntropyGRPOConfig, ModelConfig)
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def expected_regularizer(path: Path) -> str:
    return "none" if path.stem == "grpo" else path.stem


# ------------------------------------------------------------------------------------------------ recipe sets
def test_every_method_has_a_recipe():
    assert {p.stem for p in TOY} == TOY_METHODS
    assert {p.stem for p in QWEN} == PAPER_METHODS
    assert {p.stem for p in ACCELERATE} == ACCELERATE_NAMES


# ------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("path", TOY + QWEN, ids=ids(TOY + QWEN))
def test_recipe_keys_are_fields(path):
    unknown = sorted(set(load(path)) - field_names())
    assert not unknown, f"{path.relative_to(REPO)}: keys that are no config field: {unknown}"


@pytest.mark.parametrize("path", TOY + QWEN, ids=ids(TOY + QWEN))
def test_recipe_parses_and_validates(path):
    script_args, config = parse(path)
    assert config.regularizer == expected_regularizer(path)
    assert config.output_dir == f"runs/{path.parent.name}/{path.stem}"
    assert isinstance(load(path).get("bf16"), bool), "bf16 must be set explicitly (true on GPU, false on CPU)"
    config.edit_schedule()


@pytest.mark.parametrize("path", TOY + QWEN, ids=ids(TOY + QWEN))
def test_recipe_header_gives_its_launch_line(path):
    header = path.read_text().split("\n\n")[0]
    assert all(line.startswith("#") for line in header.splitlines() if line.strip()), "header must be comments"
    assert f"--config recipes/{path.parent.name}/{path.name}" in header


@pytest.mark.parametrize("path", TOY, ids=ids(TOY))
def test_toy_recipe_is_the_builtin_cpu_task(path):
    script_args, config = parse(path)
    assert script_args.model_name_or_path is None and script_args.dataset_name == "arithmetic"
    assert script_args.reward_funcs == ["arithmetic"]
    assert config.bf16 is False and config.gradient_checkpointing is False and config.use_vllm is False
    assert config.per_device_train_batch_size == 64 and config.num_generations == 8
    assert config.num_iterations == 2, "every toy recipe takes 2 updates per rollout (see the recipe header)"
    assert config.save_steps == 100 and config.max_steps == 300


@pytest.mark.parametrize("path", QWEN, ids=ids(QWEN))
def test_qwen_recipe_settings(path):
    script_args, config = parse(path)
    assert script_args.model_name_or_path == "Qwen/Qwen2.5-Math-7B"
    assert script_args.reward_funcs == ["math"]
    raw = load(path)
    assert raw["bf16"] is True and raw["use_vllm"] is True and raw["vllm_mode"] == "colocate"
    assert config.beta == 0.0 and config.temperature == 1.0 and config.loss_type == "dapo"
    assert config.max_completion_length < QWEN_CONTEXT and config.vllm_max_model_length == QWEN_CONTEXT
    # Batch geometry on the 8 GPUs the recipes are written for: whole prompt groups per step and per generation.
    step = config.per_device_train_batch_size * 8 * config.gradient_accumulation_steps
    generation = config.per_device_train_batch_size * 8 * config.steps_per_generation
    assert step % config.num_generations == 0 and generation % step == 0
    assert config.max_steps % config.save_steps == 0


@pytest.mark.parametrize("path", QWEN, ids=ids(QWEN))
def test_qwen_recipe_bounds_its_checkpoints_on_disk(path):
    """A 7B checkpoint is ~15 GB even weights-only: a run keeps a bounded number of them, and says so in its header."""
    config = parse(path)[1]
    assert config.save_only_model and config.save_total_limit == 4
    assert "save_total_limit 4: only the 4 newest checkpoints stay (~60 GB)" in path.read_text()


@pytest.mark.parametrize("path", QWEN, ids=ids(QWEN))
def test_qwen_recipe_dataset_spec_loads(path, tmp_path):
    """The recipes' dataset_name is a spec path (relative to the repository root) that the trainer can load."""
    from entropy_rl.evaluation.benchmarks import load_benchmark

    spec = REPO / parse(path)[0].dataset_name
    rows = tmp_path / "dapo.jsonl"
    rows.write_text('{"prompt": "What is 1+1?", "solution": "2"}\n{"prompt": "And 2+3?", "solution": " 5 "}\n')
    benchmark = load_benchmark(spec, data_file=rows)  # a local file stands in for the Hub download
    assert [p["gold"] for p in benchmark.problems] == ["2", "5"] and benchmark.chat_template
    assert "\\boxed{}" in benchmark.problems[0]["prompt"]


def test_qwen_recipes_keep_each_papers_clip():
    configs = {path.stem: parse(path)[1] for path in QWEN}
    assert configs["grpo"].epsilon == 0.2 and configs["grpo"].epsilon_high in (None, 0.2)  # None: = epsilon
    assert (configs["clip_higher"].epsilon, configs["clip_higher"].epsilon_high) == (0.2, 0.28)
    assert (configs["clip_cov"].epsilon, configs["clip_cov"].epsilon_high) == (1.0, 1.0)  # ratio range [0, 2]
    assert (configs["steer"].epsilon, configs["steer"].epsilon_high) == (0.2, 0.28)
    kl_cov = configs["kl_cov"]
    assert kl_cov.steps_per_generation > kl_cov.gradient_accumulation_steps  # off-policy, or the penalty is 0


# ------------------------------------------------------------------------------------------------ bad recipes
def write_variant(tmp_path: Path, base: Path, **changes) -> Path:
    data = load(base) | changes
    path = tmp_path / f"bad-{base.name}"
    path.write_text(yaml.safe_dump(data))
    return path


def test_recipe_with_a_typo_key_fails_naming_it(tmp_path):
    path = write_variant(tmp_path, RECIPES / "toy" / "grpo.yaml", learning_rat=1e-4)
    with pytest.raises(ConfigError, match="learning_rat"):
        parse(path)


@pytest.mark.parametrize(
    ("base", "changes", "named"),
    [
        ("clip_cov", {"clip_cov_ratio": 2.0}, "clip_cov_ratio=2.0"),
        ("steer", {"steer_lambda_min": 0.0}, "steer_lambda_min=0.0"),
        ("kl_cov", {"num_iterations": 1}, "regularizer='kl_cov'"),
        ("grpo", {"stat_scope": "everywhere"}, "stat_scope='everywhere'"),
    ],
)
def test_recipe_with_an_out_of_range_value_fails_naming_it(tmp_path, base, changes, named):
    path = write_variant(tmp_path, RECIPES / "toy" / f"{base}.yaml", **changes)
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        parse(path)


def test_cli_flags_override_a_recipe():
    _, config = parse(RECIPES / "toy" / "clip_cov.yaml", "--clip_cov_ratio", "0.05", "--max_steps", "7")
    assert config.clip_cov_ratio == 0.05 and config.max_steps == 7


def test_parse_train_args_reads_a_recipe():
    from entropy_rl.train_args import parse_train_args

    script_args, config, model_args = parse_train_args(["--config", str(RECIPES / "toy" / "steer.yaml")])
    assert config.regularizer == "steer" and config.max_steps == 300 and script_args.dataset_name == "arithmetic"
    assert model_args.model_name_or_path is None and model_args.use_peft is False


@pytest.mark.parametrize("name", ["toy/steer", "toy/steer.yaml", "recipes/toy/steer.yaml"])
def test_a_recipe_by_name_from_any_directory(name, tmp_path, monkeypatch):
    from entropy_rl.resources import list_recipes
    from entropy_rl.train_args import parse_train_args

    monkeypatch.chdir(tmp_path)  # no recipes/ here: the package's own are found
    _, config, _ = parse_train_args(["--config", name])
    assert config.regularizer == "steer"
    assert {"toy/steer", "toy/grpo", "qwen2.5-math-7b/clip_cov", "accelerate/zero2", "data/dapo_math_17k"} <= set(
        list_recipes()
    )


def test_an_unknown_recipe_name_lists_the_known_ones(tmp_path, monkeypatch):
    from entropy_rl.train_args import parse_train_args

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="'toy/nope' is neither a file nor a recipe name.*toy/grpo"):
        parse_train_args(["--config", "toy/nope"])


# ------------------------------------------------------------------------------------------------ accelerate configs
REQUIRED_ACCELERATE_KEYS = {
    "compute_environment",
    "distributed_type",
    "mixed_precision",
    "num_machines",
    "num_processes",
    "machine_rank",
    "use_cpu",
}


@pytest.mark.parametrize("path", ACCELERATE, ids=ids(ACCELERATE))
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    data = load(path)
    missing = REQUIRED_ACCELERATE_KEYS - set(data)
    assert not missing, f"{path.name}: missing {sorted(missing)}"
    config = load_config_from_file(str(path))  # accelerate's own loader: refuses unknown keys and bad enum values
    assert config.num_processes % config.num_machines == 0
    if data["use_cpu"]:
        assert data["mixed_precision"] == "no"
    else:
        assert data["mixed_precision"] == "bf16"


def test_accelerate_configs_say_what_their_name_says():
    configs = {path.stem: load(path) for path in ACCELERATE}
    assert configs["single_gpu"]["distributed_type"] == "NO" and configs["single_gpu"]["num_processes"] == 1
    assert configs["multi_gpu"]["distributed_type"] == "MULTI_GPU" and configs["multi_gpu"]["num_processes"] == 8
    assert configs["zero2"]["deepspeed_config"]["zero_stage"] == 2
    zero3 = configs["zero3"]["deepspeed_config"]
    assert zero3["zero_stage"] == 3 and zero3["zero3_init_flag"] is True and zero3["zero3_save_16bit_model"] is True
    assert configs["fsdp2"]["distributed_type"] == "FSDP" and configs["fsdp2"]["fsdp_config"]["fsdp_version"] == 2
    node = configs["multi_node"]
    assert node["num_machines"] > 1 and {"machine_rank", "main_process_ip", "main_process_port"} <= set(node)
    # The CPU config must go through torchrun (MULTI_GPU): MULTI_CPU / --cpu start one process without mpirun.
    cpu = configs["cpu_2proc"]
    assert cpu["distributed_type"] == "MULTI_GPU" and cpu["use_cpu"] is True and cpu["num_processes"] == 2


PROBE = textwrap.dedent(
    """
    import os, sys, tempfile
    from pathlib import Path
    from transformers import TrainingArguments
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to="none")
    state = args.distributed_state
    line = f"rank={state.process_index} of={state.num_processes} type={state.distributed_type.value}"
    Path(sys.argv[1], f"{os.getpid()}.txt").write_text(line)  # one file per process: stdout lines interleave
    """
)


@pytest.mark.slow
def test_cpu_2proc_really_starts_two_gloo_ranks(tmp_path, monkeypatch):
    """What the trainer sees under `--accelerate_config cpu_2proc`: ranks 0 and 1 of 2 on MULTI_CPU (gloo)."""
    from entropy_rl.cli.launch import accelerate_launch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = tmp_path / "out"
    out.mkdir()
    # The same launcher, config and environment as `--accelerate_config cpu_2proc`, with the probe as the program.
    launch = build_launch(["--accelerate_config", str(ACCELERATE_DIR / "cpu_2proc.yaml")], [str(probe), str(out)])
    assert accelerate_launch(launch) == 0
    seen = sorted(path.read_text() for path in out.iterdir())
    assert seen == ["rank=0 of=2 type=MULTI_CPU", "rank=1 of=2 type=MULTI_CPU"]


def test_a_failing_program_gives_its_exit_code(tmp_path, monkeypatch):
    """accelerate's API raises when the launched program fails; the launch returns its exit code instead."""
    from entropy_rl.cli.launch import accelerate_launch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(3)\n")
    launch = build_launch(["--accelerate_config", str(ACCELERATE_DIR / "single_gpu.yaml")], [str(script)])
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # single_gpu.yaml on a machine without one
    assert accelerate_launch(launch) == 3


# ------------------------------------------------------------------------------------------------ --accelerate_config
class FakeRun:
    """Stands in for accelerate's launch: records what it was asked to run, returns a chosen exit code."""

    def __init__(self, returncode: int = 0):
        self.returncode = returncode
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, launch):
        self.calls.append((list(launch.args), dict(launch.env)))
        return self.returncode


@pytest.fixture()
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def launched(argv: list[str], returncode: int = 0) -> tuple[int | None, list[str], dict[str, str]]:
    run = FakeRun(returncode)
    code = maybe_relaunch(argv, runner=run)
    assert len(run.calls) == 1
    return code, *run.calls[0]


def test_no_accelerate_config_trains_in_process(in_repo):
    run = FakeRun()
    assert maybe_relaunch(["--config", "recipes/toy/grpo.yaml", "--seed", "1"], runner=run) is None
    assert run.calls == []


def test_relaunch_builds_the_accelerate_command(in_repo, capsys):
    from accelerate.commands.launch import launch_command_parser

    argv = ["--config", "recipes/qwen2.5-math-7b/clip_cov.yaml", "--accelerate_config", "zero2", "--seed", "3"]
    code, args, env = launched(argv + ["--num_processes", "4"], returncode=0)
    assert code == 0
    assert args == [
        "--config_file",
        str(REPO / "recipes" / "accelerate" / "zero2.yaml"),
        "--num_processes",
        "4",
        "-m",
        "entropy_rl.cli",
        "train",
        "--config",
        "recipes/qwen2.5-math-7b/clip_cov.yaml",
        "--seed",
        "3",
    ]
    assert env == {}
    # accelerate's own parser reads them as `accelerate launch` would
    parsed = launch_command_parser().parse_args(args)
    assert parsed.module and parsed.training_script == "entropy_rl.cli" and parsed.num_processes == 4
    assert parsed.training_script_args == ["train", "--config", "recipes/qwen2.5-math-7b/clip_cov.yaml", "--seed", "3"]
    assert capsys.readouterr().err.strip() == "entropy-rl train: accelerate launch " + " ".join(args)


def test_relaunch_returns_the_launchers_exit_code(in_repo):
    code, args, _ = launched(["--accelerate_config=multi_gpu", "--max_steps", "2"], returncode=3)
    assert code == 3
    assert args[-3:] == ["train", "--max_steps", "2"] and "--num_processes" not in args


def test_config_names_resolve_to_our_recipes_then_trls(in_repo):
    names = accelerate_config_names()
    assert set(names) >= ACCELERATE_NAMES
    assert resolve_accelerate_config("zero3") == REPO / "recipes" / "accelerate" / "zero3.yaml"
    trl_only = resolve_accelerate_config("zero1")  # not in recipes/accelerate: TRL's packaged config
    assert trl_only.name == "zero1.yaml" and trl_only.parent.name == "accelerate_configs"
    path = REPO / "recipes" / "accelerate" / "fsdp2.yaml"
    assert resolve_accelerate_config(str(path)) == path


def test_config_names_resolve_from_another_directory(tmp_path, monkeypatch):
    """The package's recipes are found from any cwd (the checkout's folder here; a wheel's copy when installed)."""
    monkeypatch.chdir(tmp_path)
    assert resolve_accelerate_config("cpu_2proc") == REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"


def test_cpu_config_launches_with_cpu_mode(in_repo):
    _, args, env = launched(["--accelerate_config", "cpu_2proc", "--config", "recipes/toy/grpo.yaml"])
    assert env == {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    assert args[args.index("--config_file") + 1].endswith("cpu_2proc.yaml")


def test_cpu_config_keeps_a_users_thread_count(in_repo, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    _, _, env = launched(["--accelerate_config", "cpu_2proc"])
    assert env["OMP_NUM_THREADS"] == "2"


def test_unknown_config_name_lists_the_available_ones(in_repo):
    with pytest.raises(ConfigError, match="zero_9") as err:
        maybe_relaunch(["--accelerate_config", "zero_9"], runner=FakeRun())
    for name in ("cpu_2proc", "zero2", "zero3", "fsdp2", "multi_node", "zero1"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--accelerate_config"], "--accelerate_config needs a value"),
        (["--accelerate_config", "--config", "x.yaml"], "--accelerate_config needs a value"),
        (["--accelerate_config", "zero2", "--num_processes", "0"], "--num_processes='0'"),
        (["--accelerate_config", "zero2", "--num_processes", "two"], "--num_processes='two'"),
        (["--num_processes", "2", "--config", "x.yaml"], "without --accelerate_config"),
    ],
)
def test_bad_launcher_flags_fail_clearly(in_repo, argv, named):
    run = FakeRun()
    with pytest.raises(ConfigError, match=named):
        maybe_relaunch(argv, runner=run)
    assert run.calls == []


def test_no_relaunch_inside_a_launched_process(in_repo, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="already started"):
        maybe_relaunch(["--accelerate_config", "zero2"], runner=FakeRun())


# ------------------------------------------------------------------------------------------------ docs
def test_docs_cover_every_recipe_and_config():
    text = (REPO / "docs" / "recipes.md").read_text()
    for path in TOY + QWEN + ACCELERATE:
        assert path.stem in text, f"docs/recipes.md does not mention {path.relative_to(REPO)}"
