"""Fuzzing every command with bad input (hypothesis): wrong types, out-of-range numbers, unknown names, malformed and
empty files (YAML, JSONL, checkpoints, curve files), alone and in combination with valid arguments.

Each example runs the command in-process (`entropy_rl.cli.main(argv)`) and must end with exit code 2, exactly one line
on stderr that starts `entropy-rl CMD: error:` and names one of the bad inputs (its flag, its value or its file), no
traceback, and the existing run folder unchanged (no file written, changed or deleted). Nothing may get as far as
loading a model, training or evaluating: those entry points are replaced by a function that fails the example.

    pytest tests/test_cli_fuzz.py                                  # CI: FUZZ_EXAMPLES inputs per command
    pytest tests/test_cli_fuzz.py --hypothesis-profile=long -s     # the long campaign (docs/reliability.md)

The `long` profile is registered in tests/conftest.py; with `-s` each command prints how many inputs it tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fit import make_run

from entropy_rl.cli import main

# Inputs per command in CI (the whole file stays well under 2 minutes on 2 cores); the long profile sets its own.
FUZZ_EXAMPLES = 40
LONG = settings.default.max_examples >= 1000  # `--hypothesis-profile=long` (tests/conftest.py)
FUZZ = settings(
    max_examples=settings.default.max_examples if LONG else FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not LONG,  # CI tries the same inputs on every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
TRIED: dict[str, int] = {}


class Escaped(AssertionError):
    """A bad input got past the checks into loading a model, training or evaluating."""


# ------------------------------------------------------------------------------------------------ files
BAD_YAML = {
    "unclosed": "learning_rate: 1.0e-4\nregularizer: [clip_cov\nseed: 1\n",
    "tabs": "a:\n\t- 1\n",
    "list": "- a\n- b\n",
    "scalar": "42\n",
    "empty": "",
    "binary": "\x00\x01\xff\xfe",
    "bad_indent": "a: 1\n  b: 2\n",
}
BAD_JSONL = {
    "empty": "",
    "blank": "\n\n   \n",
    "garbage": '{oops\n{"prompt": 1}\n',
    "not_objects": "[1, 2]\n3\n",
    "no_prompt": '{"question": "1+1", "answer": "2"}\n',
    "binary": "\x00\x9f\x92\x96",
}
BAD_CHECKPOINT = {
    "empty_dir": {},
    "garbage_files": {"trainer_state.json": "{not json", "model.safetensors": "\x00" * 10, "optimizer.pt": "xyz"},
    "manifest_only": {"entropy_rl_checkpoint.json": '{"step": 3, "world_size": 1, "files": {"a.bin": 9}}'},
    "truncated_state": {"trainer_state.json": '{"global_step": 3', "rng_state.pth": "PK\x03\x04"},
}
BAD_RUN_FILES = {  # a copy of the run with one file replaced
    "metrics_garbage": ("metrics.jsonl", '{"step": 1, "reward": 0.1}\n{oops\n{"step": 3}\n'),
    "metrics_empty": ("metrics.jsonl", ""),
    "metrics_strings": ("metrics.jsonl", '{"step": "one", "reward": "high"}\n{"step": 2}\n'),
    "curve_garbage": ("curve.jsonl", '{"step": 0, "benchmark": "math500"}\n[1,\n{"step": 10}\n'),
    "curve_empty": ("curve.jsonl", "   \n"),
}  # not a garbage entropy_rl_config.json: read as absent by design (tests/test_rundir.py), the run is still plotted


def snapshot(folder: Path) -> dict[str, tuple[int, int, str] | None]:
    """Every file (size, mtime, hash) and folder under `folder`."""
    out: dict[str, tuple[int, int, str] | None] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_dir():
            out[rel] = None
        else:
            stat = path.stat()
            out[rel] = (stat.st_size, stat.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return out


class Workspace:
    """Files the fuzzer points commands at: an existing run folder (which must never change) and bad files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run = make_run(root, "existing_run", steps=30)
        (self.run / "checkpoint-10").mkdir()
        (self.run / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 10}')
        (self.run / "final").mkdir()
        self.pristine = root / "pristine_run"
        shutil.copytree(self.run, self.pristine)
        self.before = snapshot(self.run)
        self.a_file = root / "plain.txt"
        self.a_file.write_text("not a folder\n")
        self.count = 0

    def restore(self) -> None:
        """Put the run folder back after a failed example, so that the next ones are checked on the original."""
        shutil.rmtree(self.run)
        shutil.copytree(self.pristine, self.run)
        self.before = snapshot(self.run)

    def fresh(self, name: str) -> Path:
        self.count += 1
        return self.root / f"{name}{self.count}"

    def file(self, kind: str, content: str) -> Path:
        suffix = {"yaml": ".yaml", "jsonl": ".jsonl"}[kind]
        path = self.fresh(kind).with_suffix(suffix)
        path.write_text(content, encoding="latin-1" if any(ord(c) > 127 or c == "\x00" for c in content) else "utf-8")
        return path

    def checkpoint(self, files: dict[str, str]) -> Path:
        folder = self.fresh("broken") / "checkpoint-3"
        folder.mkdir(parents=True)
        for name, content in files.items():
            (folder / name).write_bytes(content.encode("latin-1"))
        return folder

    def broken_run(self, name: str, content: str) -> Path:
        folder = self.fresh("run")
        folder.mkdir()
        for path in self.run.glob("*.j*"):
            (folder / path.name).write_bytes(path.read_bytes())
        (folder / name).write_text(content)
        return folder


# ------------------------------------------------------------------------------------------------ strategies
# A bad item: (argv fragment, strings of which the error line must name one). Values a command would accept are
# never drawn as bad ones.
Item = tuple[list[str], list[str]]
NOT_A_NUMBER = st.sampled_from(["abc", "1.5x", "", "0x", "1e", "one", "--", "None", "[1]", "1,2"])
WORD = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).map(lambda s: "zz" + s)


def flag_item(flag: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[Item]:
    return values.map(lambda value: ([f"--{flag}", value], [flag, value] if value else [flag]))


def number_items(ranges: dict[str, list[str]], integer_flags: list[str]) -> st.SearchStrategy[Item]:
    out_of_range = [flag_item(flag, st.sampled_from(values)) for flag, values in ranges.items()]
    wrong_type = [flag_item(flag, NOT_A_NUMBER) for flag in integer_flags]
    return st.one_of(*out_of_range, *wrong_type)


def unknown_flag() -> st.SearchStrategy[Item]:
    return WORD.map(lambda word: ([f"--{word}", "1"], [word]))


def file_item(flag: str, kind: str, contents: dict[str, str], ws: Workspace) -> st.SearchStrategy[Item]:
    def build(name: str) -> Item:
        path = ws.file(kind, contents[name])
        return [f"--{flag}", str(path)], [str(path), path.name, flag]

    return st.sampled_from(sorted(contents)).map(build)


def checkpoint_item(ws: Workspace) -> st.SearchStrategy[Item]:
    def build(name: str) -> Item:
        path = ws.checkpoint(BAD_CHECKPOINT[name])
        return ["--resume_from_checkpoint", str(path)], [str(path), "resume_from_checkpoint"]

    return st.sampled_from(sorted(BAD_CHECKPOINT)).map(build)


def broken_run_item(ws: Workspace) -> st.SearchStrategy[Item]:
    def build(name: str) -> Item:
        file_name, content = BAD_RUN_FILES[name]
        folder = ws.broken_run(file_name, content)
        return [str(folder)], [str(folder), file_name]

    return st.sampled_from(sorted(BAD_RUN_FILES)).map(build)


def train_items(ws: Workspace) -> st.SearchStrategy[Item]:
    ranges = {
        "learning_rate": ["-1", "nan", "inf", "-inf", "1e400"],
        "temperature": ["0", "-1", "nan"],
        "top_p": ["0", "1.5", "nan"],
        "beta": ["-0.1", "nan"],
        "max_grad_norm": ["-1", "inf"],
        "overlong_penalty_factor": ["-1", "nan"],
        "per_device_train_batch_size": ["0", "-3"],
        "max_completion_length": ["0", "-1"],
        "num_iterations": ["0"],
        "gradient_accumulation_steps": ["0"],
        "max_steps": ["0", "-2"],
        "dynamic_sampling_max_rounds": ["-1"],
        "max_nan_reward_batches": ["-1"],
        "dynamics_every": ["-2"],
        "num_train_problems": ["0", "-5"],
    }
    integers = ["max_steps", "per_device_train_batch_size", "num_generations", "save_steps", "seed"]
    names = ["regularizer", "reward_funcs", "curve_benchmarks", "dynamic_sampling_at_cap", "loss_type", "stat_scope"]
    return st.one_of(
        number_items(ranges, integers),
        st.one_of(*(flag_item(name, WORD) for name in names)),
        unknown_flag(),
        file_item("config", "yaml", BAD_YAML, ws),
        file_item("dataset_name", "jsonl", BAD_JSONL, ws),
        checkpoint_item(ws),
        st.just((["--output_dir", str(ws.run)], [str(ws.run), "output_dir"])),  # a folder holding a run
        st.just((["--model_name_or_path", str(ws.a_file)], [str(ws.a_file), "model_name_or_path"])),
    )


def eval_items(ws: Workspace) -> st.SearchStrategy[Item]:
    ranges = {
        "limit": ["0", "-1"],
        "k": ["0", "-2"],
        "temperature": ["-1", "-0.5"],
        "top_p": ["0", "1.5", "nan"],
        "max_new_tokens": ["0", "-1"],
        "batch_size": ["0", "-4"],
        "grading_timeout": ["0", "-1", "nan", "inf"],
        "grading_workers": ["0", "-1"],
        "pass_k": ["0", "-1,2", "a"],
    }
    integers = ["limit", "k", "max_new_tokens", "batch_size", "seed", "grading_workers"]
    return st.one_of(
        number_items(ranges, integers),
        flag_item("benchmarks", WORD),
        flag_item("dtype", WORD),
        unknown_flag(),
        file_item("benchmarks", "yaml", BAD_YAML, ws),
        file_item("data_file", "jsonl", BAD_JSONL, ws),
    )


def eval_targets(ws: Workspace) -> st.SearchStrategy[Item]:
    """The required --model / --run: the existing run (valid: no name to expect) or a bad one."""
    return st.sampled_from(
        [
            (["--run", str(ws.run)], []),
            (["--model", str(ws.root / "no-such-model")], ["no-such-model"]),
            (["--model", str(ws.a_file)], [str(ws.a_file)]),
            (["--run", str(ws.root / "no-such-run")], ["no-such-run"]),
            (["--run", str(ws.a_file)], [str(ws.a_file)]),
        ]
    )


def fit_plot_items(ws: Workspace, command: str) -> st.SearchStrategy[Item]:
    ranges = {"smooth": ["0", "-1"], "entropy_window": ["0", "-3"]}
    if command == "fit":
        ranges |= {"fit_fraction": ["0", "1", "1.5", "nan", "-0.2"]}
    integers = ["smooth", "entropy_window"]
    return st.one_of(
        number_items(ranges, integers),
        flag_item("metric", WORD),
        flag_item("benchmark", WORD),
        flag_item("entropy_key", WORD),
        unknown_flag(),
        broken_run_item(ws),
        st.just(([str(ws.root / "no-such-run")], ["no-such-run"])),
        st.just(([str(ws.a_file)], [str(ws.a_file)])),
    )


def study_items(ws: Workspace) -> st.SearchStrategy[Item]:
    ranges = {
        "steps": ["0", "-4"],
        "seeds": ["0", "-1"],
        "save_steps": ["0", "-2", "7"],
        "eval_problems": ["0", "-1"],
        "eval_k": ["0"],
        "threads": ["0", "-1"],
        "workers": ["0", "-1"],
        "dynamics_every": ["-1"],
    }
    integers = ["steps", "seeds", "save_steps", "eval_problems", "eval_k", "threads", "workers"]
    return st.one_of(
        number_items(ranges, integers),
        flag_item("methods", WORD),
        unknown_flag(),
        file_item("config", "yaml", BAD_YAML, ws),
        st.just((["--config", str(ws.root / "no-such.yaml")], ["no-such.yaml"])),
    )


GOOD = {  # valid arguments drawn next to the bad ones
    "train": [["--max_steps", "2"], ["--regularizer", "clip_cov"], ["--learning_rate", "1e-5"], ["--seed", "3"]],
    "eval": [["--limit", "2"], ["--seed", "1"], ["--no_progress"], ["--temperature", "0"]],
    "fit": [["--smooth", "2"], ["--entropy_window", "2"], ["--metric", "reward"]],
    "plot": [["--smooth", "2"], ["--metric", "reward"]],
    "study": [["--steps", "90"], ["--seeds", "1"], ["--dry_run"], ["--eval_problems", "4"]],
}


# ------------------------------------------------------------------------------------------------ the check
@pytest.fixture(scope="module")
def workspace():
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as root:
        os.chdir(root)  # a study's default output folder and any relative path land here, not in the repository
        try:
            yield Workspace(Path(root))
        finally:
            os.chdir(old)


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch):
    """Loading a model, training and evaluating fail the example: a bad input must be refused before them."""
    from entropy_rl import training
    from entropy_rl.cli import eval as eval_cli
    from entropy_rl.evaluation import runner
    from entropy_rl.study import execute

    def escaped(*args, **kwargs):
        raise Escaped("a bad input got past the checks")

    monkeypatch.setattr(training, "load_policy", escaped)
    monkeypatch.setattr(eval_cli, "load_checkpoint_model", escaped)
    monkeypatch.setattr(runner, "load_checkpoint_model", escaped)
    monkeypatch.setattr(execute, "execute", escaped)
    monkeypatch.setattr(execute, "run_workers", escaped)


def run_cli(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, err.getvalue()


def check_refused(ws: Workspace, command: str, argv: list[str], names: list[str]) -> None:
    TRIED[command] = TRIED.get(command, 0) + 1
    try:
        code, err = run_cli([command, *argv])
    finally:
        changed = snapshot(ws.run) != ws.before
        if changed:
            ws.restore()
    assert not changed, f"{argv} changed the existing run folder"
    assert code == 2, (argv, code, err)
    assert err.count("\n") == 1 and err.startswith(f"entropy-rl {command}: error: "), (argv, err)
    assert "Traceback" not in err, err
    assert any(name and name in err for name in names), (argv, names, err)


def combined(bad: st.SearchStrategy[Item], good: list[list[str]]) -> st.SearchStrategy[tuple[list[str], list[str]]]:
    """0-2 good items, then 1-3 bad ones (after: a later flag wins in argparse, so a good value never replaces a bad
    one): (argv, names the error may mention)."""

    def join(parts: tuple[list[list[str]], list[Item]]) -> tuple[list[str], list[str]]:
        good_items, bad_items = parts
        argv = [arg for fragment in [*good_items, *(b[0] for b in bad_items)] for arg in fragment]
        return argv, [name for _, names in bad_items for name in names]

    return st.tuples(st.lists(st.sampled_from(good), max_size=2), st.lists(bad, min_size=1, max_size=3)).map(join)


def fuzz(
    command: str,
    items: Callable[[Workspace], st.SearchStrategy[Item]],
    base: Callable[[Workspace], st.SearchStrategy[Item]],
):
    """A test feeding `command` its base arguments (valid, or bad themselves) and a combination of bad items."""

    @FUZZ
    @given(data=st.data())
    def test(workspace, data):
        base_argv, base_names = data.draw(base(workspace))
        argv, names = data.draw(combined(items(workspace), GOOD[command]))
        check_refused(workspace, command, [*base_argv, *argv], [*base_names, *names])

    return test


def fixed(argv: Callable[[Workspace], list[str]]) -> Callable[[Workspace], st.SearchStrategy[Item]]:
    return lambda ws: st.just((argv(ws), []))


test_train_refuses_bad_input = fuzz("train", train_items, fixed(lambda ws: []))
test_eval_refuses_bad_input = fuzz(
    "eval", eval_items, lambda ws: eval_targets(ws).map(lambda t: ([*t[0], "--benchmarks", "arithmetic"], t[1]))
)
test_fit_refuses_bad_input = fuzz("fit", lambda ws: fit_plot_items(ws, "fit"), fixed(lambda ws: [str(ws.run)]))
test_plot_refuses_bad_input = fuzz("plot", lambda ws: fit_plot_items(ws, "plot"), fixed(lambda ws: [str(ws.run)]))
test_study_refuses_bad_input = fuzz("study", study_items, fixed(lambda ws: ["--output", str(ws.root / "study")]))


def test_report_inputs_tried():
    """Last in the file: how many inputs each command was given (printed with -s; docs/reliability.md)."""
    print("\nfuzz inputs tried:", json.dumps(TRIED), "total", sum(TRIED.values()))
    assert all(TRIED.get(command, 0) > 0 for command in GOOD) or not TRIED
