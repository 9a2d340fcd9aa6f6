"""Reward functions usable by name in `reward_funcs` (TRL signature: prompts, completions, **dataset columns).

`math_reward` pays 1.0 when the completion's final `\\boxed{}` answer (the only box, or all boxes agreeing) equals the
gold answer under math-verify, else 0.0. Nothing outside the box counts and boxes that disagree earn nothing, so
"\\boxed{12} or maybe \\boxed{42}" and an unboxed final answer get 0: a looser reward is a channel RL learns to exploit,
and the price is 0 for an answer corrected in a later box. That is this project's choice, not any source's scorer:
verl's math_verify and prime_math scorers grade the last box (math_verify also an unboxed final expression), and
DAPO's math_dapo reads the last "Answer:" line and pays +1 / -1 (docs/evaluation.md, Training rewards).
`math_last_box_reward` grades the last box whatever earlier ones say, the box policy of verl's scorers.
`math_loose_reward` keeps the evaluator's fallbacks (`####`, "the answer is", the last number) for GSM8K-style data
whose completions are not boxed. All grade under the same hard time limit as the evaluator
(entropy_rl.grading.Grader). DAPO's soft overlong punishment is TRL's own (`trl.rewards.get_soft_overlong_punishment`)
times verl's penalty factor, switched on by `overlong_buffer_len` (entropy_rl.training.build_rewards).
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Sequence
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


def math_last_box_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
) -> list[float]:
    """1.0 when the completion's last `\\boxed{}` equals `answer` under math-verify, even when earlier boxes say
    otherwise (verl's scorers' policy: a corrected answer counts, and so does the last of several hedged ones); 0.0
    without a box or after the grading time limit."""
    return _grade("last_boxed", completions, answer)


def math_loose_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
) -> list[float]:
    """1.0 when the completion's final answer by the evaluator's rules (last `\\boxed{}`, else `####`, else "the
    answer is", else the last number) equals `answer`. For GSM8K-style data; it also rewards a trailing guess."""
    return _grade("final_answer", completions, answer)


def soft_overlong_punishment(
    max_completion_len: int, soft_punish_cache: int, penalty_factor: float = 1.0
) -> Callable[..., list[float]]:
    """DAPO's soft overlong punishment (Eq. 13) as verl applies it: TRL's `get_soft_overlong_punishment` (0 up to
    max_completion_len - soft_punish_cache tokens, then linearly down to -1) times verl's
    `overlong_buffer.penalty_factor`. Keeps TRL's function name, so it is logged as
    rewards/soft_overlong_punishment_reward/mean."""
    from trl.rewards import get_soft_overlong_punishment

    punish = get_soft_overlong_punishment(max_completion_len, soft_punish_cache)
    if penalty_factor == 1.0:
        return punish

    def soft_overlong_punishment_reward(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        return [penalty_factor * value for value in punish(completion_ids, **kwargs)]

    return soft_overlong_punishment_reward
