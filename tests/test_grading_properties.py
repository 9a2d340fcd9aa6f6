"""Property test of the grader: equivalent forms of the same number or expression must be accepted, perturbed
answers rejected. Every case is built together with its truth, so no grader decides what is right.

Run as a script, it draws a fixed (derandomized) sample of cases and counts the false positives and false negatives
of our grader and of plain math-verify (`verify(parse("$gold$"), parse(response))`, its defaults), the numbers in
docs/evaluation.md:

    python tests/test_grading_properties.py --examples 2000

Plain math-verify's default `ExprExtractionConfig` hands text to `sympy.parse_expr`, which evaluates it; that is
safe here only because every response is built by this file. The grader itself never does that.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# entropy_rl is imported where it is used, after the sample is drawn: hypothesis draws some values from constants in
# the local modules already imported, so importing the grader first would make the sample depend on its code.


@dataclass(frozen=True)
class Case:
    response: str
    gold: str
    correct: bool  # the truth, known by construction
    kind: str  # the form or the perturbation, for reports


# ---------------------------------------------------------------------------------------------------------------------
# Numbers written out


def decimal_parts(x: Fraction) -> tuple[str, str, str]:
    """(sign, integer digits, fraction digits) of a terminating decimal, without redundant zeros."""
    scale = 0
    while (abs(x) * 10**scale).denominator != 1:
        scale += 1
    digits = str(int(abs(x) * 10**scale)).rjust(scale + 1, "0")
    return "-" if x < 0 else "", digits[: len(digits) - scale], digits[len(digits) - scale :]


def render(sign: str, whole: str, frac: str, sep: str = "", leading_zero: bool = True, extra_zeros: int = 0) -> str:
    if sep and len(whole) > 3:
        head = len(whole) % 3 or 3
        whole = whole[:head] + "".join(sep + whole[i : i + 3] for i in range(head, len(whole), 3))
    if whole == "0" and frac and not leading_zero:
        whole = ""  # ".5", as MATH-500 writes some golds
    frac += "0" * extra_zeros
    return sign + whole + ("." + frac if frac else "")


def frac_latex(p: int, q: int, command: str = "\\frac") -> str:
    return f"{'-' if p < 0 else ''}{command}{{{abs(p)}}}{{{q}}}"


GOLD_SEPS = ["", ",", "{,}", ",\\!"]  # as benchmark golds write thousands (MATH-500: "10,\!080")
ANSWER_SEPS = ["", ",", "{,}", ",\\!", "\\,"]
PLAIN_TEXT = set("0123456789-.,")  # forms that may stand in running text without LaTeX

terminating = st.builds(
    lambda mantissa, scale: Fraction(mantissa, 10**scale),
    st.integers(-(10**9), 10**9),
    st.integers(0, 8),  # past math-verify's 6-digit float rounding
)


@st.composite
def decimal_cases(draw) -> tuple[str, str, bool, str]:
    """(gold, answer, correct, kind) for a decimal gold."""
    x = draw(terminating)
    sign, whole, frac = decimal_parts(x)
    gold = render(sign, whole, frac, draw(st.sampled_from(GOLD_SEPS)), leading_zero=draw(st.booleans()))
    if draw(st.booleans()):
        form = draw(
            st.sampled_from(["separators", "zeros", "percent"] + (["fraction"] if 1 < x.denominator < 1000 else []))
        )
        if form == "percent":  # benchmarks write a percentage without its sign
            answer = render(sign, whole, frac) + draw(st.sampled_from(["\\%", "%"]))
        elif form == "fraction":
            answer = frac_latex(x.numerator, x.denominator, draw(st.sampled_from(["\\frac", "\\dfrac"])))
        else:
            extra_zeros = draw(st.integers(1, 2)) if form == "zeros" else 0
            answer = render(sign, whole, frac, draw(st.sampled_from(ANSWER_SEPS)), draw(st.booleans()), extra_zeros)
        return gold, answer, True, f"number/{form}"
    plain = render(sign, whole, frac)
    digits = [i for i, c in enumerate(plain) if c.isdigit()]
    options = ["sign", "last digit", "times ten", "percent of ten times"] if x != 0 else ["last digit"]
    if frac:
        options += ["point dropped", "rounded"]
    elif x != 0:
        options.append("point prefixed")  # 5 -> .5
    if len(whole) >= 2:
        options += ["digit dropped", "space between digits", "comma misgrouped", "thin space misgrouped"]
    kind = draw(st.sampled_from(options))
    if kind == "sign":
        answer = plain[1:] if sign else "-" + plain
    elif kind == "last digit":
        last = digits[-1]
        answer = plain[:last] + str((int(plain[last]) + draw(st.integers(1, 9))) % 10) + plain[last + 1 :]
    elif kind in ("times ten", "percent of ten times"):  # neither X nor X/100 of "10X%" is the gold X
        answer = render(sign, (whole + (frac[:1] or "0")).lstrip("0") or "0", frac[1:])
        answer += "\\%" if kind == "percent of ten times" else ""
    elif kind == "rounded":  # to fewer decimals than the gold has: another number
        answer = render(*decimal_parts(round(x, draw(st.integers(0, len(frac) - 1)))))
    elif kind == "point dropped":
        answer = sign + (whole + frac).lstrip("0").rjust(1, "0")
    elif kind == "point prefixed":
        answer = f"{sign}.{whole}"
    elif kind == "digit dropped":
        i = draw(st.integers(0, len(whole) - 1))
        answer = render(sign, (whole[:i] + whole[i + 1 :]).lstrip("0") or "0", frac)
    else:
        # Split the integer digits where no thousands grouping would put a separator (not before the last three).
        cut = draw(st.sampled_from([i for i in range(1, len(whole)) if len(whole) - i != 3]))
        sep = {"space between digits": " ", "comma misgrouped": ",", "thin space misgrouped": "\\,"}[kind]
        answer = sign + whole[:cut] + sep + whole[cut:] + ("." + frac if frac else "")
    return gold, answer, False, f"number/{kind}"


@st.composite
def fraction_cases(draw) -> tuple[str, str, bool, str]:
    q = draw(st.integers(2, 12))
    p = draw(st.sampled_from([p for p in range(-30, 31) if p != 0 and math.gcd(p, q) == 1]))
    gold = frac_latex(p, q)
    value = Fraction(p, q)
    if draw(st.booleans()):
        forms = ["dfrac", "slash", "unreduced"] + (["decimal"] if 10**6 % q == 0 else [])
        form = draw(st.sampled_from(forms))
        if form == "dfrac":
            answer = frac_latex(p, q, "\\dfrac")
        elif form == "slash":
            answer = f"{p}/{q}"
        elif form == "unreduced":
            k = draw(st.integers(2, 9))
            answer = frac_latex(k * p, k * q)
        else:
            answer = render(*decimal_parts(value), leading_zero=draw(st.booleans()))
        return gold, answer, True, f"fraction/{form}"
    forms = ["numerator + 1", "denominator + 1"] + (["inverted"] if abs(p) != 1 else [])
    forms += ["rounded"] if 10**6 % q != 0 else []
    form = draw(st.sampled_from(forms))
    if form == "numerator + 1":
        answer = frac_latex(p + 1, q) if p + 1 != 0 else "0"
    elif form == "denominator + 1":
        answer = frac_latex(p, q + 1)
    elif form == "inverted":
        answer = frac_latex(q if p > 0 else -q, abs(p))
    else:
        answer = f"{float(value):.{draw(st.integers(1, 3))}f}"
    return gold, answer, False, f"fraction/{form}"


# ---------------------------------------------------------------------------------------------------------------------
# Expressions


def poly(coeffs: list[int]) -> str:
    """a x^2 + b x + c written out: "2x^2-3x+1"."""
    terms = []
    for power, c in zip((2, 1, 0), coeffs, strict=True):
        if c == 0:
            continue
        body = {2: "x^2", 1: "x", 0: ""}[power]
        text = str(abs(c)) if abs(c) != 1 or not body else ""
        terms.append(("-" if c < 0 else "+") + text + body)
    return "".join(terms).lstrip("+") or "0"


def root_factor(r: int) -> str:
    return "x" if r == 0 else f"(x{'-' if r > 0 else '+'}{abs(r)})"


@st.composite
def expression_cases(draw) -> tuple[str, str, bool, str]:
    family = draw(st.sampled_from(["polynomial", "sqrt", "pi", "tuple"]))
    same = draw(st.booleans())
    if family == "polynomial":
        a, r, s = draw(st.integers(1, 4)), draw(st.integers(-5, 5)), draw(st.integers(-5, 5))
        coeffs = [a, -a * (r + s), a * r * s]
        gold = poly(coeffs)
        if same:
            factored = ("" if a == 1 else str(a)) + root_factor(r) + root_factor(s)
            terms = [str(coeffs[2]) if coeffs[2] else "", poly([0, coeffs[1], 0]) if coeffs[1] else "", poly([a, 0, 0])]
            reordered = "+".join(term for term in terms if term).replace("+-", "-")
            return gold, draw(st.sampled_from([factored, reordered])), True, "polynomial/rewritten"
        i = draw(st.integers(0, 2))
        coeffs[i] += draw(st.sampled_from([-2, -1, 1, 2]))
        return gold, poly(coeffs), False, "polynomial/coefficient changed"
    if family == "sqrt":
        k, m = draw(st.integers(2, 5)), draw(st.sampled_from([2, 3, 5, 6, 7]))
        gold = f"{k}\\sqrt{{{m}}}"
        if same:
            return gold, draw(st.sampled_from([f"\\sqrt{{{k * k * m}}}", f"\\sqrt{{{m}}}\\cdot {k}"])), True, "sqrt"
        return gold, draw(st.sampled_from([f"{k}\\sqrt{{{m + 1}}}", f"{k + 1}\\sqrt{{{m}}}"])), False, "sqrt/changed"
    if family == "pi":
        q = draw(st.integers(2, 9))
        p = draw(st.sampled_from([p for p in range(1, 10) if math.gcd(p, q) == 1]))
        gold = f"\\frac{{{'' if p == 1 else p}\\pi}}{{{q}}}"
        if same:
            return gold, draw(st.sampled_from([f"\\frac{{{p}}}{{{q}}}\\pi", f"{p}\\pi/{q}"])), True, "pi"
        return gold, f"\\frac{{{p + q}\\pi}}{{{q}}}", False, "pi/changed"
    a, b = draw(st.integers(-20, 20)), draw(st.integers(-20, 20))
    gold = f"({a},{b})"
    if same:
        return gold, draw(st.sampled_from([f"({a}, {b})", f"\\left({a},{b}\\right)"])), True, "tuple"
    if a != b and draw(st.booleans()):
        return gold, f"({b},{a})", False, "tuple/swapped"
    return gold, f"({a},{b + 1})", False, "tuple/changed"


# ---------------------------------------------------------------------------------------------------------------------
# Responses around the answer


@st.composite
def cases(draw) -> Case:
    gold, answer, correct, kind = draw(st.one_of(decimal_cases(), fraction_cases(), expression_cases()))
    wrappers = [
        "Adding these up, we get \\boxed{{{}}}.",
        "The final answer is $\\boxed{{{}}}$",
        "So the answer is ${}$.",
    ]
    if set(answer) <= PLAIN_TEXT | {" ", "/", "%"}:
        wrappers += ["Step 1 ... \n#### {}", "The answer is {}."]
    if set(answer) <= PLAIN_TEXT and " " not in answer:
        wrappers.append("Thus x = {}")  # the last-number rule
    return Case(draw(st.sampled_from(wrappers)).format(answer), gold, correct, kind)


def plain_math_verify(case: Case) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"${case.gold}$"), parse(case.response)))


# ---------------------------------------------------------------------------------------------------------------------
# The test


@pytest.fixture(scope="module")
def grader():
    from entropy_rl.grading import Grader

    with Grader(timeout_s=5.0, workers=2) as grader:
        yield grader


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_grader_knows_equivalent_from_perturbed(grader, case):
    grade = grader.grade(case.response, case.gold)
    assert grade.status == "ok", grade
    if grade.correct != case.correct:  # say what plain math-verify makes of it, for the record
        pytest.fail(f"{case} graded {grade}; plain math-verify says {plain_math_verify(case)}")


def sample(n: int) -> list[Case]:
    """A fixed sample of n cases (derandomized: the same list on every run with the same hypothesis version)."""
    drawn: list[Case] = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate], deadline=None)
    @given(case=cases())
    def collect(case):
        drawn.append(case)

    collect()
    return drawn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args(argv)
    drawn = list(dict.fromkeys(sample(args.examples)))  # hypothesis repeats some examples: count each case once
    from entropy_rl.grading import Grader

    with Grader(timeout_s=5.0, workers=2) as grader:
        ours = [grade.correct for grade in grader.grade_many([(case.response, case.gold) for case in drawn])]
    plain = [plain_math_verify(case) for case in drawn]
    counts: Counter[tuple[str, str]] = Counter()
    for case, our, theirs in zip(drawn, ours, plain, strict=True):
        for who, verdict in (("ours", our), ("plain math-verify", theirs)):
            if verdict != case.correct:
                counts[who, "false positives" if verdict else "false negatives"] += 1
        if our != case.correct or theirs != case.correct:
            print(
                f"truth {case.correct!s:5} ours {our!s:5} math-verify {theirs!s:5} {case.kind:32} "
                f"gold {case.gold!r} response {case.response!r}"
            )
    equivalent = sum(case.correct for case in drawn)
    print(f"\n{len(drawn)} distinct cases ({equivalent} equivalent, {len(drawn) - equivalent} perturbed)")
    print("| grader | false positives | false negatives |\n|---|---|---|")
    for who in ("ours", "plain math-verify"):
        print(f"| {who} | {counts[who, 'false positives']} | {counts[who, 'false negatives']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
