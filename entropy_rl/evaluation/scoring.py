"""Metrics of a benchmark from its per-problem records, and the seed of each sample. No torch."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the (huge) binomial coefficients.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_records(records: Sequence[dict[str, Any]], pass_ks: Iterable[int] = ()) -> dict[str, Any]:
    """Benchmark metrics from per-problem records (each with its k samples' grades, lengths and entropies)."""
    k = len(records[0]["correct"])
    ks = sorted({1, k, *(kk for kk in pass_ks if kk <= k)})
    total = sum(len(record["correct"]) for record in records)
    return {
        "num_problems": len(records),
        "k": k,
        "avg@k": sum(sum(r["correct"]) / len(r["correct"]) for r in records) / len(records),
        "avg@k_se": avg_at_k_standard_error(records),
        "pass@k": {str(kk): sum(pass_at_k(k, sum(r["correct"]), kk) for r in records) / len(records) for kk in ks},
        "mean_length": sum(n for r in records for n in r["num_tokens"]) / total,
        "eval_entropy": sum(h for r in records for h in r["entropy"]) / total,
        "grading_timeouts": sum(status == "timeout" for r in records for status in r["status"]),
    }


def avg_at_k_standard_error(records: Sequence[dict[str, Any]]) -> float | None:
    """Standard error of avg@k from the sampling alone, on this problem set: a re-evaluation with other sampling seeds
    differs by about this much. Per problem the unbiased variance of the mean of its k graded samples,
    p(1 - p) / (k - 1); None with one sample per problem."""
    k = len(records[0]["correct"])
    if k < 2:
        return None
    variances = [(p := sum(r["correct"]) / k) * (1 - p) / (k - 1) for r in records]
    return math.sqrt(sum(variances)) / len(records)


def sample_seed(seed: int, benchmark: str, problem_id: str, sample: int) -> int:
    """Seed of one sample: a stable hash (not Python's salted hash()) of what identifies it."""
    digest = hashlib.sha256(f"{seed}/{benchmark}/{problem_id}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds must fit in a signed int64
