"""Answer extraction and math-verify grading under a hard per-call time limit.

Design (see docs/evaluation.md):

* The final answer is pulled out of the last ``tail_chars`` characters of a response by plain-Python, linear-time
  rules (last ``\\boxed{}``, else ``#### x``, else "the answer is x", else the last number). Only that short string
  ever reaches math-verify, so megabyte outputs cost nothing.
* Plain decimal numbers ("-.5", "1\\,000", "12.5\\%") are read exactly and compared without math-verify; identical
  answers are accepted and an answer with digits split by spaces ("1 2") rejected. The rest are compared by
  math-verify (LaTeX extraction only: its plain-expression extractor runs ``sympy.parse_expr``, which ``eval``s text,
  so model output never reaches it).
* Every math-verify call runs in a worker process. math-verify's own ``signal.alarm`` timeouts only work in a main
  thread and cannot interrupt long C-level work (big-integer powers inside sympy), so the parent enforces the limit:
  a worker that has not answered by the deadline is killed and respawned, and the answer is graded wrong with status
  ``"timeout"``. This works from any thread, and the caller never blocks longer than the limit per call.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import re
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from typing import Literal, cast

from entropy_rl.errors import check

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_TAIL_CHARS = 6000
# A final answer longer than this is not an answer: it would only feed the LaTeX parser something to choke on.
MAX_ANSWER_CHARS = 1000

Status = Literal["ok", "no_answer", "timeout", "error"]
Extraction = Literal["final_answer", "boxed", "last_boxed"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)([^\n]*)", re.IGNORECASE)
_INLINE_MATH = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]")

# How numbers are written. A thousands separator: a comma ("1,000", "1{,}000", "10,\!080") or a LaTeX space
# ("1\,000", "1\;000", "1\ 000"; not "~", which also writes ranges: "100~200"). It only counts between groups of
# exactly three digits, so that a tuple "1,2" is not read as the number 12. Plain whitespace is never one: "1 2" is
# two numbers typed next to each other, not 12.
_SPACE_SEP = r"\\[,;: ]"
_GROUP_SEP = rf"(?:,(?:\\!)?|\{{,\}}|{_SPACE_SEP})"
_INTEGER = rf"(?:\d{{1,3}}(?:{_GROUP_SEP}\d{{3}})+|\d+)"
# A number in running text, for extraction. A decimal may start with its point (".5", "-.5"), unless the point ends
# a word ("apples.5" is "5").
_NUMBER = re.compile(rf"-?(?:{_INTEGER}(?:\.\d+)?|(?<![\w.])\.\d+)(?:/\d+)?")
# A whole answer that is one decimal number: sign, currency sign, digits, point, percent sign (all but digits optional).
_PLAIN_NUMBER = re.compile(rf"(?P<sign>[-+]?)(?:\\\$)?(?P<int>{_INTEGER})?(?:\.(?P<frac>\d*))?(?P<pct>\\?%)?", re.ASCII)
_SEP_BETWEEN_DIGITS = re.compile(rf"(?<=\d){_GROUP_SEP}(?=\d)")
# LaTeX spaces between groups of three digits, anywhere in an answer.
_SPACED_THOUSANDS = re.compile(rf"(?<![\d.])\d{{1,3}}(?:(?:{_SPACE_SEP})\d{{3}})+(?!\d)")
# Digits separated only by spacing, once thousands separators are gone: "1 2", "3\,14". LaTeX shows the first as 12,
# math-verify reads it as 1 + 2 (its mixed-number rule, as in "1 \frac12") and the second as 3·14: no reading is safe.
_SPACED_DIGITS = re.compile(rf"\d(?:\s|{_SPACE_SEP})+\d")
_WHITESPACE = re.compile(r"(?<=\d)(\s+)(?=\d)|(?<!\\)\s+")  # keeps "\ ", a LaTeX space


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``; None if absent or never closed."""
    starts = [match.end() for match in _BOXED.finditer(text)]
    if not starts:
        return None
    # Brace matching by a flat scan (not a regex, not recursion): linear time, no recursion limit on deep nesting.
    depth = 1
    for i in range(starts[-1], len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[starts[-1] : i].strip()
    return None


def boxed_contents(text: str) -> list[str]:
    """Contents of every closed outermost ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, in order.

    One linear pass with a stack of open boxes: untrusted text with thousands of unclosed boxes costs no more."""
    opens = {match.end() for match in _BOXED.finditer(text)}  # index just after each box's "{"
    found: list[str] = []
    stack: list[tuple[int, int]] = []  # (content start, brace depth inside the box)
    depth = 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
            if i + 1 in opens:
                stack.append((i + 1, depth))
        elif char == "}":
            if stack and stack[-1][1] == depth:
                start, _ = stack.pop()
                if not stack:
                    found.append(text[start:i].strip())
            depth = max(0, depth - 1)
    return found


def extract_boxed(response: str, tail_chars: int = DEFAULT_TAIL_CHARS) -> str | None:
    """The final ``\\boxed{}`` answer of ``response``'s last ``tail_chars`` characters, and nothing else: None when
    there is no box, or when the boxes disagree ("\\boxed{12} or maybe \\boxed{42}" is a list of candidates, and
    grading only the last one would reward hedging). Used by the `math` training reward; verl's scorers grade the
    last box instead (extract_last_boxed)."""
    boxes = {normalize_number(box) for box in boxed_contents(response[-tail_chars:]) if box}
    if len(boxes) != 1:
        return None
    answer = boxes.pop()
    return answer if len(answer) <= MAX_ANSWER_CHARS else None


def extract_last_boxed(response: str, tail_chars: int = DEFAULT_TAIL_CHARS) -> str | None:
    """The last ``\\boxed{}`` of ``response``'s last ``tail_chars`` characters, whatever earlier boxes say (the
    policy of verl's math_verify, prime_math and DAPO strict-box scorers): a response that corrects itself in a later
    box is graded on its correction, and one that hedges over several boxes on the last of them. None without a box."""
    answer = last_boxed(response[-tail_chars:])
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return None
    return normalize_number(answer)


def after_hashes(text: str) -> str | None:
    """The rest of the line after the last ``####`` (GSM8K's answer marker), cleaned; None if there is none."""
    found = _HASHES.findall(text)
    return _clean_final(found[-1]) if found else None


def normalize_number(answer: str) -> str:
    """Drop thousands separators: every one of a plain number ("70,000" -> "70000", "10,\\!080" -> "10080"), and
    LaTeX spaces between digit groups anywhere ("(1\\,000, 2)" -> "(1000, 2)"; a comma there may separate a tuple).
    Otherwise the answer is returned stripped but unchanged. math-verify would read "1\\,000" as the product 1·000."""
    answer = answer.strip()
    if _PLAIN_NUMBER.fullmatch(answer):
        return _SEP_BETWEEN_DIGITS.sub("", answer)
    return _SPACED_THOUSANDS.sub(lambda m: _SEP_BETWEEN_DIGITS.sub("", m[0]), answer)


def _clean_final(rest: str) -> str | None:
    """Turn the text after an answer anchor ("####", "the answer is") into the bare answer."""
    rest = rest.replace("\\$", "").strip()  # an escaped dollar is a currency sign, not math mode
    math_span = _INLINE_MATH.search(rest)
    if math_span:
        answer = next(group for group in math_span.groups() if group is not None)
    elif "\\" in rest:
        answer = rest  # bare LaTeX such as \frac{1}{2}: a number regex would cut it apart
    else:
        number = _NUMBER.search(rest)
        answer = number.group(0) if number else rest
    return answer.strip().rstrip(".").strip() or None


def extract_answer(response: str, tail_chars: int = DEFAULT_TAIL_CHARS) -> str | None:
    """Final answer of a model response, by the first rule that applies to its last ``tail_chars`` characters:
    last ``\\boxed{}``; text after the last ``####``; text after the last "answer is"/"answer:"; the last number."""
    tail = response[-tail_chars:]
    answer = last_boxed(tail)
    if answer is None:
        answer = after_hashes(tail)
    if answer is None:
        found = _ANSWER_IS.findall(tail)
        answer = _clean_final(found[-1]) if found else None
    if answer is None:
        numbers = _NUMBER.findall(tail)
        answer = numbers[-1] if numbers else None
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return None
    return normalize_number(answer)


def read_number(answer: str) -> tuple[Fraction, bool] | None:
    """(exact value, written with a percent sign) of an answer that is one plain decimal number, else None.

    Reads "-.5", "1{,}000.25", "10,\\!080", "1\\,000", "12.5\\%", "\\$32,\\!348", "$5$" and "5." (a sentence's
    full stop); not fractions, powers or anything else, which math-verify compares.
    """
    match = _PLAIN_NUMBER.fullmatch(answer.strip().strip("$").strip())
    if match is None or not (match["int"] or match["frac"]):
        return None
    digits = _SEP_BETWEEN_DIGITS.sub("", match["int"] or "0")
    return Fraction(f"{match['sign']}{digits}.{match['frac'] or 0}"), bool(match["pct"])


def _numbers_match(answer: tuple[Fraction, bool], gold: tuple[Fraction, bool]) -> bool:
    (a, a_pct), (g, g_pct) = answer, gold
    if a_pct == g_pct:
        return a == g
    # "25%" matches a gold 25 (benchmarks write percentages without the sign) and 0.25, as in math-verify.
    pct, other = (a, g) if a_pct else (g, a)
    return other in (pct, pct / 100)


def _canonical(answer: str) -> str:
    """The answer without what does not change its meaning: "$" and a full stop at the ends, thousands separators,
    LaTeX's negative thin space, and whitespace, except that digits split by spaces stay split (by one space)."""
    answer = normalize_number(answer.strip().strip("$").strip().removesuffix(".").replace("\\!", ""))
    return _WHITESPACE.sub(lambda m: " " if m[1] else "", answer)


def match_without_math_verify(answer: str, gold: str) -> bool | None:
    """The verdict when it needs no math-verify (None when it does): plain numbers are compared exactly, identical
    answers accepted, and an answer whose digits are split by spaces rejected."""
    answer_number, gold_number = read_number(answer), read_number(gold)
    if answer_number is not None and gold_number is not None:
        return _numbers_match(answer_number, gold_number)
    answer, gold = _canonical(answer), _canonical(gold)
    if answer == gold:
        return True
    if _SPACED_DIGITS.search(answer):
        return False
    return None


@dataclass(frozen=True)
class Grade:
    extracted: str | None
    correct: bool
    status: Status


def _verify_in_worker(gold: str, answer: str, timeout_s: int) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify

    # LaTeX extraction only: math-verify's ExprExtractionConfig would hand model text to sympy.parse_expr (eval).
    config = [LatexExtractionConfig()]
    gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=timeout_s)
    answer_parsed = parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=timeout_s)
    return bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s))


def _worker_loop(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us on close
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeout warnings echo the whole input
    _verify_in_worker("1", "1", 1)  # pay imports and parser construction before the parent starts any clock
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            conn.send(_verify_in_worker(*job))
        except Exception:  # math-verify raising on odd input is a failed grade, not a crashed evaluation
            conn.send(None)


class _Worker:
    def __init__(self, ctx: mp.context.SpawnContext, startup_timeout_s: float) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child,), daemon=True, name="entropy-rl-grader")
        self.process.start()
        child.close()
        self.startup_timeout_s = startup_timeout_s

    def wait_ready(self) -> None:
        try:
            ready = self.conn.poll(self.startup_timeout_s) and self.conn.recv() == "ready"
        except EOFError:  # it died while starting; its traceback is on stderr
            self.process.join()
            code = self.process.exitcode
            self.kill()
            # The usual cause: spawn re-imports the parent's main script in the worker, and a script that makes a
            # Grader at top level then makes one again in the worker, whose start multiprocessing refuses.
            raise RuntimeError(
                f"a grading worker exited (code {code}) before it was ready; its error is printed above. Grader "
                "starts its workers with multiprocessing's 'spawn', which re-imports your main script: in a script, "
                'create and use the Grader under `if __name__ == "__main__":`'
            ) from None
        if not ready:
            self.kill()
            raise RuntimeError(f"a grading worker failed to start within {self.startup_timeout_s:.0f}s")

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class Grader:
    """Grades (response, gold) pairs; each math-verify call is limited to ``timeout_s`` seconds of wall-clock time.

    ``extraction`` picks how the final answer is found: ``"final_answer"`` (extract_answer, the evaluator's rules),
    ``"boxed"`` (extract_boxed: only an unambiguous final ``\\boxed{}``) or ``"last_boxed"`` (extract_last_boxed: the
    last box, whatever earlier ones say). Holds ``workers`` worker processes
    (spawned, so safe next to CUDA and torch threads), started lazily and reused; use as a context manager or call
    ``close()``.
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        workers: int = 2,
        tail_chars: int = DEFAULT_TAIL_CHARS,
        startup_timeout_s: float = 120.0,
        extraction: Extraction = "final_answer",
    ) -> None:
        check(0 < timeout_s < math.inf, "timeout_s", timeout_s, "seconds > 0")
        check(workers >= 1, "workers", workers, "an integer >= 1")
        extractors = {"final_answer": extract_answer, "boxed": extract_boxed, "last_boxed": extract_last_boxed}
        check(extraction in extractors, "extraction", extraction, f"one of {tuple(extractors)}")
        # final_answer: the evaluator's rules; boxed: the `math` reward's; last_boxed: verl's scorers' box policy.
        self._extract = extractors[extraction]
        self.timeout_s = timeout_s
        self.num_workers = workers
        self.tail_chars = tail_chars
        self.startup_timeout_s = startup_timeout_s
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._workers = []

    def grade(self, response: str, gold: str) -> Grade:
        return self.grade_many([(response, gold)])[0]

    def grade_many(self, pairs: Sequence[tuple[str, str]]) -> list[Grade]:
        grades: list[Grade | None] = [None] * len(pairs)
        jobs: list[tuple[int, str, str]] = []
        for i, (response, gold) in enumerate(pairs):
            answer = self._extract(response, self.tail_chars)
            if answer is None:
                grades[i] = Grade(None, False, "no_answer")
            elif (verdict := match_without_math_verify(answer, gold)) is not None:
                grades[i] = Grade(answer, verdict, "ok")
            else:
                jobs.append((i, gold, answer))
        for (i, _, answer), verdict in zip(jobs, self._verify_all([(g, a) for _, g, a in jobs]), strict=True):
            grades[i] = Grade(answer, verdict is True, "ok" if isinstance(verdict, bool) else verdict)
        return cast(list[Grade], grades)

    def _respawn(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._ctx, self.startup_timeout_s)
        self._workers[slot].wait_ready()

    def _verify_all(self, jobs: list[tuple[str, str]]) -> list[bool | Literal["timeout", "error"]]:
        """math-verify each (gold, answer) job on the worker pool; the parent owns every deadline."""
        if not jobs:
            return []
        if not self._workers:
            self._workers = [_Worker(self._ctx, self.startup_timeout_s) for _ in range(self.num_workers)]
            for worker in self._workers:
                worker.wait_ready()
        inner_timeout = max(1, math.ceil(self.timeout_s))  # signal.alarm takes whole seconds; ours is the hard one
        results: list[bool | Literal["timeout", "error"] | None] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (job index, deadline)
        while queue or busy:
            for slot in range(len(self._workers)):
                if slot not in busy and queue:
                    job = queue.popleft()
                    try:
                        self._workers[slot].conn.send((*jobs[job], inner_timeout))
                    except OSError:  # the idle worker died (e.g. killed for memory): start another and retry
                        self._respawn(slot)
                        self._workers[slot].conn.send((*jobs[job], inner_timeout))
                    busy[slot] = (job, time.monotonic() + self.timeout_s)
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait(
                [self._workers[slot].conn for slot in busy], timeout=max(0.0, next_deadline - time.monotonic())
            )
            for slot in [slot for slot in busy if self._workers[slot].conn in ready]:
                job, _ = busy.pop(slot)
                try:
                    verdict = self._workers[slot].conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. out of memory): respawn it, grade the job wrong
                    self._respawn(slot)
                    verdict = None
                results[job] = "error" if verdict is None else bool(verdict)
            for slot, (job, deadline) in list(busy.items()):
                # poll(): an answer that arrived while another worker was being respawned is still on time.
                if time.monotonic() >= deadline and not self._workers[slot].conn.poll():
                    del busy[slot]
                    results[job] = "timeout"
                    self._respawn(slot)
        return cast(list[bool | Literal["timeout", "error"]], results)
