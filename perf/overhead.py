"""Step-time and memory overhead of entropy-rl vs plain TRL GRPOTrainer, measured side by side in one process.

    python perf/overhead.py                                  # built-in tiny model, ~3 min on 2 CPU cores
    python perf/overhead.py --vocab 32000 --hidden 256       # a vocabulary where a full-vocab pass shows
    python perf/overhead.py --output docs/performance-cpu.json --markdown docs/performance-cpu.md

Every configuration trains the same random model on the same prompts with the same seed. Configurations run in
interleaved blocks (plain, diagnostics, ..., plain, diagnostics, ...) so that slow phases of a shared machine hit all of
them alike; the first steps of each block are dropped as warm-up. Reported per configuration: median step time, its
ratio to plain TRL, and peak memory (CUDA: max_memory_allocated above the block's start; CPU: the process's peak
resident set size while it ran; median over blocks, after one untimed warm-up block) with its ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from entropy_rl.config import EntropyGRPOConfig
from entropy_rl.trainer import EntropyGRPOTrainer

# name -> EntropyGRPOConfig overrides; None = plain TRL GRPOTrainer
CONFIGS: dict[str, dict[str, Any] | None] = {
    "trl": None,
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
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def spread_reward(completions, **kwargs) -> list[float]:
    """Deterministic reward with spread inside each group, so advantages (and every method) are active."""
    return [float(sum(map(ord, c)) % 3 == 0) for c in completions]


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


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
class Result:
    step_times: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)


def run_block(
    name: str, overrides: dict[str, Any] | None, args, tokenizer, dataset, out: Path
) -> tuple[list[float], int]:
    common = dict(
        output_dir=str(out / name),
        max_steps=args.steps,
        learning_rate=1e-5,
        per_device_train_batch_size=args.batch,
        num_generations=8,
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
    model = build_model(args.vocab, args.hidden, args.layers)
    if overrides is None:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=spread_reward,
            args=GRPOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        trainer = EntropyGRPOTrainer(
            model=model,
            reward_funcs=spread_reward,
            args=EntropyGRPOConfig(**common, **overrides),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)
    with PeakMemory() as memory:
        trainer.train()
    times = timer.times[args.warmup :]
    if args.off_policy:
        # Only every second step generates: single step times are bimodal and their median meaningless. Time whole
        # rollout cycles (generation + both updates) instead.
        cycle = OFF_POLICY["num_iterations"]
        times = [sum(times[i : i + cycle]) for i in range(0, len(times) - cycle + 1, cycle)]
    return times, memory.peak


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=76)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="completions per step (8 per prompt)")
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
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the results as a markdown table")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmark-overhead"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.configs.split(",")
    if not args.off_policy and "kl_cov" in names:
        names.remove("kl_cov")  # on-policy KL-Cov is refused by the config; run it with --off-policy
    tokenizer = build_tokenizer(args.vocab)
    prompts = [{"prompt": f"{a}+{b}="} for a in range(40) for b in range(40)]
    dataset = Dataset.from_list(prompts)
    results = {name: Result() for name in names}
    started = time.perf_counter()
    run_block("trl", None, args, tokenizer, dataset, args.workdir)  # untimed: first-use allocations and caches
    for block in range(args.blocks):
        for name in names:
            times, peak = run_block(name, CONFIGS[name], args, tokenizer, dataset, args.workdir)
            results[name].step_times += times
            results[name].peaks.append(peak)
            print(f"block {block + 1}/{args.blocks} {name:28s} median {statistics.median(times) * 1000:8.1f} ms")
    base_time = statistics.median(results["trl"].step_times)
    base_memory = statistics.median(results["trl"].peaks)
    rows = []
    for name in names:
        median = statistics.median(results[name].step_times)
        peak = statistics.median(results[name].peaks)
        rows.append(
            {
                "config": name,
                "median_step_s": median,
                "time_ratio": median / base_time,
                "peak_memory_mb": peak / 2**20,
                "memory_ratio": peak / base_memory if base_memory else None,
                "timed_steps": len(results[name].step_times),
            }
        )
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)",
        "memory": "max_memory_allocated" if torch.cuda.is_available() else "peak RSS of the process",
        "wall_time_s": time.perf_counter() - started,
        "rows": rows,
    }
    table = [
        "| configuration | median step (ms) | time ratio vs TRL | peak memory (MiB) | memory ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ratio = "n/a" if row["memory_ratio"] is None else f"{row['memory_ratio']:.2f}"
        table.append(
            f"| {row['config']} | {row['median_step_s'] * 1000:.1f} | {row['time_ratio']:.3f} | "
            f"{row['peak_memory_mb']:.0f} | {ratio} |"
        )
    print("\n".join(table))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    return report


if __name__ == "__main__":
    main()
