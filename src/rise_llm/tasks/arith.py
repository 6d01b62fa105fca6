"""The embedded synthetic task `arith`: multi-step integer arithmetic, generated from a seed.

A problem is a chain of operations evaluated left to right, e.g. `What is 12 + 7 - 5 + 9?`,
solved one step per line and ending in `\\boxed{23}`. It needs no download, so the demo and the
tests run anywhere, and its difficulty is set by two knobs: the operand range and the number of
steps. Splits are a partition of the problem space by a hash of the problem text, so train and
test never share a problem whatever the seed or size.

Two verifiers: `verify` (the task's own, used for evaluation) checks the final answer only;
`verify_strict` (offered to collection as verifier `strict`) also checks the work: a response is
correct only when its lines are the problem's steps in order, each `a op b = c` right and chained
(each line's first operand is the previous line's result). A sampled toy model often reaches the
right total through wrong lines; training on such "correct" targets teaches wrong arithmetic.

Step feedback (option `feedback: lines`): the same line check (`work_error`, one implementation)
names the first wrong line of an attempt in the retry message, "Line 2: 7 * 8 = 54 is wrong." —
the environment feedback of the paper's "with environment feedback" setting. It needs only the
question (the steps are in it), as a calculator would, so evaluation without the oracle may show
it (README "Feedback"); it never says what the right result is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from rise_llm.answers import number_verdict, parse_number
from rise_llm.errors import RiseError
from rise_llm.records import Problem, Verdict
from rise_llm.tasks.base import PromptFormat

SPLITS = ("train", "test")
FEEDBACKS = ("none", "lines")
_TEST_BUCKETS = 2  # of 10 hash buckets: 20% of the problem space is test, the rest train


def split_of(question: str) -> str:
    """The split a problem belongs to, decided by its text alone."""
    bucket = int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10
    return "test" if bucket < _TEST_BUCKETS else "train"


def apply(value: int, op: str, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    raise ValueError(f"unknown operation {op!r}")


def render_expression(start: int, steps: list[tuple[str, int]]) -> str:
    """The expression text; a product after a sum is parenthesised so left-to-right is standard."""
    expr = str(start)
    for op, operand in steps:
        if op == "*" and ("+" in expr or "-" in expr):
            expr = f"({expr})"
        expr = f"{expr} {op} {operand}"
    return expr


def solution_lines(start: int, steps: list[tuple[str, int]]) -> list[str]:
    """One line per step, `a op b = c`, evaluated left to right."""
    lines, value = [], start
    for op, operand in steps:
        result = apply(value, op, operand)
        lines.append(f"{value} {op} {operand} = {result}")
        value = result
    return lines


LINE = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
"""One step of a solution: `a op b = c`."""
QUESTION_OPENING = "What is "
"""How every question starts: `What is 7 + 4 - 9?`."""
ANSWER_OPENING = "Answer: \\boxed{"
"""How every solution's last line starts: `Answer: \\boxed{8}`."""
RETRACTION = "Wait: "
"""Starts a line that takes back the line before it and redoes that step (`Wait: 6 + 4 = 10`):
the in-response correction of a toy built with `retraction_fraction` (Physics of Language
Models 2.2, arXiv 2408.16293)."""


def retracted(lines: list[str]) -> list[str]:
    """The lines that stand once each retraction has replaced the line before it.

    >>> retracted(["6 + 4 = 11", "Wait: 6 + 4 = 10", "10 - 8 = 2"])
    ['6 + 4 = 10', '10 - 8 = 2']
    """
    kept: list[str] = []
    for line in lines:
        if line.strip().startswith(RETRACTION.strip()):
            if kept:
                kept.pop()
            line = line.strip()[len(RETRACTION.strip()) :].strip()
        kept.append(line)
    return kept


def work_error(start: int, steps: list[tuple[str, int]], response: str) -> str | None:
    """Why the response's lines are not the problem's steps done right, or None when they are.

    The lines before the final answer must be exactly one `a op b = c` per step, in order: the
    first operand is the start (first line) or the previous line's result (chained), the
    operation and second operand are the step's, and the result is right. A line taken back by
    a retraction (`Wait: ...`) does not count; the retraction's own step does.

    >>> work_error(6, [("+", 4), ("-", 8)], "6 + 4 = 11\\n11 - 8 = 3\\nAnswer: \\\\boxed{3}")
    'line 1: 6 + 4 = 11 is wrong'
    """
    lines = [ln for ln in response.splitlines() if ln.strip()]
    work = [ln for ln in lines if "\\boxed" not in ln and not ln.strip().startswith("Answer")]
    work = retracted(work)
    value = start
    for i, (op, operand) in enumerate(steps, start=1):
        if i > len(work):
            return f"line {i} is missing ({len(steps)} steps, {len(work)} lines)"
        match = LINE.match(work[i - 1])
        if match is None:
            return f"line {i}: {_short(work[i - 1].strip())!r} is not `a op b = c`"
        a, got_op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        if a != value:
            return f"line {i}: starts from {a}, not {value} (the chain is broken)"
        if (got_op, b) != (op, operand):
            return f"line {i}: does `{got_op} {b}`, the problem's step {i} is `{op} {operand}`"
        value = apply(value, op, operand)
        if c != value:
            return f"line {i}: {a} {op} {b} = {c} is wrong"
    if len(work) > len(steps):
        return f"{len(work) - len(steps)} line(s) past the problem's {len(steps)} steps"
    return None


def _short(line: str, most: int = 40) -> str:
    return line if len(line) <= most else line[: most - 3] + "..."


def line_feedback(error: str | None, reward: int) -> str:
    """The step feedback on an attempt: its first wrong line (`work_error`), or what is left
    when every line is right.

    >>> line_feedback("line 2: 7 * 8 = 54 is wrong", 0)
    'Line 2: 7 * 8 = 54 is wrong.'
    >>> line_feedback(None, 1)
    'Every line is right.'
    """
    if error is not None:
        return error[0].upper() + error[1:] + "."
    if reward == -1:
        return "Every line is right, but there is no \\boxed{} answer."
    if reward != 1:
        return "Every line is right, but the boxed answer is not the last line's result."
    return "Every line is right."


def steps_of(problem: Problem) -> list[tuple[str, int]]:
    """A problem's steps as (operation, operand) pairs (stored as JSON lists in its meta)."""
    return [(op, int(v)) for op, v in problem.meta["steps"]]


def format_solution(lines: list[str], answer: int | str) -> str:
    return "\n".join([*lines, f"{ANSWER_OPENING}{answer}}}"])


@dataclass
class ArithTask:
    """Multi-step arithmetic with a seed and difficulty knobs.

    Args:
        min_steps: fewest operations in a problem.
        max_steps: most operations in a problem (inclusive).
        max_operand: operands are drawn from 1..max_operand.
        ops: which operations may appear, any of "+-*".
        max_multiplier: operands of `*` are drawn from 2..max_multiplier.
        allow_negative: when False, a subtraction never takes the running value below zero.
        seed: which problems are drawn (splits stay disjoint for every seed).
        feedback: `none` (the plain retry message, the reference) or `lines` (the retry message
            names the attempt's first wrong line, `line_feedback`; its default retry template
            is FEEDBACK_RETRY_TEMPLATE).
    """

    min_steps: int = 2
    max_steps: int = 4
    max_operand: int = 10
    ops: str = "+-"
    max_multiplier: int = 5
    allow_negative: bool = False
    seed: int = 0
    feedback: str = "none"
    prompt: PromptFormat = field(default_factory=PromptFormat)
    name: str = "arith"

    FEEDBACK_RETRY_TEMPLATE: ClassVar[str] = (
        "Checking your work: {feedback} Please try again. Here's the question: {question}"
    )
    """The retry message with step feedback: the reference's, the verdict in place of its
    "The answer is incorrect."."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise RiseError(
                f"arith: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}"
            )
        if self.max_operand < 2:
            raise RiseError(f"arith: max_operand must be at least 2, got {self.max_operand}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise RiseError(f"arith: ops must be a non-empty subset of '+-*', got {self.ops!r}")
        if self.ops == "-" and not self.allow_negative:
            raise RiseError("arith: ops='-' alone needs allow_negative=True (values go below 0)")
        if "*" in self.ops and self.max_multiplier < 2:
            raise RiseError(f"arith: max_multiplier must be at least 2, got {self.max_multiplier}")
        if self.feedback not in FEEDBACKS:
            raise RiseError(
                f"arith: feedback must be one of {', '.join(FEEDBACKS)}, got {self.feedback!r}"
            )

    @property
    def default_max_new_tokens(self) -> int:
        """Room for the longest correct solution with a 50% margin (character tokens)."""
        largest = self.max_operand * (
            self.max_multiplier**self.max_steps if "*" in self.ops else self.max_steps + 1
        )
        digits = len(str(largest)) + 1  # a sign
        line = 2 * digits + len(str(max(self.max_operand, self.max_multiplier))) + 7
        return int(1.5 * (self.max_steps * line + digits + len(ANSWER_OPENING) + 1 + 1))

    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem (of either split)."""
        n_steps = rng.randint(self.min_steps, self.max_steps)
        start = rng.randint(1, self.max_operand)
        value, steps = start, []
        for _ in range(n_steps):
            op = rng.choice(self.ops)
            if op == "-" and not self.allow_negative and value < 1:
                op = rng.choice(self.ops.replace("-", ""))  # non-empty: checked in __post_init__
            if op == "*":
                operand = rng.randint(2, self.max_multiplier)
            elif op == "-" and not self.allow_negative:
                operand = rng.randint(1, max(1, min(self.max_operand, value)))
            else:
                operand = rng.randint(1, self.max_operand)
            steps.append((op, operand))
            value = apply(value, op, operand)
        question = f"{QUESTION_OPENING}{render_expression(start, steps)}?"
        digest = hashlib.sha256(question.encode()).hexdigest()[:12]
        return Problem(
            id=f"arith-{digest}",
            question=question,
            answer=str(value),
            meta={"start": start, "steps": [list(s) for s in steps]},
        )

    def problems(self, split: str, limit: int | None = None) -> list[Problem]:
        """`limit` distinct problems of `split` (default 1000), always the same for a seed."""
        if split not in SPLITS:
            raise RiseError(f"arith: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        want = 1000 if limit is None else limit
        rng = random.Random(f"arith/{self.seed}/{split}")
        seen: set[str] = set()
        out: list[Problem] = []
        tries = 0
        while len(out) < want:
            tries += 1
            if tries > 50 * want + 1000:
                raise RiseError(
                    f"arith: could only draw {len(out)} distinct {split} problems of the {want} "
                    "asked; raise max_operand or max_steps, or ask for fewer"
                )
            problem = self.sample(rng)
            if problem.question in seen or split_of(problem.question) != split:
                continue
            seen.add(problem.question)
            out.append(problem)
        return out

    def solution(self, problem: Problem) -> str:
        """The correct step-by-step solution, as the toy model is taught to write it."""
        return format_solution(
            solution_lines(problem.meta["start"], steps_of(problem)), problem.answer
        )

    @property
    def verifiers(self) -> dict[str, Callable[[Problem, str], Verdict]]:
        """Other verifiers a stage may use instead of `verify` (`rise collect --verifier`)."""
        return {"strict": self.verify_strict}

    def verify_strict(self, problem: Problem, response: str) -> Verdict:
        """`verify`, and a correct answer counts only when every line is right and chained."""
        verdict = self.verify(problem, response)
        start = problem.meta["start"]
        if verdict.reward == 1 and work_error(start, steps_of(problem), response) is not None:
            return dataclasses.replace(verdict, reward=0)
        return verdict

    def verify(self, problem: Problem, response: str) -> Verdict:
        verdict = number_verdict(problem.answer, response, read=parse_number)
        if self.feedback == "lines":
            error = work_error(problem.meta["start"], steps_of(problem), response)
            verdict.feedback = line_feedback(error, verdict.reward)
        return verdict
