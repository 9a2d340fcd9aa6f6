"""Supervised warm-up of the toy policy to a partial accuracy: how the shipped policy (entropy_rl/toy/policy/) was made.

The package ships the default warm-up's result, so no run waits for it. `warm_start()` re-runs it into a cache
(bit-identical to the shipped weights on an Intel CPU with AVX2, see PORTABLE_KERNELS; other CPUs part from them in
the last bits) and `rebuild_policy()` rewrites the shipped folder from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tokenizers
import torch
import transformers
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from entropy_rl._version import __version__
from entropy_rl.locks import file_lock
from entropy_rl.toy.model import POLICY_DIR, accuracy, build_model
from entropy_rl.toy.task import make_problems, split_pairs
from entropy_rl.toy.tokenizer import build_tokenizer

# Bump when the saved layout or training recipe changes, so stale caches are never reused.
FORMAT_VERSION = 2
CACHE_ENV = "ENTROPY_RL_CACHE"
# Float results depend on the kernels torch and MKL pick for the CPU (AVX-512 or AVX2 paths sum in different orders),
# and the stop at the first accuracy check above the target turns a last-bit difference into a different checkpoint
# (425, 475 or 525 steps, docs/toy.md). Pinned to their AVX2 paths, in a fresh process (both read these variables
# when they first run), every x86-64 machine with AVX2 trains the same bits, at about 1.6x the time of AVX-512.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
# The files of a saved warm-up, as the shipped folder holds them.
POLICY_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "warmup.json",
)
RECIPE = {
    "hidden_size": 128,
    "num_layers": 3,
    "max_operand": 99,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "lr_warmup_steps": 100,
    "eval_every": 25,  # accuracy climbs ~0.25 per 50 steps near the target, so 50 would overshoot it
    "eval_problems": 300,
    "torch_threads": 1,
    "kernels": PORTABLE_KERNELS,
}


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "entropy-rl")


def warmup_settings(target_accuracy: float = 0.35, max_steps: int = 1500, seed: int = 0) -> dict:
    """Everything that determines a warm-up's weights; warm_start's defaults give the shipped policy's."""
    return {
        "format_version": FORMAT_VERSION,
        # Normalised so that e.g. target 0 and 0.0 share one cache entry.
        "target_accuracy": float(target_accuracy),
        "max_steps": int(max_steps),
        "seed": int(seed),
        **RECIPE,
    }


def _cache_name(settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"toy-{digest[:16]}"


def _is_complete(path: Path) -> bool:
    # warmup.json is written last and the directory only appears via an atomic rename, so this marks a full save.
    return (path / "warmup.json").is_file()


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily fix the intra-op thread count: results then do not depend on the machine's core count, and one
    thread avoids the many-fold slowdowns two threads suffer when another process competes for the 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _encode_pool(tokenizer: PreTrainedTokenizerBase, problems: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Left-padded prompt+answer+<eos> rows with labels on answer and <eos> only, as GRPO will later score them."""
    rows, label_rows = [], []
    for problem in problems:
        prompt = tokenizer(problem["prompt"], add_special_tokens=False)["input_ids"]
        target = tokenizer(problem["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + target)
        label_rows.append([-100] * len(prompt) + target)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        labels[i, width - len(row) :] = torch.tensor(label_row)
        attention_mask[i, width - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _versions() -> dict[str, str]:
    """The versions a warm-up was trained with, recorded next to it."""
    return {
        "entropy_rl": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_vendor": cpu_vendor(),
    }


def cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...): MKL's code paths, hence the weights' bits, depend on
    it even on the same pinned instruction set."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _train(settings: dict, out_dir: Path, show_progress: bool) -> None:
    """Train from random init until held-out sampled accuracy reaches the target; save into `out_dir`."""
    start = time.perf_counter()
    seed, max_steps, target = settings["seed"], settings["max_steps"], settings["target_accuracy"]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, settings["hidden_size"], settings["num_layers"], seed=seed)
    model.train()
    max_operand = settings["max_operand"]
    train_pool = make_problems(len(split_pairs("train", max_operand)), "train", seed=seed, max_operand=max_operand)
    data = _encode_pool(tokenizer, train_pool)
    eval_problems = make_problems(settings["eval_problems"], "test", seed=seed, max_operand=max_operand)

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    warmup = settings["lr_warmup_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    # A private generator makes batches depend on `seed` only, not on the caller's global RNG.
    generator = torch.Generator().manual_seed(seed)

    history: list[dict] = []
    sampled = 0.0
    step = 0
    progress = tqdm(total=max_steps, desc="toy warm-up", disable=not show_progress)
    for step in range(1, max_steps + 1):
        index = torch.randint(len(train_pool), (settings["batch_size"],), generator=generator)
        loss = model(**{k: v[index] for k, v in data.items()}).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update()
        if step % settings["eval_every"] == 0 or step == max_steps:
            sampled = accuracy(model, tokenizer, eval_problems, greedy=False, seed=seed)
            history.append({"step": step, "loss": round(loss.item(), 5), "sampled_accuracy": sampled})
            progress.set_postfix(loss=f"{loss.item():.3f}", sampled_acc=f"{sampled:.2f}")
            if sampled >= target:
                break
    progress.close()
    train_seconds = time.perf_counter() - start

    # Report on the whole test split, so the numbers are not biased by stopping at the first eval above the target.
    test_split = make_problems(len(split_pairs("test", max_operand)), "test", seed=seed, max_operand=max_operand)
    record = {
        "steps": step,
        "reached_target": sampled >= target,
        "stop_eval_sampled_accuracy": sampled,
        "test_greedy_accuracy": accuracy(model, tokenizer, test_split, greedy=True),
        "test_sampled_accuracy": accuracy(model, tokenizer, test_split, greedy=False, seed=seed),
        "test_problems": len(test_split),
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": settings,
        "history": history,
        "versions": _versions(),
    }
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "warmup.json").write_text(json.dumps(record, indent=2) + "\n")


def _train_in_child(settings: dict, out_dir: Path, show_progress: bool) -> None:
    """Run `_train` in a fresh interpreter whose torch and MKL start on the recorded kernels."""
    code = "import sys; from entropy_rl.toy.warmup import _child; _child(sys.argv[1:])"
    args = [json.dumps(settings), str(out_dir), str(int(show_progress))]
    subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, **settings["kernels"]}, check=True)


def _child(argv: list[str]) -> None:
    settings, out_dir, show_progress = json.loads(argv[0]), Path(argv[1]), argv[2] == "1"
    with _torch_threads(settings["torch_threads"]):
        _train(settings, out_dir, show_progress)


def _build(settings: dict, root: Path, name: str, show_progress: bool) -> None:
    """Train into a temp dir and rename it into place; the caller holds the lock for `name`."""
    final = root / name
    # Under the lock, a leftover temp dir or a final dir without warmup.json comes from a crashed or tampered run.
    for stale in [*root.glob(f".{name}.tmp-*"), final]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        _train_in_child(settings, tmp, show_progress)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def warm_start(
    cache_dir: str | Path | None = None,
    *,
    target_accuracy: float = 0.35,
    max_steps: int = 1500,
    seed: int = 0,
    show_progress: bool = True,
) -> Path:
    """Path of a warmed-up toy checkpoint (model, tokenizer, warmup.json), training it on first use.

    The defaults re-make the shipped policy (`load_toy()` loads that one without training): the same bits on an Intel
    CPU with AVX2, as training runs in a child process on PORTABLE_KERNELS with one thread (MKL's AVX2 branch gives
    other last bits on AMD CPUs, and the trajectory parts from the shipped one after about 100 steps: docs/toy.md).

    `cache_dir` is the cache root (default `$ENTROPY_RL_CACHE`, else `~/.cache/entropy-rl`); the checkpoint lives in
    `<root>/toy-<hash of settings>/`. Concurrent callers (e.g. every rank of a launch) serialise on a file lock, and
    the directory appears by atomic rename, so nobody ever sees a half-written checkpoint.
    """
    if not 0.0 <= target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy must be in [0, 1], got {target_accuracy}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    recorded = warmup_settings(target_accuracy, max_steps, seed)
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    name = _cache_name(recorded)
    final = root / name
    if not _is_complete(final):
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f".{name}.lock"):
            if not _is_complete(final):  # otherwise another process finished it while we waited
                _build(recorded, root, name, show_progress)
    record = json.loads((final / "warmup.json").read_text())
    if not record["reached_target"]:  # warn on cache hits too: whoever loads it should know
        warnings.warn(
            f"toy warm-up stopped at max_steps={max_steps} with sampled accuracy "
            f"{record['stop_eval_sampled_accuracy']:.3f} < target {target_accuracy}; saved anyway to {final}",
            stacklevel=2,
        )
    return final


def rebuild_policy(out_dir: str | Path = POLICY_DIR, cache_dir: str | Path | None = None) -> Path:
    """Re-run the default warm-up (or take it from the cache) and write its files into `out_dir`, by default the
    shipped folder: how entropy_rl/toy/policy/ was made, after a change to the warm-up recipe."""
    source = warm_start(cache_dir, show_progress=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in POLICY_FILES:
        shutil.copyfile(source / name, out / name)
    return out
