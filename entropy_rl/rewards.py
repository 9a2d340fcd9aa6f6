"""Reward functions usable by name in `reward_funcs` (TRL signature: prompts, completions, **dataset columns)."""

from __future__ import annotations

import atexit
from collections.abc import Sequence
from typing import Any

from .grading import Grader
from .toy.task import completion_text

_grader: Grader | None = None


def _shared_grader() -> Grader:
    # One worker pool per process, started on first use: every math-verify call then runs under a hard time limit.
    global _grader
    if _grader is None:
        _grader = Grader()
        atexit.register(_grader.close)
    return _grader


def math_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
) -> list[float]:
    """1.0 when the completion's final answer (last \\boxed{}, else a plain one) equals `answer` under math-verify."""
    pairs = [(completion_text(c), str(a)) for c, a in zip(completions, answer, strict=True)]
    return [float(grade.correct) for grade in _shared_grader().grade_many(pairs)]
