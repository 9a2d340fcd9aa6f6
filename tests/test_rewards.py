"""Training rewards: the boxed-only math reward, its looser sibling, and DAPO's soft overlong punishment."""

from __future__ import annotations

import pytest

from entropy_rl.grading import boxed_contents, extract_boxed, extract_last_boxed
from entropy_rl.rewards import math_last_box_reward, math_loose_reward, math_reward
from entropy_rl.train_args import TrainScriptArguments
from entropy_rl.training import build_rewards

GOLD = "42"
# (completion, reward under the boxed-only reward, reward under the loose one)
CASES = [
    (r"So the answer is $\boxed{42}$.", 1.0, 1.0),
    (r"\boxed{\frac{84}{2}}", 1.0, 1.0),  # math-verify equivalence, inside the box
    (r"We get \boxed{42}, and checking again: \boxed{42}.", 1.0, 1.0),  # boxes that agree
    ("The answer is 42.", 0.0, 1.0),  # outside the box
    ("I think it is 12 or maybe 42", 0.0, 1.0),  # the last number: a guess
    ("#### 42", 0.0, 1.0),
    (r"It is \boxed{12} or maybe \boxed{42}", 0.0, 1.0),  # a list of candidates in several boxes
    (r"\boxed{12 \text{ or } 42}", 0.0, 0.0),  # a list of candidates in one box
    (r"\boxed{12, 42}", 0.0, 0.0),
    (r"\boxed{42", 0.0, 1.0),  # never closed: no box
    (r"\boxed{41}", 0.0, 0.0),
]


def test_boxed_only_reward_refuses_answers_outside_the_box_and_lists_of_candidates():
    completions = [case[0] for case in CASES]
    answers = [GOLD] * len(CASES)
    assert math_reward([""] * len(CASES), completions, answers) == [case[1] for case in CASES]
    assert math_loose_reward([""] * len(CASES), completions, answers) == [case[2] for case in CASES]


# (completion, `math_last_box`): the last box, whatever earlier ones say, as verl's math_verify / prime_math box policy
LAST_BOX_CASES = [
    (r"\boxed{12}. Wait, that is wrong: \boxed{42}", 1.0),  # corrected in a later box: `math` pays 0
    (r"\boxed{42}. Hmm, or \boxed{12}", 0.0),  # the last box decides, also against the right answer
    (r"It is \boxed{12} or maybe \boxed{42}", 1.0),  # hedging over boxes is paid on the last one, as in verl
    (r"\boxed{\frac{84}{2}}", 1.0),
    ("The answer is 42.", 0.0),  # no box
    (r"\boxed{42", 0.0),  # never closed
    (r"first \boxed{7}, then \boxed{\boxed{42}}", 1.0),  # the last box's content, nested
]


def test_last_box_reward_grades_the_final_box_as_verls_scorers():
    completions = [case[0] for case in LAST_BOX_CASES]
    expected = [case[1] for case in LAST_BOX_CASES]
    assert math_last_box_reward([""] * len(completions), completions, [GOLD] * len(completions)) == expected
    # `math` on the same answers: only an unambiguous box counts
    assert math_reward([""] * len(completions), completions, [GOLD] * len(completions)) == [
        0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0,
    ]  # fmt: skip
    assert extract_last_boxed(r"\boxed{1\,000} then \boxed{70,000}") == "70000"
    assert extract_last_boxed("\\boxed{" * 50_000) is None  # unclosed boxes in untrusted output: one pass


def test_last_box_is_a_reward_name():
    from entropy_rl.reward_loading import resolve_reward

    assert resolve_reward("math_last_box") is math_last_box_reward


def test_boxed_reward_reads_conversational_completions():
    completions = [[{"role": "assistant", "content": r"\boxed{42}"}], [{"role": "assistant", "content": "42"}]]
    assert math_reward(["", ""], completions, [GOLD, GOLD]) == [1.0, 0.0]


def test_boxed_contents_is_linear_and_nests():
    assert boxed_contents(r"\boxed{\frac{1}{2}} and \fbox{\boxed{3}} and \boxed{x") == [r"\frac{1}{2}", r"\boxed{3}"]
    assert extract_boxed("\\boxed{" * 50_000) is None  # unclosed boxes in untrusted output cost one pass


def dapo_overlong(length: int, max_length: int, buffer: int) -> float:
    """DAPO (arXiv:2503.14476) Eq. 13, written out."""
    expected = max_length - buffer
    if length <= expected:
        return 0.0
    if length <= max_length:
        return (expected - length) / buffer
    return -1.0


@pytest.mark.parametrize("max_length, buffer", [(16, 4), (20, 19), (8, 1)])
def test_overlong_punishment_equals_dapo_formula(max_length, buffer):
    from entropy_rl.config import EntropyGRPOConfig

    config = EntropyGRPOConfig(
        output_dir="unused", max_completion_length=max_length, overlong_buffer_len=buffer, report_to="none"
    )
    rewards = build_rewards(TrainScriptArguments(reward_funcs=["arithmetic"]), config)
    assert len(rewards) == 2 and rewards[-1].__name__ == "soft_overlong_punishment_reward"
    lengths = list(range(max_length + 3))
    got = rewards[-1]([[1] * n for n in lengths])
    assert got == pytest.approx([dapo_overlong(n, max_length, buffer) for n in lengths], abs=1e-12)


def test_overlong_off_by_default_and_bounded():
    from entropy_rl.config import EntropyGRPOConfig
    from entropy_rl.errors import ConfigError

    config = EntropyGRPOConfig(output_dir="unused", report_to="none")
    assert len(build_rewards(TrainScriptArguments(reward_funcs=["arithmetic"]), config)) == 1
    with pytest.raises(ConfigError, match="overlong_buffer_len"):
        EntropyGRPOConfig(output_dir="unused", max_completion_length=8, overlong_buffer_len=8, report_to="none")
