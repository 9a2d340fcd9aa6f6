"""Property tests: the answer extractor takes any model output, returns quickly, and never evaluates anything."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_rl.grading import DEFAULT_TAIL_CHARS, MAX_ANSWER_CHARS, extract_answer

# Fragments of answer-like LaTeX glued in random order: far more likely to hit the extractor's edge cases than text().
LATEXISH = st.lists(
    st.sampled_from([*"{}\\$#0123456789.,-/ abx=", "\\boxed{", "\\frac{", "####", "answer is ", "\\(", "\\)"]),
    max_size=80,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), LATEXISH))
def test_any_text_gives_none_or_a_short_string_fast(text):
    start = time.perf_counter()
    answer = extract_answer(text)
    assert time.perf_counter() - start < 2.0  # generous for stalls on a shared machine; a hang takes far longer
    assert answer is None or (isinstance(answer, str) and 0 < len(answer) <= MAX_ANSWER_CHARS)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=200),
)
def test_the_last_boxed_integer_wins(number, prefix):
    assert extract_answer(f"{prefix} \\boxed{{7}} then \\boxed{{{number}}}.") == str(number)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=5000))
def test_deep_or_unbalanced_nesting_is_linear_time(depth):
    for text in ("\\boxed{" * depth, "\\boxed{" + "{" * depth + "1" + "}" * depth + "}", "}" * depth + "\\boxed{2}"):
        start = time.perf_counter()
        extract_answer(text)
        assert time.perf_counter() - start < 2.0  # generous for stalls on a shared machine; a hang takes far longer


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=50))
def test_only_the_tail_matters(tail):
    padding = "\\boxed{999} " + "x" * DEFAULT_TAIL_CHARS
    assert extract_answer(padding + tail) == extract_answer(("x" * DEFAULT_TAIL_CHARS + tail)[-DEFAULT_TAIL_CHARS:])


def test_code_in_the_output_is_only_ever_text(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"\\boxed{{__import__('os').system('touch {marker}')}}"
    assert extract_answer(payload) == f"__import__('os').system('touch {marker}')"
    assert not marker.exists()
