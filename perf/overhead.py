"""Step-time and memory overhead of entropy-rl vs plain TRL GRPOTrainer, measured side by side in one process.

    python perf/overhead.py                                  # built-in tiny model, ~3 min on 2 CPU cores
    python perf/overhead.py --vocab 76,32000,152064 --batch 16 --length 8 --configs trl_null,diagnostics,clip_v
    python perf/overhead.py --micro --vocab 32768,152064 --tokens 256,1024   # the vocabulary reduction alone
    python perf/overhead.py --output docs/performance/NAME.json --markdown docs/performance/NAME.md

Every configuration trains the same random model on the same prompts with the same seed. Configurations run in
interleaved blocks (plain, diagnostics, ..., plain, diagnostics, ...) so that slow phases of a shared machine hit all of
them alike; the first steps of each block are dropped as warm-up. Each block gives one ratio per configuration: its
median step time over plain TRL's median in the same round. Reported: the median of those ratios and their range
over blocks, for per-step CPU time of the training thread (steadier than wall time on a shared machine; run with one
torch thread) and for wall time, and peak memory (CUDA: max_memory_allocated above the block's start; CPU: the
process's peak resident set size while it ran). `trl_null` is plain TRL timed as a second configuration: it does no
extra work, so its ratio shows the noise floor of the machine. `--vocab` takes a list: one sweep per size.

`--micro` times the vocabulary pass alone on random hidden states, outside the trainer: TRL's chunked log p + entropy
(forward, and forward + backward), the one pass that adds N in the same tile loop, the separate fp32 N pass it
replaced, and the fold of one logits tile by TRL and by the one pass (no projection).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE, ChunkedLogProbFunction, _forward_tile, _torch_transform

from entropy_rl import onepass, stats
from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.trainer import EntropyGRPOTrainer

VOCAB_CHUNK = 32768  # TRL's vocabulary tile (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE)

# name -> EntropyGRPOConfig overrides; None = plain TRL GRPOTrainer
CONFIGS: dict[str, dict[str, Any] | None] = {
    "trl": None,
    "trl_null": None,  # plain TRL again: the noise floor
    "diagnostics": {"dynamics_every": 0},
    "diagnostics+measured_dH/10": {"dynamics_every": 10},
    "clip_higher": {"regularizer": "clip_higher", "diagnostics": False, "dynamics_every": 0},
    "clip_cov": {"regularizer": "clip_cov", "diagnostics": False, "dynamics_every": 0},
    "kl_cov": {"regularizer": "kl_cov", "diagnostics": False, "dynamics_every": 0},
    "steer": {"regularizer": "steer", "diagnostics": False, "dynamics_every": 0},
    "clip_b": {"regularizer": "clip_b", "diagnostics": False, "dynamics_every": 0},
    "clip_v": {"regularizer": "clip_v", "diagnostics": False, "dynamics_every": 0},
    "entropy_bonus": {"regularizer": "entropy_bonus", "diagnostics": False, "dynamics_every": 0},
    "high_entropy_tokens": {"regularizer": "high_entropy_tokens", "diagnostics": False, "dynamics_every": 0},
}
# KL-Cov refuses on-policy training; the others run on-policy. Plain TRL is timed once more under the same setting.
OFF_POLICY = {"num_iterations": 2}


def build_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Single-character tokens for the prompt digits plus filler tokens up to `vocab`, so generation can emit any id."""
    tokens = ["<pad>", "<bos>", "<eos>", "<unk>", *"0123456789+= ", *(f"<t{i}>" for i in range(vocab))]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens[:vocab])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_model(vocab: int, hidden: int, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 32),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a 1B model initialises in seconds on a GPU
        return LlamaForCausalLM(config)


def spread_reward(completions, **kwargs) -> list[float]:
    """Deterministic reward with spread inside each group, so advantages (and every method) are active."""
    return [float(sum(map(ord, c)) % 3 == 0) for c in completions]


class StepTimer(TrainerCallback):
    """Per optimizer step: wall time and CPU time of the training thread (all of torch's work with one thread)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.thread_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.thread_time() - self._start[1])


class PeakMemory:
    """Peak device memory above the block's start (CUDA), or the process's peak resident set size while the block runs
    (CPU, sampled every 5 ms; absolute, since freed CPU memory often stays with the process and a difference from
    the start would mostly measure the allocator)."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.peak = 0
        self._running = False

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = 0
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self.rss() - self._base)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._running = False
            self._thread.join()


@dataclass
class Block:
    """One configuration's run in one interleaved round: median step times and peak memory."""

    cpu_s: float
    wall_s: float
    peak: int
    steps: int


def build_trainer(name: str, overrides: dict[str, Any] | None, args, vocab: int, tokenizer, dataset, out: Path):
    common = dict(
        output_dir=str(out / name),
        max_steps=args.steps,
        learning_rate=1e-5,
        per_device_train_batch_size=args.batch,
        num_generations=args.generations,
        max_completion_length=args.length,
        temperature=1.0,
        beta=0.0,
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=False,
        logging_steps=10_000,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        **(OFF_POLICY if args.off_policy else {}),
    )
    model = build_model(vocab, args.hidden, args.layers)
    kwargs = dict(model=model, reward_funcs=spread_reward, train_dataset=dataset, processing_class=tokenizer)
    if overrides is None:
        return GRPOTrainer(args=GRPOConfig(**common), **kwargs)
    return EntropyGRPOTrainer(args=EntropyGRPOConfig(**common, **overrides), **kwargs)


def per_cycle(times: list[float], args) -> list[float]:
    if not args.off_policy:
        return times
    # Only every second step generates: single step times are bimodal and their median meaningless. Time whole
    # rollout cycles (generation + both updates) instead.
    cycle = OFF_POLICY["num_iterations"]
    return [sum(times[i : i + cycle]) for i in range(0, len(times) - cycle + 1, cycle)]


def run_block(name: str, args, vocab: int, tokenizer, dataset) -> Block:
    # A fresh output folder per block: entropy-rl refuses to overwrite an earlier run's folder, and each block is a
    # new run.
    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as out:
        trainer = build_trainer(name, CONFIGS[name], args, vocab, tokenizer, dataset, Path(out))
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.remove_callback(PrinterCallback)
        with PeakMemory() as memory:
            trainer.train()
    del trainer
    gc.collect()  # the next block's model, optimizer and peak start from an empty device
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cpu, wall = (per_cycle(t[args.warmup :], args) for t in (timer.cpu, timer.wall))
    return Block(statistics.median(cpu), statistics.median(wall), memory.peak, len(cpu))


def spread(values: list[float], resamples: int = 4000) -> dict[str, Any]:
    """Mean with its 95 % percentile-bootstrap interval (resampling the blocks), median, range and the values."""
    rng = random.Random(0)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    return {
        "mean": statistics.fmean(values),
        "ci95": [means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]],
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def sweep(vocab: int, names: list[str], args) -> list[dict[str, Any]]:
    """Interleaved blocks over `names` at one vocabulary size; per configuration the per-block ratios to plain TRL."""
    tokenizer = build_tokenizer(vocab)
    dataset = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(40) for b in range(40)])
    run_block("trl", args, vocab, tokenizer, dataset)  # untimed: first-use allocations and caches
    blocks: dict[str, list[Block]] = {name: [] for name in names}
    for round_ in range(args.blocks):
        for name in names:
            block = run_block(name, args, vocab, tokenizer, dataset)
            blocks[name].append(block)
            print(f"V={vocab} block {round_ + 1}/{args.blocks} {name:28s} cpu {block.cpu_s * 1000:8.1f} ms/step")
        if args.output:  # every round: a long run cut short keeps the rounds it measured
            partial = {"partial": True, "vocab": vocab, "rounds": round_ + 1, "rows": ratio_rows(blocks, names)}
            args.output.write_text(json.dumps(partial, indent=2))
    return ratio_rows(blocks, names)


def ratio_rows(blocks: dict[str, list[Block]], names: list[str]) -> list[dict[str, Any]]:
    """Per configuration: median step times, and its per-block ratios to plain TRL of the same round."""
    base = blocks["trl"]
    rows = []
    for name in names:
        mine = blocks[name]
        rows.append(
            {
                "config": name,
                "cpu_step_ms": statistics.median(b.cpu_s for b in mine) * 1000,
                "wall_step_ms": statistics.median(b.wall_s for b in mine) * 1000,
                "cpu_ratio": spread([b.cpu_s / t.cpu_s for b, t in zip(mine, base, strict=True)]),
                "wall_ratio": spread([b.wall_s / t.wall_s for b, t in zip(mine, base, strict=True)]),
                "peak_memory_mb": statistics.median(b.peak for b in mine) / 2**20,
                "memory_ratio": spread([b.peak / t.peak for b, t in zip(mine, base, strict=True)]),
                "timed_steps": sum(b.steps for b in mine),
            }
        )
    return rows


def ratio_cell(r: dict[str, Any]) -> str:
    """Mean [95 % bootstrap interval] (range)."""
    lo, hi = r["ci95"]
    return f"{r['mean']:.3f} [{lo:.3f}, {hi:.3f}] ({r['min']:.2f}–{r['max']:.2f})"


def sweep_table(vocab: int, rows: list[dict[str, Any]]) -> list[str]:
    table = [
        f"Vocabulary {vocab:,}: ratio to plain TRL, mean [95 % bootstrap interval over blocks] (range over blocks)",
        "",
        "| configuration | CPU ms/step | CPU-time ratio | wall-time ratio | peak memory (MiB) | memory ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        table.append(
            f"| {row['config']} | {row['cpu_step_ms']:.1f} | {ratio_cell(row['cpu_ratio'])} | "
            f"{ratio_cell(row['wall_ratio'])} | {row['peak_memory_mb']:.0f} | {ratio_cell(row['memory_ratio'])} |"
        )
    return [*table, ""]


# ---------------------------------------------------------------- micro-benchmark: the vocabulary pass alone
def micro_cases(tokens: int, vocab: int, hidden: int) -> dict[str, Any]:
    """Closures over the same hidden states and head; each returns nothing and does one pass."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * hidden**-0.5 * 3  # logits of std ~3
    t = torch.randint(0, vocab, (tokens,), generator=g)
    h_grad = h.clone().requires_grad_()
    fold_rows = min(tokens, TOKEN_CHUNK_SIZE)
    tile = (h[:fold_rows] @ w[:VOCAB_CHUNK].T).contiguous()
    outputs = ("log_probs", "entropy")

    def head(fn, x):
        return fn.apply(x, w, None, t, 1.0, VOCAB_CHUNK, None, 1.0, outputs)

    def one_pass(x):
        with onepass.capture():
            return head(onepass.OnePassLogProbFunction, x)

    def backward(out):
        (out[0].sum() + out[1].sum()).backward()

    def trl_fold():
        state = [torch.full((fold_rows,), -math.inf), *(torch.zeros(fold_rows) for _ in range(4))]
        state += [torch.full((fold_rows,), -math.inf), torch.zeros(fold_rows)]
        _forward_tile(tile, tile.stride(0), t[:fold_rows], *state, 0, tile.shape[1], 1.0, 1.0, 1.0, False,
                      True, False, False, False, 1024)  # fmt: skip

    def one_pass_fold():
        z = _torch_transform(tile.float(), 1.0, 1.0, 1.0, False)  # what both folds start from
        stats.VocabSums.empty(fold_rows, "cpu").fold(z, t[:fold_rows], torch.zeros(fold_rows))

    return {
        "trl: log p + H, forward": lambda: head(ChunkedLogProbFunction, h),
        "null: the same again": lambda: head(ChunkedLogProbFunction, h),
        "one pass: log p + H + N, forward": lambda: one_pass(h),
        "before: TRL forward + separate N pass": lambda: (head(ChunkedLogProbFunction, h), stats.vocab_stats(h, w, t)),
        "trl: forward + backward": lambda: backward(head(ChunkedLogProbFunction, h_grad)),
        "one pass: forward + backward": lambda: backward(one_pass(h_grad)),
        "fold of one tile, TRL (log p + H)": trl_fold,
        "fold of one tile, one pass (+ N)": one_pass_fold,
    }


def micro(args) -> tuple[list[dict[str, Any]], list[str]]:
    """Interleaved repetitions of every case; CPU time of this thread, ratios within each repetition."""
    results, lines = [], []
    for vocab in args.vocab:
        for tokens in args.tokens:
            cases = micro_cases(tokens, vocab, args.hidden)
            times: dict[str, list[float]] = {name: [] for name in cases}
            order = list(cases)
            for rep in range(args.reps + 1):
                for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate: no case always first
                    start = time.thread_time()
                    cases[name]()
                    if rep:  # the first repetition warms up
                        times[name].append(time.thread_time() - start)
            results.append(micro_row(vocab, tokens, times))
            lines += micro_lines(results[-1])
    return results, lines


def micro_row(vocab: int, tokens: int, times: dict[str, list[float]]) -> dict[str, Any]:
    def ratios(name: str, base: str) -> dict[str, float]:
        return spread([a / b for a, b in zip(times[name], times[base], strict=True)])

    row = {"vocab": vocab, "tokens": tokens, "cases": {}}
    for name in times:
        base = "trl: forward + backward" if "backward" in name else "trl: log p + H, forward"
        base = "fold of one tile, TRL (log p + H)" if name.startswith("fold") else base
        row["cases"][name] = {"ms": statistics.median(times[name]) * 1000, "ratio": ratios(name, base), "base": base}
    return row


def micro_lines(row: dict[str, Any]) -> list[str]:
    lines = [
        f"Vocabulary {row['vocab']:,}, {row['tokens']:,} tokens: CPU time, ratio mean [95 % bootstrap interval] "
        "(range) over repetitions",
        "",
        "| case | CPU ms | ratio | to |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, case in row["cases"].items():
        lines.append(f"| {name} | {case['ms']:.1f} | {ratio_cell(case['ratio'])} | {case['base']} |")
    return [*lines, ""]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--vocab", type=ints, default=[76], help="vocabulary size(s), comma-separated: one sweep each")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="completions per step")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--length", type=int, default=16, help="max completion tokens")
    parser.add_argument("--steps", type=int, default=14, help="steps per block")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each block not timed")
    parser.add_argument("--blocks", type=int, default=3, help="interleaved rounds over all configurations")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument(
        "--off-policy",
        action="store_true",
        help="num_iterations=2 for every configuration; times are then per rollout cycle of 2 optimizer steps",
    )
    parser.add_argument("--micro", action="store_true", help="time the vocabulary pass alone (see above)")
    parser.add_argument("--tokens", type=ints, default=[256, 1024], help="--micro: token counts, comma-separated")
    parser.add_argument("--reps", type=int, default=5, help="--micro: timed repetitions")
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the results as markdown tables")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark-overhead"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.micro:
        results, lines = micro(args)
    else:
        names = args.configs.split(",")
        if not args.off_policy and "kl_cov" in names:
            names.remove("kl_cov")  # on-policy KL-Cov is refused by the config; run it with --off-policy
        names = ["trl", *(n for n in names if n != "trl")]
        results, lines = [], []
        for vocab in args.vocab:
            results.append({"vocab": vocab, "rows": sweep(vocab, names, args)})
            lines += sweep_table(vocab, results[-1]["rows"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device": device,
        "memory": "max_memory_allocated" if torch.cuda.is_available() else "peak RSS of the process",
        "wall_time_s": time.perf_counter() - started,
        "results": results,
    }
    print("\n".join(lines))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
