"""Answer extraction and math-verify grading: reference solutions, equivalences, hostile outputs, time limits."""

from __future__ import annotations

import json
import threading
import time

import pytest

from entropy_rl.evaluation.benchmarks import load_benchmark, resolve_data_dir
from entropy_rl.grading import Grader, extract_answer, last_boxed

# Verdicts are checked under a generous time limit, so a busy machine cannot turn a slow proof of
# equivalence into a wrong grade; the tests of bounded time use a short limit of their own.
VERDICT_TIMEOUT_S = 10.0
TIMEOUT_S = 1.0
# A timed-out worker is killed and a fresh one started before grading goes on; allow for that and a busy machine.
SLACK_S = 4.0


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout_s=VERDICT_TIMEOUT_S, workers=2) as grader:
        yield grader


@pytest.fixture(scope="module")
def strict_grader():
    with Grader(timeout_s=TIMEOUT_S, workers=2) as grader:
        yield grader


def _reference_pairs(name: str) -> list[tuple[str, str]]:
    """(reference worked solution, gold) for every problem of a benchmark, read from the shared data files."""
    data_dir = resolve_data_dir()
    if data_dir is None:
        pytest.skip("set ENTROPY_RL_DATA_DIR to the directory of the offline benchmark files")
    path = data_dir / f"{name}_test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} absent: set ENTROPY_RL_DATA_DIR to the directory of the offline benchmark files")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    golds = [problem["gold"] for problem in load_benchmark(name, data_dir=data_dir).problems]
    solution_field = "answer" if name == "gsm8k" else "solution"  # GSM8K's worked solution ends in "#### N"
    return [(row[solution_field], gold) for row, gold in zip(rows, golds, strict=True)]


@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_reference_solutions_grade_correct(grader, name):
    pairs = _reference_pairs(name)
    grades = grader.grade_many(pairs)
    score = sum(grade.correct for grade in grades) / len(grades)
    assert len(grades) == {"gsm8k": 1319, "math500": 500}[name]
    assert score >= 0.99, [(g.extracted, gold) for g, (_, gold) in zip(grades, pairs, strict=True) if not g.correct]


@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_reference_answers_verified_by_math_verify(grader, name):
    """Same pairs, but every one through math-verify (skipping the identical-string shortcut)."""
    pairs = [(gold, extract_answer(solution)) for solution, gold in _reference_pairs(name)]
    verdicts = grader._verify_all(pairs)
    assert sum(verdict is True for verdict in verdicts) / len(verdicts) >= 0.99


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("so \\boxed{\\frac{1}{2}}", "0.5"),
        ("The answer is 1/2.", "\\frac{1}{2}"),
        ("0.5", "\\frac12"),
        ("The answer is 42", "42"),
        ("#### 42", "42"),
        ("so she has 3 apples", "3"),
        ("\\boxed{\\dfrac{3}{4}}", "0.75"),
        ("\\boxed{70,000}", "70000"),
        ("#### $1,250", "1250"),
        ("\\boxed{x=5}", "5"),
        ("\\boxed{(1, 2)}", "(1,2)"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{50\\%}", "50"),
        ("The final answer is $\\boxed{-3}$", "-3"),
        ("\\boxed{\\text{(B)}}", "B"),
        ("\\boxed{3, 5, 7}", "3,5,7"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("\\boxed{90^\\circ}", "90"),
        ("first \\boxed{7}, then corrected: \\boxed{\\boxed{8}}", "8"),
        ("\\boxed{1\\,000}", "1000"),  # LaTeX thin space as thousands separator
        ("\\boxed{1\\,000\\,000}", "1,000,000"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{10,\\!080}", "10080"),
        ("\\boxed{12.5\\%}", "12.5"),  # decimal percentage
        ("\\boxed{25\\%}", "0.25"),
        ("\\boxed{-.5}", "-0.5"),
        ("The answer is .5", "\\frac{1}{2}"),
        ("\\boxed{0.35625}", ".35625"),
        ("\\boxed{(1\\,000, 2)}", "(1000,2)"),
    ],
)
def test_equivalent_answers(grader, response, gold):
    grade = grader.grade(response, gold)
    assert grade.correct, grade


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("\\boxed{2}", "3"),
        ("0.5", "\\frac{1}{3}"),
        ("\\boxed{0.33}", "\\frac{1}{3}"),
        ("The answer is 41", "42"),
        ("\\boxed{x^2}", "x^3"),
        ("\\boxed{(1,2)}", "(2,1)"),
        ("1/2", "2"),
        ("\\boxed{1}\n\\boxed{2}", "1"),
        ("42 was a guess; the answer is 41", "42"),
        ("\\boxed{.5}", "5"),  # a leading-dot decimal is not the integer
        ("\\boxed{5}", ".5"),
        ("\\boxed{35625}", ".35625"),
        ("the answer is .5", "5"),
        ("x = -.5", "5"),
        ("\\boxed{1 2}", "12"),  # digits split by a space are not one number...
        ("\\boxed{1 2}", "3"),  # ...nor a sum (math-verify's mixed-number reading)
        ("\\boxed{1\\,2}", "2"),  # ...nor a product
        ("\\boxed{(1\\,000, 2)}", "(0,2)"),  # math-verify alone reads 1\,000 as 1·000
        ("\\boxed{0.333333}", "0.3333333"),  # plain numbers compare exactly, without math-verify's rounding
    ],
)
def test_wrong_answers(grader, response, gold):
    grade = grader.grade(response, gold)
    assert not grade.correct and grade.status == "ok", grade


@pytest.mark.parametrize(
    ("response", "extracted"),
    [
        ("a \\boxed{1} b \\boxed{\\frac{2}{3}} c", "\\frac{2}{3}"),
        ("\\boxed{\\boxed{5}}", "5"),
        ("nested \\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("unclosed \\boxed{12 (cut off) and then 7", "7"),
        ("work\n#### 1,234,567", "1234567"),
        ("Final answer: $\\frac{\\pi}{3}$.", "\\frac{\\pi}{3}"),
        ("The answer is 25%.", "25"),
        ("The answer is \\$18.", "18"),
        ("roots 1,2", "2"),
        ("the answer is .5", ".5"),
        ("x = -.5", "-.5"),
        ("apples.5 more", "5"),
        ("The answer is 1\\,000.", "1000"),
        ("in all 1{,}000 apples", "1000"),
        ("\\boxed{(1\\,000, 2)}", "(1000, 2)"),
        ("between 100~200", "200"),
        ("nothing numeric here", None),
        ("", None),
    ],
)
def test_extract_answer(response, extracted):
    assert extract_answer(response) == extracted


def test_only_the_tail_is_read():
    response = "\\boxed{1}" + "x" * 10_000
    assert last_boxed(response) == "1"
    assert extract_answer(response) is None
    assert extract_answer(response, tail_chars=20_000) == "1"


def test_hostile_outputs_are_bounded_and_never_executed(strict_grader, tmp_path):
    grader = strict_grader
    sentinel = tmp_path / "pwned"
    code = f"__import__('os').system('touch {sentinel}')"
    hostile = [
        "\\boxed{10^{10^{10^{10^{10}}}}}",
        "\\boxed{9^{9^{9^{9^{9}}}}!}",
        "\\boxed{100000000!}",
        "\\boxed{" + "9" * 900 + "}",
        "\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}",
        "\\boxed{" + "{" * 200_000 + "1",
        "\\boxed{1}" * 200_000,
        "x" * 5_000_000 + " so 5",
        "\\frac{" * 100_000,
        f"\\boxed{{{code}}}",
        f"The answer is {code}",
        f"#### {code}",
        f'The answer is $eval("{code}")$',
        f"\\boxed{{\\text{{{code}}}}}",
    ]
    for response in hostile:
        start = time.monotonic()
        grade = grader.grade(response, "5")
        elapsed = time.monotonic() - start
        assert elapsed < TIMEOUT_S + SLACK_S, (response[:60], grade, elapsed)
        assert grade.status in {"ok", "no_answer", "timeout", "error"}
    assert not sentinel.exists(), "model output was executed"
    # The grader is still usable after its workers were killed for overrunning.
    assert grader.grade("\\boxed{0.5}", "\\frac{1}{2}").correct


def test_timeouts_are_wrong_and_bounded(strict_grader):
    grader = strict_grader
    start = time.monotonic()
    grades = grader.grade_many([("\\boxed{10^{10^{10^{10^{10}}}}}", "5"), ("\\boxed{2^{2^{2^{2^{2^{10}}}}}}", "7")])
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S  # two workers: both run at once
    assert all(not grade.correct for grade in grades)
    assert {grade.status for grade in grades} <= {"timeout", "ok"}


def test_grading_works_off_the_main_thread(grader):
    """math-verify's own signal-based timeout refuses to run off the main thread; the worker pool does not care."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(grade=grader.grade("\\boxed{\\frac{2}{4}}", "0.5")))
    thread.start()
    thread.join(timeout=30)
    assert result["grade"].correct


def test_a_dead_worker_is_replaced(grader):
    grader.grade("\\boxed{0.5}", "1/3")  # make sure the workers are running
    for worker in grader._workers:
        worker.process.kill()
        worker.process.join()
    assert grader.grade("\\boxed{0.5}", "\\frac{1}{2}").correct
