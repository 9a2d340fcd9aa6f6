"""The hard variant of the toy task: the addition problems the warm-started policy answers wrong when decoding greedily.

On these the policy's most likely answer is wrong, so improving means moving probability from its mode to an answer
it samples only now and then: exploration is what makes progress, and a policy whose entropy runs out stops finding
the right answers. The set is a fixed function of the shipped warm-started policy (greedy decoding is deterministic),
computed once per split and stored in the cache as `<root>/hard-<hash of the weights>/hard_<split>.json`.

    make_hard_problems(256, split="test")      # the held-out benchmark eval/benchmarks/arithmetic_hard.yaml
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

from entropy_rl.locks import file_lock
from entropy_rl.toy.model import POLICY_DIR, load_toy
from entropy_rl.toy.task import SPLITS, split_pairs
from entropy_rl.toy.warmup import default_cache_root

DECODE_BATCH = 512


@torch.no_grad()
def _greedy_wrong(path: Path, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pairs whose greedy completion by the model at `path` is not exactly their sum."""
    policy, tokenizer = load_toy(path)
    policy.eval()
    wrong = []
    with torch.random.fork_rng(devices=[]):
        for start in range(0, len(pairs), DECODE_BATCH):
            batch = pairs[start : start + DECODE_BATCH]
            inputs = tokenizer([f"{a}+{b}=" for a, b in batch], return_tensors="pt", padding=True, padding_side="left")
            output = policy.generate(**inputs, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            wrong += [(a, b) for (a, b), text in zip(batch, texts, strict=True) if text.strip() != str(a + b)]
    return wrong


def hard_pairs(split: str = "train", cache_dir: str | Path | None = None) -> list[tuple[int, int]]:
    """The pairs of `split` that the shipped policy answers wrong greedily, in split order (cached under `cache_dir`,
    default `$ENTROPY_RL_CACHE` or `~/.cache/entropy-rl`: the package folder may be read-only)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = POLICY_DIR
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_root()) / f"hard-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / f"hard_{split}.json"
    with file_lock(folder / f".{split}.lock"):  # every rank of a launch reads one computation
        if not cache.is_file():
            pairs = _greedy_wrong(path, split_pairs(split))
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(pairs))
            tmp.replace(cache)
    return [tuple(pair) for pair in json.loads(cache.read_text())]


def make_hard_problems(n: int, split: str = "train", seed: int = 0) -> list[dict[str, str]]:
    """`n` problems `{"prompt", "answer"}` drawn from the hard pairs of `split` (cycled when `n` exceeds them)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = hard_pairs(split)
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        pairs.extend(rng.sample(pool, len(pool)))
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs[:n]]
