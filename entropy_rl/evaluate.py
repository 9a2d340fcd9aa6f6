"""`entropy-rl eval`: math benchmarks for a model or for every checkpoint of a run (the entropy-performance curve).

    entropy-rl eval --model DIR --benchmarks gsm8k,math500 [--output-dir OUT]
    entropy-rl eval --run RUN_DIR --benchmarks arithmetic,gsm8k          # appends RUN_DIR/curve.jsonl
    accelerate launch --num_processes N -m entropy_rl.cli eval ...       # data parallel (docs/evaluation.md)

Per benchmark: avg@k, unbiased pass@k, mean response length (tokens) and mean token entropy of the responses at the
sampling temperature. Problems are cut into batches once, globally; whole batches are sharded over processes and
every sample draws from its own seeded generator, so results do not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entropy_rl.benchmarks import Benchmark, BenchmarkError, Sampling, load_benchmark
from entropy_rl.errors import ConfigError
from entropy_rl.grading import DEFAULT_TIMEOUT_S, Grader

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate; ``None`` overrides keep each benchmark's own default."""

    batch_size: int = 32  # sequences per generate() call
    seed: int = 0
    k: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    pass_ks: tuple[int, ...] = ()  # reported besides pass@1 and pass@k
    progress: bool = True

    def sampling(self, benchmark: Benchmark) -> Sampling:
        default = benchmark.sampling
        return Sampling(
            k=self.k if self.k is not None else default.k,
            temperature=self.temperature if self.temperature is not None else default.temperature,
            top_p=self.top_p if self.top_p is not None else default.top_p,
        )


# ----------------------------------------------------------------------------------------------------- metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the (huge) binomial coefficients.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize(records: Sequence[dict[str, Any]], pass_ks: Iterable[int] = ()) -> dict[str, Any]:
    """Benchmark metrics from per-problem records (each with its k samples' grades, lengths and entropies)."""
    k = len(records[0]["correct"])
    ks = sorted({1, k, *(kk for kk in pass_ks if kk <= k)})
    total = sum(len(record["correct"]) for record in records)
    return {
        "num_problems": len(records),
        "k": k,
        "avg@k": sum(sum(r["correct"]) / len(r["correct"]) for r in records) / len(records),
        "pass@k": {str(kk): sum(pass_at_k(k, sum(r["correct"]), kk) for r in records) / len(records) for kk in ks},
        "mean_length": sum(n for r in records for n in r["num_tokens"]) / total,
        "eval_entropy": sum(h for r in records for h in r["entropy"]) / total,
        "grading_timeouts": sum(status == "timeout" for r in records for status in r["status"]),
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width summary table, one line per row (a benchmark, or a (checkpoint, benchmark) pair)."""
    ks = sorted({kk for row in rows for kk in row["pass@k"]}, key=int)
    header = ["step", "benchmark", "n", "k", "avg@k", *(f"pass@{kk}" for kk in ks), "length", "entropy"]
    lines = [header]
    for row in rows:
        pass_cols = [f"{row['pass@k'][kk]:.4f}" if kk in row["pass@k"] else "" for kk in ks]
        lines.append(
            [str(row.get("step", "")), row["benchmark"], str(row["num_problems"]), str(row["k"])]
            + [f"{row['avg@k']:.4f}", *pass_cols, f"{row['mean_length']:.1f}", f"{row['eval_entropy']:.4f}"]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


# -------------------------------------------------------------------------------------------------- generation


def sample_seed(seed: int, benchmark: str, problem_id: str, sample: int) -> int:
    """Seed of one sample: a stable hash (not Python's salted hash()) of what identifies it."""
    digest = hashlib.sha256(f"{seed}/{benchmark}/{problem_id}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds must fit in a signed int64


def _token_entropy(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy (nats) of softmax(scores / T) over the last dimension; -inf scores (banned tokens) contribute 0."""
    import torch

    return torch.special.entr(torch.softmax(scores.float() / temperature, dim=-1)).sum(-1)


def _entropy_temperature(sampling: Sampling) -> float:
    return sampling.temperature if sampling.temperature > 0 else 1.0  # greedy: the model's own distribution


class _SampleAndMeasure:
    """Logits processor that generate() runs last: records each row's token entropy, then chooses the token.

    Sampling uses the Gumbel-max trick (argmax of log p + Gumbel noise draws from p) with one torch.Generator per
    row, so each sample depends only on its own seed, never on batch composition or sharding; generate() itself
    runs greedy and takes the argmax. Entropies are reduced to one float per row and step as they are produced:
    keeping the full-vocabulary scores (output_scores / output_logits) would hold steps x rows x vocab floats.
    """

    def __init__(self, sampling: Sampling, seeds: Sequence[int], device: torch.device) -> None:
        import torch

        self.sampling = sampling
        self.device = device
        self.entropies: list[torch.Tensor] = []
        self.generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        temperature, top_p = self.sampling.temperature, self.sampling.top_p
        self.entropies.append(_token_entropy(scores, _entropy_temperature(self.sampling)))
        if temperature == 0:
            return scores
        logp = torch.log_softmax(scores.float() / temperature, dim=-1)
        if top_p < 1:
            sorted_logp, order = logp.sort(dim=-1, descending=True)
            # Drop a token when the tokens ranked above it already hold top_p of the mass (the first never is).
            drop = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() > top_p
            logp = logp.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        uniform = torch.stack([torch.rand(logp.shape[-1], generator=g, device=self.device) for g in self.generators])
        return logp - torch.log(-torch.log(uniform.clamp_(min=torch.finfo(torch.float32).tiny)))


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return sorted({eos} if isinstance(eos, int) else set(eos))


def _completion_mask(completions: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """True on generated tokens up to and including the first end-of-sequence token (as TRL's completion mask)."""
    import torch

    is_eos = torch.isin(completions, torch.tensor(eos_ids, device=completions.device)).int()
    return (is_eos.cumsum(-1) - is_eos) == 0


def _render_prompt(tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark, prompt: str) -> str:
    if benchmark.chat_template and tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def _generate_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    seeds: list[int],
    sampling: Sampling,
    max_new_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion token ids (rows x steps, padded after the end) and per-token entropies (same shape)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    # No special tokens, left padding: prompts are tokenized exactly as TRL's GRPOTrainer does for training.
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    inputs = inputs.to(model.device)
    sampler = _SampleAndMeasure(sampling, seeds, model.device)
    eos_ids = _eos_ids(model, tokenizer)
    # Neutral values set explicitly: generate() fills unset ones from the checkpoint's generation_config (which
    # may carry a repetition penalty or top-k), and this evaluation must measure the plain distribution.
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        temperature=1.0,
        top_k=None,
        top_p=1.0,
        repetition_penalty=1.0,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        use_cache=True,  # training may have turned the KV cache off (gradient checkpointing)
    )
    output = model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([sampler]))
    completions = output[:, inputs["input_ids"].shape[1] :]
    # generate() may run a few steps past the end and then undo them, so keep as many entropies as tokens.
    entropies = torch.stack(sampler.entropies, dim=1)[:, : completions.shape[1]]
    return completions, entropies


def rescore_entropies(
    model: PreTrainedModel, prompt_ids: Sequence[int], completion_ids: Sequence[int], temperature: float
) -> list[float]:
    """Token entropies of a given completion by one teacher-forced forward pass (used for vLLM's samples)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=model.device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return _token_entropy(logits, temperature).tolist()


def _score_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    batch: list[dict[str, str]],
    settings: EvalSettings,
    llm: Any,
) -> list[dict[str, Any]]:
    """Generate k samples for each problem of `batch`; one record per problem, not graded yet."""
    sampling = settings.sampling(benchmark)
    max_new_tokens = settings.max_new_tokens or benchmark.max_new_tokens
    rows = [(problem, j) for problem in batch for j in range(sampling.k)]
    prompts = [_render_prompt(tokenizer, benchmark, problem["prompt"]) for problem, _ in rows]
    seeds = [sample_seed(settings.seed, benchmark.name, problem["id"], j) for problem, j in rows]
    eos_ids = _eos_ids(model, tokenizer)
    if llm is None:
        completions, entropies = _generate_hf(model, tokenizer, prompts, seeds, sampling, max_new_tokens)
        mask = _completion_mask(completions, eos_ids)
        token_lists = [row[keep].tolist() for row, keep in zip(completions, mask, strict=True)]
        entropy_lists = [row[keep].tolist() for row, keep in zip(entropies, mask, strict=True)]
    else:
        prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        token_lists = _generate_vllm(llm, prompt_ids, seeds, sampling, max_new_tokens)
        temperature = _entropy_temperature(sampling)
        entropy_lists = [
            rescore_entropies(model, ids, tokens, temperature)
            for ids, tokens in zip(prompt_ids, token_lists, strict=True)
        ]
    records: dict[str, dict[str, Any]] = {}
    for (problem, _), tokens, token_entropies in zip(rows, token_lists, entropy_lists, strict=True):
        if problem["id"] not in records:
            records[problem["id"]] = {
                "id": problem["id"],
                "prompt": problem["prompt"],
                "gold": problem["gold"],
                "samples": [],
                "num_tokens": [],
                "entropy": [],
            }
        record = records[problem["id"]]
        record["samples"].append(tokenizer.decode(tokens, skip_special_tokens=True))
        record["num_tokens"].append(len(tokens))
        record["entropy"].append(sum(token_entropies) / max(1, len(token_entropies)))
    return list(records.values())


def _generate_vllm(
    llm: Any, prompt_ids: list[list[int]], seeds: list[int], sampling: Sampling, max_new_tokens: int
) -> list[list[int]]:
    """Completion token ids from vLLM, one request per sample with that sample's seed (as the HF path)."""
    from vllm import SamplingParams

    params = [
        SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=max_new_tokens, seed=seed)
        for seed in seeds
    ]
    # Token ids, not text: vLLM would otherwise add special tokens that the transformers path does not.
    requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
    return [list(output.outputs[0].token_ids) for output in llm.generate(requests, params, use_tqdm=False)]


# -------------------------------------------------------------------------------------------------- evaluation


def _state() -> PartialState:
    import torch
    from accelerate import PartialState

    # cpu=True on a machine without CUDA is what makes a multi-process launch set up gloo (MULTI_CPU); without it
    # accelerate 1.15 leaves every process alone, each evaluating everything.
    return PartialState(cpu=not torch.cuda.is_available())


def evaluate_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmark: Benchmark,
    grader: Grader,
    settings: EvalSettings,
    llm: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-problem records) of one benchmark; every process must call it, all get the full results."""
    import torch
    from accelerate.utils import gather_object
    from tqdm import tqdm

    state = _state()
    sampling = settings.sampling(benchmark)
    per_batch = max(1, settings.batch_size // sampling.k)
    problems = benchmark.problems
    batches = [problems[i : i + per_batch] for i in range(0, len(problems), per_batch)]
    records: list[dict[str, Any]] = []
    with state.split_between_processes(batches) as my_batches, torch.inference_mode():
        bar = tqdm(
            total=sum(len(batch) for batch in my_batches),
            desc=f"{benchmark.name} (rank 0 of {state.num_processes})" if state.num_processes > 1 else benchmark.name,
            unit="problem",
            disable=not (settings.progress and state.is_main_process),
        )
        for batch in my_batches:
            records.extend(_score_batch(model, tokenizer, benchmark, batch, settings, llm))
            bar.update(len(batch))
        bar.close()
    grades = grader.grade_many([(sample, r["gold"]) for r in records for sample in r["samples"]])
    position = 0
    for record in records:
        mine = grades[position : position + len(record["samples"])]
        position += len(mine)
        record["extracted"] = [grade.extracted for grade in mine]
        record["correct"] = [grade.correct for grade in mine]
        record["status"] = [grade.status for grade in mine]
    records = gather_object(records)
    metrics = {"benchmark": benchmark.name, **summarize(records, settings.pass_ks)}
    metrics |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "source": benchmark.source}
    return metrics, records


def _write_outputs(output_dir: Path, results: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    """<output_dir>/<benchmark>.jsonl (one line per problem) and summary.json (metrics, merged with earlier ones)."""
    from entropy_rl.jsonl import rewrite_rows

    output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name, (metrics, records) in results.items():
        rewrite_rows(output_dir / f"{name}.jsonl", records)
        summary[name] = metrics
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, summary_path)  # readers never see a half-written summary


def evaluate_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benchmarks: Sequence[Benchmark | str],
    *,
    settings: EvalSettings | None = None,
    grader: Grader | None = None,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    llm: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory model on benchmarks (objects or names); returns {benchmark: metrics} on every process.

    Callable from a trainer callback on all ranks (the model unwrapped, e.g. ``accelerator.unwrap_model``): it
    switches the model to eval mode and back, and only the main process writes ``output_dir``.
    """
    settings = settings or EvalSettings()
    loaded = [b if isinstance(b, Benchmark) else load_benchmark(b, data_dir=data_dir, limit=limit) for b in benchmarks]
    own_grader = grader is None
    grader = grader or Grader()
    was_training = model.training
    model.eval()
    try:
        results = {b.name: evaluate_benchmark(model, tokenizer, b, grader, settings, llm) for b in loaded}
    finally:
        model.train(was_training)
        if own_grader:
            grader.close()
    if output_dir is not None and _state().is_main_process:
        _write_outputs(Path(output_dir), results)
    return {name: metrics for name, (metrics, _) in results.items()}


# ------------------------------------------------------------------------------------------------------ curves


def _load_curve(path: Path) -> list[dict[str, Any]]:
    """Rows of curve.jsonl. A torn last line (killed mid-append) is dropped, and the file is rewritten without it
    so that the next append starts on a fresh line instead of gluing onto the fragment."""
    from entropy_rl.jsonl import read_rows, rewrite_rows

    rows = read_rows(path)
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        if torn:
            rewrite_rows(path, rows)
    return rows


def _train_entropy_by_step(run_dir: Path) -> dict[int, float | None]:
    """`entropy/seq_mean` per step from the run's metrics file, read exactly as `entropy-rl fit` reads it."""
    from entropy_rl.fit import DEFAULT_ENTROPY_KEY, LawFitError, load_run

    try:
        run = load_run(run_dir)
    except LawFitError as error:
        print(f"entropy-rl eval: train_entropy will be null: {error}", file=sys.stderr)
        return {}
    return {row["step"]: row.get(DEFAULT_ENTROPY_KEY) for row in run.metrics}


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name))]
    return sorted(found)


def load_model(path: str | Path, device: torch.device | str, dtype: str = "auto") -> tuple[Any, Any]:
    """Model (safetensors weights only: a pickle checkpoint could run code) and tokenizer saved in `path`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype == "auto":
        on_gpu = torch.device(device).type == "cuda"
        dtype = "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def evaluate_run(
    run_dir: str | Path,
    benchmarks: Sequence[Benchmark],
    *,
    settings: EvalSettings,
    grader: Grader,
    output_dir: str | Path | None = None,
    dtype: str = "auto",
) -> list[dict[str, Any]]:
    """Evaluate every RUN_DIR/checkpoint-<step>/ on `benchmarks`, appending one curve.jsonl row per pair.

    Pairs already in curve.jsonl are skipped, so an interrupted evaluation resumes where it stopped. Per-problem
    outputs go to ``output_dir/checkpoint-<step>/`` (default RUN_DIR/eval). Returns the rows added.
    """
    import torch
    from accelerate.utils import broadcast_object_list

    from entropy_rl.fit import CURVE_FILE
    from entropy_rl.jsonl import append_row

    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"{run_dir}: no checkpoint-<step>/ directories to evaluate")
    curve_path = run_dir / CURVE_FILE
    out_root = Path(output_dir) if output_dir is not None else run_dir / "eval"
    state = _state()
    # The main process alone reads (and repairs) the curve, then tells the others what is done.
    done = [None]
    if state.is_main_process:
        done = [{(row.get("checkpoint"), row.get("benchmark")) for row in _load_curve(curve_path)}]
    done_pairs = broadcast_object_list(done)[0]
    train_entropy = _train_entropy_by_step(run_dir)
    added = []
    for step, checkpoint in checkpoints:
        todo = [b for b in benchmarks if (checkpoint.name, b.name) not in done_pairs]
        if not todo:
            continue
        model, tokenizer = load_model(checkpoint, state.device, dtype)
        results = evaluate_checkpoint(
            model, tokenizer, todo, settings=settings, grader=grader, output_dir=out_root / checkpoint.name
        )
        for name, metrics in results.items():
            row = {
                "step": step,
                "checkpoint": checkpoint.name,
                "benchmark": name,
                "train_entropy": train_entropy.get(step),
                "eval_entropy": metrics["eval_entropy"],
                "avg@k": metrics["avg@k"],
                "k": metrics["k"],
                "pass@k": metrics["pass@k"],
                "mean_length": metrics["mean_length"],
                "num_problems": metrics["num_problems"],
            }
            if state.is_main_process:
                append_row(curve_path, row)  # flushed and fsynced: a kill loses at most this row
            added.append(row)
        del model, tokenizer
        gc.collect()  # free this checkpoint's weights before the next one is loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return added


# --------------------------------------------------------------------------------------------------------- CLI


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropy-rl eval", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="model directory (safetensors) to evaluate")
    target.add_argument("--run", help="run directory: evaluate each checkpoint-<step>/ and append to curve.jsonl")
    parser.add_argument("--benchmarks", required=True, help="comma-separated names (eval/benchmarks/) or YAML paths")
    parser.add_argument("--data-dir", help="directory of the offline benchmark files (default $ENTROPY_RL_DATA_DIR)")
    parser.add_argument("--data-file", help="JSONL file replacing the benchmark's data (one benchmark only)")
    parser.add_argument("--limit", type=int, help="first N problems of each benchmark")
    parser.add_argument("--k", type=int, help="samples per problem (default: the benchmark's)")
    parser.add_argument("--temperature", type=float, help="sampling temperature, 0 = greedy (default: benchmark's)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass (default: the benchmark's)")
    parser.add_argument("--max-new-tokens", type=int, help="response length limit (default: the benchmark's)")
    parser.add_argument("--pass-k", type=_int_list, default=(), help="extra k values for pass@k, e.g. 2,4,8")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per generate() call (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", help="per-problem JSONL + summary.json here (run mode: default RUN_DIR/eval)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--grading-timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per math-verify")
    parser.add_argument("--grading-workers", type=int, default=2, help="grading processes per evaluating process")
    parser.add_argument("--vllm", action="store_true", help="generate with vLLM (needs vllm and CUDA; one process)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _open_vllm(model_path: str, dtype: str, seed: int) -> Any:
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        raise ConfigError("--vllm needs the vllm package and a CUDA GPU; drop --vllm to generate with transformers")
    if _state().num_processes > 1:
        raise ConfigError("--vllm runs in a single process (one vLLM engine); launch without accelerate")
    from vllm import LLM

    # Leave GPU memory for the transformers copy of the model that scores the entropies.
    return LLM(model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=0.6)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    names = [name for name in args.benchmarks.split(",") if name.strip()]
    settings = EvalSettings(
        batch_size=args.batch_size,
        seed=args.seed,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        pass_ks=args.pass_k,
        progress=not args.no_progress,
    )
    state = _state()
    try:
        if args.data_file and len(names) != 1:
            raise ConfigError("--data-file replaces the data of one benchmark: pass exactly one in --benchmarks")
        if args.vllm and args.run:
            raise ConfigError("--vllm evaluates one --model; curves over checkpoints use transformers")
        benchmarks = [load_benchmark(n, args.data_dir, args.limit, args.data_file) for n in names]
        for benchmark in benchmarks:
            settings.sampling(benchmark)  # reject bad overrides (e.g. --k 4 with greedy) before loading a model
        with Grader(timeout_s=args.grading_timeout, workers=args.grading_workers) as grader:
            if args.run:
                rows = evaluate_run(
                    args.run, benchmarks, settings=settings, grader=grader, output_dir=args.output_dir, dtype=args.dtype
                )
            else:
                llm = _open_vllm(args.model, args.dtype, args.seed) if args.vllm else None
                model, tokenizer = load_model(args.model, state.device, args.dtype)
                results = evaluate_checkpoint(
                    model, tokenizer, benchmarks, settings=settings, grader=grader, output_dir=args.output_dir, llm=llm
                )
                rows = list(results.values())
    except (BenchmarkError, ConfigError, OSError) as error:  # OSError: a model or file that cannot be read
        print(f"entropy-rl eval: error: {error}", file=sys.stderr)
        return 2
    if state.is_main_process:
        print(format_table(rows) if rows else "nothing to evaluate: every (checkpoint, benchmark) is in curve.jsonl")
    return 0
