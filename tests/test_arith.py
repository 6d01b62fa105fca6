"""Tests of the embedded `arith` task: seeded problems, disjoint splits, knobs, the verifier."""

from __future__ import annotations

import re

import pytest

from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.errors import RiseError
from rise_llm.records import Problem, Verdict
from rise_llm.rollout import sequential_episodes
from rise_llm.tasks import get_task
from rise_llm.tasks.arith import ArithTask, render_expression, split_of, work_error
from rise_llm.tasks.base import REFERENCE_RETRY, fill


def expression(problem: Problem) -> str:
    assert problem.question.startswith("What is ") and problem.question.endswith("?")
    return problem.question.removeprefix("What is ").removesuffix("?")


def running_values(problem: Problem) -> list[int]:
    """The start and every intermediate value, evaluated left to right from `meta`."""
    value = problem.meta["start"]
    values = [value]
    for op, operand in problem.meta["steps"]:
        value = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
        values.append(value)
    return values


def test_same_seed_same_problems_and_different_seed_different_problems() -> None:
    first = ArithTask(seed=0).problems("train", 50)
    again = ArithTask(seed=0).problems("train", 50)
    other = ArithTask(seed=1).problems("train", 50)
    assert first == again
    assert [p.question for p in first] != [p.question for p in other]
    # a smaller limit is a prefix of a larger one
    assert ArithTask(seed=0).problems("train", 10) == first[:10]


def test_default_limit_is_1000_distinct_problems() -> None:
    problems = ArithTask().problems("test")
    assert len(problems) == 1000
    assert len({p.question for p in problems}) == 1000
    assert len({p.id for p in problems}) == 1000


@pytest.mark.parametrize("seed", [0, 7])
def test_train_and_test_never_share_a_question(seed: int) -> None:
    task = ArithTask(seed=seed)
    train = task.problems("train", 2000)
    test = task.problems("test", 2000)
    train_q = {p.question for p in train}
    test_q = {p.question for p in test}
    assert len(train_q) == 2000 and len(test_q) == 2000
    assert train_q.isdisjoint(test_q)
    assert {split_of(q) for q in train_q} == {"train"}
    assert {split_of(q) for q in test_q} == {"test"}
    # the split is a property of the text, so another seed's test set cannot leak into train
    other_test = {p.question for p in ArithTask(seed=seed + 1).problems("test", 500)}
    assert train_q.isdisjoint(other_test)


@pytest.mark.parametrize(
    "knobs",
    [{}, {"ops": "+-*"}, {"allow_negative": True}, {"min_steps": 1, "max_steps": 6}],
)
def test_answer_is_left_to_right_value_and_solution_verifies(knobs: dict) -> None:
    task = ArithTask(**knobs)
    for problem in task.problems("train", 200):
        assert problem.answer == str(running_values(problem)[-1])
        solution = task.solution(problem)
        assert solution.splitlines()[-1] == f"Answer: \\boxed{{{problem.answer}}}"
        assert len(solution.splitlines()) == len(problem.meta["steps"]) + 1
        assert task.verify(problem, solution) == Verdict(answer=problem.answer, reward=1)


def test_solution_text_of_a_hand_made_problem() -> None:
    task = ArithTask()
    problem = Problem(
        id="p",
        question="What is 12 + 7 - 5?",
        answer="14",
        meta={"start": 12, "steps": [["+", 7], ["-", 5]]},
    )
    assert task.solution(problem) == "12 + 7 = 19\n19 - 5 = 14\nAnswer: \\boxed{14}"


@pytest.mark.parametrize(
    ("response", "answer", "reward"),
    [
        (r"12 + 7 = 19, 19 - 5 = 14. \boxed{14}", "14", 1),
        (r"\boxed{13}", "13", 0),
        (r"I think \boxed{14}, no: \boxed{15}", "15", 0),
        (r"\boxed{15} no wait \boxed{14}", "14", 1),
        (r"\boxed{14.0}", "14", 1),
        (r"\boxed{\$14}", "14", 1),
        (r"\boxed{-14}", "-14", 0),
        ("The answer is 14.", None, -1),
        (r"\boxed{}", None, -1),
        (r"\boxed{fourteen}", None, -1),
        (r"\boxed{14", None, -1),
    ],
)
def test_verify_rewards(response: str, answer: str | None, reward: int) -> None:
    problem = Problem(id="p", question="What is 12 + 7 - 5?", answer="14")
    assert ArithTask().verify(problem, response) == Verdict(answer=answer, reward=reward)


def test_verify_canonicalises_the_boxed_number() -> None:
    problem = Problem(id="p", question="What is 1000 + 24?", answer="1024")
    verdict = ArithTask().verify(problem, r"so \boxed{ 1,024 }")
    assert verdict == Verdict(answer="1024", reward=1)
    assert verdict.correct


def test_operand_range_step_count_and_ops_are_respected() -> None:
    task = ArithTask(min_steps=3, max_steps=5, max_operand=6, ops="+*", max_multiplier=3)
    problems = task.problems("train", 300)
    assert {len(p.meta["steps"]) for p in problems} == {3, 4, 5}
    assert {p.meta["start"] for p in problems} <= set(range(1, 7))
    seen_ops = set()
    for p in problems:
        for op, operand in p.meta["steps"]:
            seen_ops.add(op)
            if op == "*":
                assert 2 <= operand <= 3
            else:
                assert 1 <= operand <= 6
    assert seen_ops == {"+", "*"}


def test_fixed_step_count_and_single_op() -> None:
    problems = ArithTask(min_steps=2, max_steps=2, ops="+").problems("test", 100)
    assert all(len(p.meta["steps"]) == 2 for p in problems)
    assert all(op == "+" for p in problems for op, _ in p.meta["steps"])
    assert all(expression(p).count("+") == 2 for p in problems)


@pytest.mark.parametrize("ops", ["+-", "-+", "+-*"])
def test_no_negative_running_values_by_default(ops: str) -> None:
    problems = ArithTask(ops=ops, min_steps=4, max_steps=6, max_operand=20).problems("train", 500)
    assert all(min(running_values(p)) >= 0 for p in problems)
    assert any(op == "-" for p in problems for op, _ in p.meta["steps"])


def test_no_negative_running_values_without_plus() -> None:
    problems = ArithTask(ops="-*", min_steps=4, max_steps=6).problems("train", 200)
    assert all(min(running_values(p)) >= 0 for p in problems)


def test_subtraction_alone_needs_negatives() -> None:
    with pytest.raises(RiseError, match="allow_negative"):
        ArithTask(ops="-")
    assert ArithTask(ops="-", allow_negative=True).problems("train", 10)


def test_allow_negative_gives_some_negative_answers() -> None:
    problems = ArithTask(allow_negative=True, min_steps=4, max_steps=6).problems("train", 300)
    assert any(int(p.answer) < 0 for p in problems)


@pytest.mark.parametrize(
    ("start", "steps", "text"),
    [
        (3, [("+", 4), ("*", 2)], "(3 + 4) * 2"),
        (3, [("-", 1), ("*", 2)], "(3 - 1) * 2"),
        (3, [("*", 2), ("+", 4)], "3 * 2 + 4"),
        (3, [("*", 2), ("*", 5)], "3 * 2 * 5"),
        (3, [("+", 4), ("*", 2), ("-", 1), ("*", 3)], "((3 + 4) * 2 - 1) * 3"),
        (3, [("+", 4), ("-", 2)], "3 + 4 - 2"),
    ],
)
def test_render_expression(start: int, steps: list[tuple[str, int]], text: str) -> None:
    assert render_expression(start, steps) == text


def test_question_text_has_the_answer_under_standard_precedence() -> None:
    problems = ArithTask(ops="+*", min_steps=2, max_steps=5).problems("train", 300)
    assert any("(" in expression(p) for p in problems)
    for p in problems:
        text = expression(p)
        assert re.fullmatch(r"[0-9+\-* ()]+", text)
        assert eval(text) == int(p.answer), p.question  # safe: digits, operators and parentheses


@pytest.mark.parametrize(
    ("knobs", "knob"),
    [
        ({"min_steps": 0}, "min_steps"),
        ({"min_steps": 5, "max_steps": 3}, "max_steps"),
        ({"max_operand": 1}, "max_operand"),
        ({"ops": ""}, "ops"),
        ({"ops": "+/"}, "ops"),
        ({"ops": "*", "max_multiplier": 1}, "max_multiplier"),
    ],
)
def test_bad_knobs_raise_an_error_naming_the_knob(knobs: dict, knob: str) -> None:
    with pytest.raises(RiseError, match=knob):
        ArithTask(**knobs)


def test_max_multiplier_is_not_checked_without_multiplication() -> None:
    assert ArithTask(ops="+-", max_multiplier=1).max_multiplier == 1


def test_more_problems_than_the_space_holds_raises() -> None:
    # "What is a + b?" with a, b in {1, 2}: only 4 questions in all, split between train and test
    task = ArithTask(min_steps=1, max_steps=1, max_operand=2, ops="+")
    with pytest.raises(RiseError, match=r"could only draw \d+ distinct train problems of the 10"):
        task.problems("train", 10)


def test_unknown_split_raises() -> None:
    with pytest.raises(RiseError, match="'dev'"):
        ArithTask().problems("dev", 5)


def test_get_task_builds_arith_with_options() -> None:
    task = get_task("arith", max_steps=5, seed=3)
    assert isinstance(task, ArithTask)
    assert (task.max_steps, task.seed, task.name) == (5, 3, "arith")


def test_get_task_unknown_name_raises_naming_it() -> None:
    with pytest.raises(RiseError, match=r"unknown task 'nope'.*arith"):
        get_task("nope")


def test_get_task_unknown_option_raises_naming_it() -> None:
    with pytest.raises(RiseError, match=r"'arith' has no option\(s\) bogus") as info:
        get_task("arith", bogus=1)
    assert "max_steps" in str(info.value)  # the message lists the real options


# 6 + 4 - 8 - 2 + 8 = 8, the example of a right total through wrong lines
STRICT_PROBLEM = Problem(
    id="s",
    question="What is 6 + 4 - 8 - 2 + 8?",
    answer="8",
    meta={"start": 6, "steps": [["+", 4], ["-", 8], ["-", 2], ["+", 8]]},
)
RIGHT = "6 + 4 = 10\n10 - 8 = 2\n2 - 2 = 0\n0 + 8 = 8\nAnswer: \\boxed{8}"


@pytest.mark.parametrize(
    ("response", "reward", "why"),
    [
        (RIGHT, 1, None),
        ("6 + 4 = 10\n\n10 - 8 = 2\n2 - 2 = 0\n0 + 8 = 8\nAnswer: \\boxed{8}", 1, None),
        (  # right answer through a wrong line
            "6 + 4 = 11\n11 - 8 = 3\n3 - 2 = 1\n1 + 8 = 8\nAnswer: \\boxed{8}",
            0,
            "line 1: 6 + 4 = 11 is wrong",
        ),
        (  # a broken chain: line 3 starts from another value than line 2's result
            "6 + 4 = 10\n10 - 8 = 2\n4 - 2 = 2\n0 + 8 = 8\nAnswer: \\boxed{8}",
            0,
            "line 3: starts from 4, not 2 (the chain is broken)",
        ),
        (  # a missing line
            "6 + 4 = 10\n10 - 8 = 2\n0 + 8 = 8\nAnswer: \\boxed{8}",
            0,
            "line 3: starts from 0, not 2 (the chain is broken)",
        ),
        (
            "6 + 4 = 10\n10 - 8 = 2\n2 - 2 = 0\nAnswer: \\boxed{8}",
            0,
            "line 4 is missing (4 steps, 3 lines)",
        ),
        (  # another step than the problem's
            "6 + 4 = 10\n10 - 6 = 4\n4 - 2 = 2\n2 + 6 = 8\nAnswer: \\boxed{8}",
            0,
            "line 2: does `- 6`, the problem's step 2 is `- 8`",
        ),
        (
            RIGHT.replace("Answer", "8 + 0 = 8\nAnswer"),
            0,
            "1 line(s) past the problem's 4 steps",
        ),
        ("The total is 8.\nAnswer: \\boxed{8}", 0, "line 1: 'The total is 8.' is not `a op b = c`"),
        (RIGHT.replace("{8}", "{9}"), 0, None),  # right work, wrong answer: 0 as before
        (  # a slip taken back in place (a toy with retractions): the retraction's step counts
            "6 + 4 = 11\nWait: 6 + 4 = 10\n10 - 8 = 2\n2 - 2 = 0\n0 + 8 = 8\nAnswer: \\boxed{8}",
            1,
            None,
        ),
        (  # a retraction that redoes the step wrong again
            "6 + 4 = 11\nWait: 6 + 4 = 12\n12 - 8 = 4\n4 - 2 = 2\n2 + 8 = 8\nAnswer: \\boxed{8}",
            0,
            "line 1: 6 + 4 = 12 is wrong",
        ),
        ("6 + 4 = 10", -1, "line 2 is missing (4 steps, 1 lines)"),  # no answer stays -1
    ],
)
def test_strict_verifier_checks_every_line(response, reward, why):
    task = ArithTask()
    steps = [(op, v) for op, v in STRICT_PROBLEM.meta["steps"]]
    assert work_error(6, steps, response) == why
    strict = task.verifiers["strict"](STRICT_PROBLEM, response)
    plain = task.verify(STRICT_PROBLEM, response)
    assert strict.reward == reward
    assert strict.answer == plain.answer  # the same vote in a majority
    assert plain.reward >= strict.reward  # strict only ever demotes
    assert plain.feedback is None  # no feedback unless asked for: the reference retry message
    # step feedback: the same line check names the first wrong line, never the right result
    lines = ArithTask(feedback="lines")
    feedback = lines.verify(STRICT_PROBLEM, response).feedback
    assert lines.verify_strict(STRICT_PROBLEM, response).feedback == feedback
    if why is not None:
        assert feedback == why[0].upper() + why[1:] + "."
    elif plain.reward == 1:
        assert feedback == "Every line is right."
    else:
        assert (
            feedback == "Every line is right, but the boxed answer is not the last line's result."
        )


def test_strict_verifier_passes_every_reference_solution():
    task = ArithTask(min_steps=1, max_steps=6, ops="+-*", allow_negative=True)
    for problem in task.problems("test", 300):
        assert task.verify_strict(problem, task.solution(problem)).reward == 1


def test_step_feedback_reaches_the_next_prompt_and_the_records():
    """With `feedback: lines` the retry message after an attempt names its first wrong line;
    the plain task keeps the reference message word for word."""
    wrong = "6 + 4 = 11\n11 - 8 = 3\n3 - 2 = 1\n1 + 8 = 9\nAnswer: \\boxed{9}"

    class Scripted:
        def generate(self, convs, n=1, params=None, desc="", keys=None):
            return [
                [Completion(t, len(t), "stop")]
                for t in (wrong if len(c) == 1 else RIGHT for c in convs)
            ]

    with_lines = get_task("arith", feedback="lines")
    plain = get_task("arith")
    for task, expected in [
        (
            with_lines,
            "Checking your work: Line 1: 6 + 4 = 11 is wrong. Please try again. "
            f"Here's the question: {STRICT_PROBLEM.question}",
        ),
        (plain, fill(REFERENCE_RETRY, STRICT_PROBLEM)),
    ]:
        (episode,) = sequential_episodes(
            Scripted(), task, [STRICT_PROBLEM], 3, 2, SamplingParams(), oracle=True
        )
        assert [t.reward for t in episode.turns] == [0, 1]  # the oracle stops at the fix
        assert episode.turns[1].messages[-1] == {"role": "user", "content": expected}
        if task is with_lines:
            assert [t.feedback for t in episode.turns] == [
                "Line 1: 6 + 4 = 11 is wrong.",
                "Every line is right.",
            ]
