"""Reward functions usable by name in `reward_funcs` (TRL signature: prompts, completions, **dataset columns).

`math_reward` is the papers' reward (verl's math reward, TRL's `accuracy_reward`): 1.0 when the final `\\boxed{}`
answer equals the gold answer under math-verify, else 0.0. Nothing outside the box counts, so "I think it is 12 or
maybe 42" earns nothing: a looser reward is a channel RL learns to exploit. `math_loose_reward` keeps the evaluator's
fallbacks (`####`, "the answer is", the last number) for GSM8K-style data whose completions are not boxed. Both grade
under the same hard time limit as the evaluator (entropy_rl.grading.Grader). DAPO's soft overlong punishment is TRL's
own (`trl.rewards.get_soft_overlong_punishment`), switched on by `overlong_buffer_len` (entropy_rl.training).
"""

from __future__ import annotations

import atexit
from collections.abc import Sequence
from typing import Any

from .grading import Extraction, Grader
from .toy.task import completion_text

_graders: dict[str, Grader] = {}


def _shared_grader(extraction: Extraction) -> Grader:
    # One worker pool per process and extraction, started on first use: every math-verify call runs under a hard
    # time limit.
    if extraction not in _graders:
        _graders[extraction] = Grader(extraction=extraction)
        atexit.register(_graders[extraction].close)
    return _graders[extraction]


def _grade(extraction: Extraction, completions: Sequence[Any], answer: Sequence[str]) -> list[float]:
    pairs = [(completion_text(c), str(a)) for c, a in zip(completions, answer, strict=True)]
    return [float(grade.correct) for grade in _shared_grader(extraction).grade_many(pairs)]


def math_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
) -> list[float]:
    """1.0 when the completion's final `\\boxed{}` answer (the only one, or all boxes agreeing) equals `answer` under
    math-verify; 0.0 without a box, with disagreeing boxes, or after the grading time limit."""
    return _grade("boxed", completions, answer)


def math_loose_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
) -> list[float]:
    """1.0 when the completion's final answer by the evaluator's rules (last `\\boxed{}`, else `####`, else "the
    answer is", else the last number) equals `answer`. For GSM8K-style data; it also rewards a trailing guess."""
    return _grade("final_answer", completions, answer)
