"""Math benchmarks declared as small YAML specs (eval/benchmarks/*.yaml) and loaded into a list of problems.

A spec names where the problems come from (a local JSONL file, a Hub dataset, or a generator function), which field
holds the question, how to get the gold answer, the prompt template and the default sampling. See
docs/evaluation.md for the format. Nothing here imports torch: loading a benchmark is cheap.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from entropy_rl.errors import ConfigError, EntropyRLError
from entropy_rl.grading import after_hashes, last_boxed, normalize_number
from entropy_rl.resources import benchmark_dir, find_recipe, yaml_error_text

# eval/benchmarks/ in a checkout, the packaged copy in a wheel install (entropy_rl/resources.py).
BENCHMARK_DIR = benchmark_dir()
DATA_DIR_ENV = "ENTROPY_RL_DATA_DIR"
DATA_DIR_PLACEHOLDER = "${" + DATA_DIR_ENV + "}"

_REQUIRED_KEYS = {"name", "source", "question_field", "gold", "prompt", "sampling", "max_new_tokens"}
_SPEC_KEYS = _REQUIRED_KEYS | {"id_field", "chat_template"}
_SOURCE_KEYS = {"path", "hub", "config", "split", "generator", "kwargs"}
_SAMPLING_KEYS = {"k", "temperature", "top_p"}
_GOLD_RULES = {
    "verbatim": lambda value: value.strip() or None,
    "after_hashes": after_hashes,
    "last_boxed": last_boxed,
}


class BenchmarkError(EntropyRLError):
    """A benchmark spec or its data is unusable; the message says which file (and line) and why."""


@dataclass(frozen=True)
class Sampling:
    k: int
    temperature: float
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise BenchmarkError(f"invalid sampling {self}: need k >= 1, temperature >= 0, 0 < top_p <= 1")
        if self.temperature == 0 and self.k > 1:
            raise BenchmarkError(f"k={self.k} samples at temperature 0 would all be the same greedy answer")


@dataclass
class Benchmark:
    name: str
    source: str  # the resolved file, Hub dataset or generator the problems came from
    problems: list[dict[str, str]]  # {"id", "question", "prompt", "gold"}
    sampling: Sampling
    max_new_tokens: int
    chat_template: bool  # wrap the prompt in the tokenizer's chat template when it has one


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """Directory of the offline benchmark files: the argument, else $ENTROPY_RL_DATA_DIR, else None (none given)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else None


def available_benchmarks() -> list[str]:
    return sorted(path.stem for path in BENCHMARK_DIR.glob("*.yaml"))


def _spec_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        packaged = BENCHMARK_DIR / path.name
        if not path.is_file() and path.parent == Path("eval", "benchmarks") and packaged.is_file():
            return packaged  # the documented eval/benchmarks/NAME.yaml, from any directory
        try:  # as given, else a packaged recipe's data spec (recipes/data/...) from any directory
            return find_recipe(str(name_or_path))
        except ConfigError:
            raise BenchmarkError(f"benchmark spec {path} not found") from None
    path = BENCHMARK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise BenchmarkError(f"unknown benchmark {name_or_path!r}; known: {', '.join(available_benchmarks())}")
    return path


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise BenchmarkError(yaml_error_text(path, error)) from error
    except (OSError, UnicodeDecodeError) as error:
        raise BenchmarkError(f"{path}: cannot be read as text ({error})") from error
    if not isinstance(spec, dict):
        raise BenchmarkError(f"{path}: a benchmark spec must be a mapping")
    if missing := _REQUIRED_KEYS - set(spec):
        raise BenchmarkError(f"{path}: missing keys {sorted(missing)}")
    # Unknown keys are rejected so that a typo ("temprature") cannot silently fall back to a default.
    for section, allowed in [(spec, _SPEC_KEYS), (spec["source"], _SOURCE_KEYS), (spec["sampling"], _SAMPLING_KEYS)]:
        if not isinstance(section, dict):
            raise BenchmarkError(f"{path}: 'source' and 'sampling' must be mappings")
        if unknown := set(section) - allowed:
            raise BenchmarkError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    gold_rules = spec["gold"] if isinstance(spec["gold"], list) else [None]
    for rule in gold_rules:
        if not isinstance(rule, dict) or set(rule) != {"field", "rule"} or rule["rule"] not in _GOLD_RULES:
            raise BenchmarkError(f"{path}: gold is a list of {{field, rule}} with rule in {sorted(_GOLD_RULES)}")
    if "{question}" not in spec["prompt"]:
        raise BenchmarkError(f"{path}: the prompt template must contain {{question}}")
    return spec


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file; a byte sequence that is not UTF-8 is a BenchmarkError naming the file."""
    with path.open(encoding="utf-8") as handle:
        try:
            yield from handle
        except UnicodeDecodeError as error:
            byte = error.object[error.start]
            raise BenchmarkError(f"{path}: not UTF-8 text ({error.reason}: byte {byte:#x})") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for line_number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            # Without its line end: json would place an error at the end of a cut line at "line 2 column 1".
            row = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as error:
            raise BenchmarkError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from error
        if not isinstance(row, dict):
            raise BenchmarkError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _read_hub(name: str, source: dict[str, Any], local: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of the spec's Hub dataset; `local` says which local file was looked for first (for the error)."""
    import datasets

    hub, split = source["hub"], source.get("split", "test")
    try:
        dataset = datasets.load_dataset(hub, source.get("config"), split=split)
    except Exception as error:  # offline, unknown id, auth...: all end the same way for the user
        reason = (str(error).strip().splitlines() or [""])[0]  # one line: the datasets message can run to pages
        raise BenchmarkError(
            f"benchmark {name}: {local}, and the Hub dataset {hub!r} (split {split!r}) could not be loaded "
            f"({type(error).__name__}: {reason}). Offline? Save its rows as that JSONL file (the folder is --data_dir "
            f"or ${DATA_DIR_ENV}), or pass the file itself (eval --data_file, train --dataset_file)"
        ) from error
    for index, row in enumerate(dataset):
        yield f"{hub}[{split}] row {index}", row


def _read_generator(target: str, kwargs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    for index, row in enumerate(function(**kwargs)):
        yield f"{target} problem {index}", row


def _local_path(raw: str, spec_dir: Path, data_dir: Path | None) -> Path | None:
    """A spec's `source.path`: ${ENTROPY_RL_DATA_DIR} expanded (None when no data directory is given), and a relative
    path taken from the spec file's folder, so that a spec and its data can move together."""
    if DATA_DIR_PLACEHOLDER in raw:
        if data_dir is None:
            return None
        raw = raw.replace(DATA_DIR_PLACEHOLDER, str(data_dir))
    path = Path(raw).expanduser()
    return path if path.is_absolute() else spec_dir / path


def _missing_local(raw: str | None, path: Path | None) -> str:
    """What was looked for locally and not found, for error messages."""
    if raw is None:
        return "no local file (the spec has no source.path)"
    if path is None:
        return f"no local file ({raw}: no data directory given, by --data_dir or ${DATA_DIR_ENV})"
    return f"no local file {path}"


def _rows(
    spec: dict[str, Any], spec_path: Path, data_dir: Path | None, data_file: str | Path | None
) -> tuple[str, Iterator]:
    """(description of the source, iterator of (location, row)); a local file beats a Hub dataset."""
    source = spec["source"]
    if data_file:
        if not Path(data_file).is_file():
            raise BenchmarkError(f"benchmark {spec['name']}: data file {data_file} not found")
        return str(data_file), _read_jsonl(Path(data_file))
    raw = str(source["path"]) if source.get("path") else None
    path = None if raw is None else _local_path(raw, spec_path.parent, data_dir)
    if path is not None and path.is_file():
        return str(path), _read_jsonl(path)
    if raw is not None and not (source.get("hub") or source.get("generator")):
        raise BenchmarkError(
            f"benchmark {spec['name']}: {_missing_local(raw, path)} (set --data_dir or ${DATA_DIR_ENV} to the "
            "directory holding it, or pass the file itself)"
        )
    if source.get("hub"):
        return source["hub"], _read_hub(spec["name"], source, _missing_local(raw, path))
    if source.get("generator"):
        return source["generator"], _read_generator(source["generator"], source.get("kwargs") or {})
    raise BenchmarkError(f"benchmark {spec['name']}: source needs one of path, hub or generator")


def _field(row: dict[str, Any], field: str, where: str) -> str:
    if field not in row or row[field] is None:
        raise BenchmarkError(f"{where}: missing field {field!r} (fields present: {sorted(row)})")
    return str(row[field])


def _gold(row: dict[str, Any], rules: list[dict[str, str]], where: str) -> str:
    """First gold rule whose field is present and yields an answer."""
    for rule in rules:
        if row.get(rule["field"]) is not None and (gold := _GOLD_RULES[rule["rule"]](str(row[rule["field"]]))):
            return normalize_number(gold)
    tried = ", ".join(f"{rule['rule']}({rule['field']})" for rule in rules)
    raise BenchmarkError(f"{where}: no gold answer: missing field or nothing found by {tried}")


def load_benchmark(
    name_or_yaml_path: str | Path,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    data_file: str | Path | None = None,
) -> Benchmark:
    """Load a benchmark by name (eval/benchmarks/<name>.yaml) or spec path; ``data_file`` replaces its data source.

    ``limit`` keeps the first problems only. Problem ids come from the spec's ``id_field``, else the row index.
    """
    spec_path = _spec_path(name_or_yaml_path)
    spec = _read_spec(spec_path)
    source, rows = _rows(spec, spec_path, resolve_data_dir(data_dir), data_file)
    problems: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        if limit is not None and index >= limit:
            break
        question = _field(row, spec["question_field"], where)
        problem_id = _field(row, spec["id_field"], where) if spec.get("id_field") else str(index)
        if problem_id in seen:
            raise BenchmarkError(f"{where}: duplicate problem id {problem_id!r} (first at {seen[problem_id]})")
        seen[problem_id] = where
        problems.append(
            {
                "id": problem_id,
                "question": question,
                # str.replace, not str.format: LaTeX braces in templates ("\boxed{}") need no escaping.
                "prompt": spec["prompt"].replace("{question}", question),
                "gold": _gold(row, spec["gold"], where),
            }
        )
    if not problems:
        raise BenchmarkError(f"benchmark {spec['name']}: no problems in {source}")
    sampling = spec["sampling"]
    return Benchmark(
        name=spec["name"],
        source=source,
        problems=problems,
        sampling=Sampling(int(sampling["k"]), float(sampling["temperature"]), float(sampling.get("top_p", 1.0))),
        max_new_tokens=int(spec["max_new_tokens"]),
        chat_template=bool(spec.get("chat_template", True)),
    )
