"""Two-operand addition problems and their exact-match reward (pure Python, nothing is ever evaluated)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

SPLITS = ("train", "test")
TEST_PERCENT = 20


def _is_test_pair(a: int, b: int) -> bool:
    """Fixed rule, independent of seed and max_operand: a pair's split never changes.

    The unordered pair is hashed so that a+b and b+a fall in the same split and commutativity cannot leak test answers.
    """
    lo, hi = min(a, b), max(a, b)
    digest = hashlib.blake2b(f"{lo},{hi}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < TEST_PERCENT


def split_pairs(split: str, max_operand: int = 99) -> list[tuple[int, int]]:
    """All (a, b) with 0 <= a, b <= max_operand that belong to `split`, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_operand < 0:
        raise ValueError(f"max_operand must be >= 0, got {max_operand}")
    want_test = split == "test"
    return [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1) if _is_test_pair(a, b) == want_test]


def make_problems(n: int, split: str = "train", seed: int = 0, max_operand: int = 99) -> list[dict[str, str]]:
    """`n` problems `{"prompt": "12+35=", "answer": "47"}` drawn from `split`; `seed` picks which ones.

    Problems are distinct while `n` fits in the split; beyond that the split is reshuffled and cycled.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = split_pairs(split, max_operand)
    if not pool and n:
        raise ValueError(f"the {split!r} split is empty for max_operand={max_operand}")
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        pairs.extend(rng.sample(pool, len(pool)))
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs[:n]]


def completion_text(completion: Any) -> str:
    # Conversational prompts make TRL pass [{"role": "assistant", "content": ...}] instead of a string.
    if isinstance(completion, list):
        return str(completion[-1]["content"]) if completion else ""
    return str(completion)


def arithmetic_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
) -> list[float]:
    """TRL reward: 1.0 iff the completion, stripped of surrounding whitespace, is exactly the answer string."""
    if len(completions) != len(answer):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
    return [float(completion_text(c).strip() == str(a)) for c, a in zip(completions, answer, strict=True)]
