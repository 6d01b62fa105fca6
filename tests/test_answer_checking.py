"""Answer checking on GSM8K and MATH, table-driven from the real benchmark files.

Every case names a record of ../shared/data, quotes its ground truth exactly as the file has it
(the test checks the quote), and gives a response that must score 1 and one that must score 0.
Every response without a final answer scores -1, for both tasks alike (METHOD.md, "Episode").
"""

from __future__ import annotations

import pytest

from rise_llm.answers import last_boxed
from rise_llm.math_equivalence import equivalent, math_verdict
from rise_llm.records import Problem, Verdict
from rise_llm.tasks.gsm8k import GSM8KTask, final_number
from rise_llm.tasks.math import MathTask

# (split, line of the file, text after "####" in the file, a correct \boxed{} content, a wrong one)
GSM8K_CASES = [
    ("test", 1, "18", r"18 \text{ dollars}", "16"),
    ("test", 612, "1,450,000", "1,450,000", "1,450"),
    ("test", 612, "1,450,000", r"\$1450000", "145000"),
    ("test", 202, "114,200", r"\$114,200", "114200.5"),
    ("test", 231, "276,000", "276000.00", "27,600"),
    ("test", 490, "-10", "-10", "10"),
    ("test", 1114, "-3", r"-3^\circ", "3"),
    ("train", 5845, "-47", "-47", "47"),
    ("train", 5716, "-7", "-7.0", "-7.5"),
    ("train", 645, "109,200,000", "109200000", "109,200"),
    ("train", 368, "850,000", r"\$850,000", "850"),
]

# (idx in math/test.jsonl, its ground truth: the solution's last \boxed{}, correct, wrong)
MATH_CASES = [
    (744, r"\frac{14}{3}", r"\dfrac{14}{3}", r"\frac{3}{14}"),
    (757, r"\frac{14}{3}", r"4\frac{2}{3}", "4.67"),
    (860, r"\frac{14}{3}", "14/3", r"-\frac{14}{3}"),
    (808, r"\text{(C)}", "C", r"\text{(D)}"),
    (3017, r"\text{(A)}", "(A)", "B"),
    (315, "C", r"\text{(C)}", "A"),
    (854, r"\$18.90", "18.9", "18.09"),
    (259, r"\$15,\!000", "15000", "1500"),
    (406, r"118 \text{ dollars}", r"\$118", "117"),
    (1673, r"39^\circ", "39", r"141^\circ"),
    (1741, r"180^{\circ}", r"180^\circ", "90"),
    (1468, "15,600", "15600", "15.600"),
    (25, r"[0,\infty)", r"[0, \infty)", r"(0,\infty)"),
    (
        40,
        r"(-\infty,-8)\cup (8,\infty)",
        r"(8,\infty)\cup(-\infty,-8)",
        r"(-\infty,-8]\cup[8,\infty)",
    ),
    (
        56,
        r"\left(-\infty,-\frac 12\right)\cup \left(-\frac 12,\infty\right)",
        r"(-\infty,-\frac{1}{2})\cup(-\frac{1}{2},\infty)",
        r"(-\infty,\infty)",
    ),
    (195, "[-3,2]", "[-3, 2]", "(-3,2)"),
    (798, r"\text{Monday}", r"\text{Monday}", r"\text{Tuesday}"),
    (2141, r"\text{neither}", r"\text{neither}", r"\text{odd}"),
    (526, r"440\text{ cm}^2", "440", "44"),
    (1723, r"0.25\,\text{ cm}", "0.25", "2.5"),
    (1208, r"6\frac15", r"\frac{31}{5}", r"\frac{6}{5}"),
    (385, r"44\%", "44", r"45\%"),
    (3078, "-221_3", "-221_3", "221_3"),
    (119, "b=4", "4", "b=5"),
    (2896, r"1 \pm \sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}", r"1+\sqrt{19}"),
    (
        4459,
        r"\begin{pmatrix} 6 \\ 3 \\ 0 \end{pmatrix}",
        r"\begin{pmatrix}6\\3\\0\end{pmatrix}",
        r"\begin{pmatrix}6\\3\\1\end{pmatrix}",
    ),
    (4914, r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", r"(\frac{\pi}{2},3)"),
    (133, r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", r"\sqrt{3}"),
    (394, r"3\sqrt{2}", r"\sqrt{18}", r"2\sqrt{3}"),
    (26, ".5", "0.5", "5"),
    (9, r"-\frac{1}{8}", "-0.125", r"\frac{1}{8}"),
    (4774, r"\pi", r"\pi", r"2\pi"),
    (3628, "11+x", "x+11", "x+12"),  # the solution boxes x+11, then 11+x: the last counts
]

NO_ANSWER = ["I am not sure.", r"The answer is \boxed{}.", r"\boxed{  }", r"\boxed{12"]


def respond(content: str) -> str:
    return f"Let me work it out step by step.\nSo the answer is $\\boxed{{{content}}}$."


@pytest.fixture(scope="module")
def gsm8k(shared_data) -> GSM8KTask:
    return GSM8KTask(data=str(shared_data / "gsm8k"))


@pytest.fixture(scope="module")
def math_by_idx(shared_data) -> tuple[MathTask, dict[int, Problem]]:
    task = MathTask(data=str(shared_data / "math"))
    return task, {p.meta["idx"]: p for p in task.problems("test")}


def test_there_are_at_least_30_cases() -> None:
    assert len(GSM8K_CASES) + len(MATH_CASES) >= 30


@pytest.mark.parametrize(("split", "line", "in_file", "correct", "wrong"), GSM8K_CASES)
def test_gsm8k_rewards_on_real_records(gsm8k, split, line, in_file, correct, wrong) -> None:
    problem = gsm8k.problems(split)[line - 1]
    assert problem.meta["solution"].endswith(f"#### {in_file}")  # the quote is the file's
    truth = in_file.replace(",", "")
    assert problem.answer == truth
    assert gsm8k.verify(problem, respond(correct)) == Verdict(answer=truth, reward=1)
    verdict = gsm8k.verify(problem, respond(wrong))
    assert verdict.reward == 0 and verdict.answer not in (None, truth)
    for response in NO_ANSWER:
        assert gsm8k.verify(problem, response) == Verdict(answer=None, reward=-1)
    assert gsm8k.verify(problem, respond("eighteen")).reward == -1  # a box with no number


@pytest.mark.parametrize(("idx", "truth", "correct", "wrong"), MATH_CASES)
def test_math_rewards_on_real_records(math_by_idx, idx, truth, correct, wrong) -> None:
    task, by_idx = math_by_idx
    problem = by_idx[idx]
    assert problem.answer == truth  # the quote is the last \boxed{} of the file's solution
    assert last_boxed(problem.meta["solution"]) == truth
    right = task.verify(problem, respond(correct))
    assert right.reward == 1 and right.answer
    assert task.verify(problem, respond(truth)).reward == 1  # the ground truth itself
    assert task.verify(problem, problem.meta["solution"]).reward == 1  # the worked solution
    bad = task.verify(problem, respond(wrong))
    assert bad.reward == 0 and bad.answer
    assert bad.answer != right.answer  # a wrong answer never votes with a right one
    for response in NO_ANSWER:
        assert task.verify(problem, response) == Verdict(answer=None, reward=-1)


def test_math500_ground_truth_is_its_answer_field(shared_data) -> None:
    task = MathTask(data=str(shared_data / "math"))
    problem = next(p for p in task.problems("test500") if p.meta["unique_id"].endswith("807.json"))
    assert problem.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert task.verify(problem, respond(r"\left(3,\frac{\pi}{2}\right)")).reward == 1
    assert task.verify(problem, respond(r"(3, 0)")).reward == 0


def test_math_answer_is_read_from_the_last_box_only() -> None:
    # an earlier right answer does not rescue a wrong final one, and vice versa
    assert math_verdict(r"\frac{14}{3}", r"\boxed{\frac{14}{3}} no: \boxed{5}").reward == 0
    assert math_verdict(r"\frac{14}{3}", r"\boxed{5} no: \boxed{\frac{14}{3}}").reward == 1
    # nested braces of the last box are kept whole
    assert math_verdict(r"\frac{\sqrt{3}}{3}", r"\boxed{\frac{\sqrt{3}}{3}}").reward == 1


def test_equal_math_forms_vote_together() -> None:
    forms = [r"\frac{1}{2}", r"\dfrac12", r"\tfrac{1}{2}", "1/2", r"\frac 12"]
    answers = {math_verdict(r"\frac{1}{2}", respond(f)).answer for f in forms}
    assert len(answers) == 1


def test_equal_canonical_answers_get_equal_rewards(math_by_idx) -> None:
    """The majority vote relies on it: one canonical answer, one reward (metrics.py)."""
    task, by_idx = math_by_idx
    for idx, truth, correct, wrong in MATH_CASES:
        rewards: dict[str, set[int]] = {}
        for content in (truth, correct, wrong):
            verdict = task.verify(by_idx[idx], respond(content))
            rewards.setdefault(verdict.answer, set()).add(verdict.reward)
        assert all(len(r) == 1 for r in rewards.values()), (idx, rewards)


@pytest.mark.slow  # 5000 math-verify parses: ~10 s
def test_every_math_ground_truth_is_readable_and_equivalent_to_itself(math_by_idx) -> None:
    _, by_idx = math_by_idx
    problems = list(by_idx.values())
    assert len(problems) == 5000
    unreadable = [p.meta["idx"] for p in problems if not equivalent(p.answer, p.answer)]
    assert unreadable == []


@pytest.mark.parametrize(
    ("solution", "number"),
    [
        ("He sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("So -5 in all.\n#### -5", "-5"),
        ("#### 0.50", "0.5"),
        ("#### 3.75 ", "3.75"),
        ("a #### 4 in the text, then\n#### 5", "5"),
        ("no final line", None),
        ("#### about five", None),
    ],
)
def test_gsm8k_ground_truth_is_the_number_after_hashes(solution, number) -> None:
    assert final_number(solution) == number


def test_every_gsm8k_ground_truth_is_an_integer(gsm8k) -> None:
    for split, size in (("train", 7473), ("test", 1319)):
        problems = gsm8k.problems(split)
        assert len(problems) == size
        assert all(p.answer.lstrip("-").isdigit() for p in problems)
