"""MBPP (Austin et al. 2021): short Python programming problems, each with three tests.

Each record holds `task_id`, `text` (the task in one sentence), `code` (a reference solution),
`test_list` (assert statements), `test_setup_code` (run before the tests; mostly empty) and
`challenge_test_list` (not used). The prompt shows the task and the FIRST test ("Your code
should pass this test: ..."), as code self-repair papers do (Chen et al. 2023, "Teaching
Large Language Models to Self-Debug"; Olausson et al. 2023).

- Visible test (the feedback; allowed at test time): that first test.
- Hidden tests (the reward): all of `test_list`, after `test_setup_code`.
- The program: the model's code, then `test_setup_code`, then the tests (`tasks/code.py`).

Sources (task option `data`): the Hub's `google-research-datasets/mbpp` (config `full`) by
default, or a local folder holding `SPLIT.jsonl` (or `.parquet`) files, or one file (used for
every split). Splits: `train` (374 problems, for collection), `test` (500), `validation` (90),
`prompt` (10, the few-shot examples of the paper).
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field
from typing import ClassVar

from rise_llm.errors import RiseError
from rise_llm.records import Problem
from rise_llm.tasks.base import PromptFormat
from rise_llm.tasks.code import RETRY_TEMPLATE, CodeTask, code_records, text_list
from rise_llm.tasks.loading import Record, unique
from rise_llm.tasks.prompts import build_prompt_format

DEFAULT_DATA = "google-research-datasets/mbpp"
SPLITS = ("train", "test", "validation", "prompt")

ZERO_SHOT = (
    "You are an expert Python programmer, and here is your task: {question}\n\n"
    "Write the complete function, with any imports it needs, in one ```python code block."
)


def question_text(text: str, first_test: str) -> str:
    """The task as the model sees it: the sentence, then the one visible test.

    >>> print(question_text("Write a function to add two numbers.", "assert add(1, 2) == 3"))
    Write a function to add two numbers. Your code should pass this test:
    <BLANKLINE>
    assert add(1, 2) == 3
    """
    return f"{text.strip()} Your code should pass this test:\n\n{first_test.strip()}"


def tested_function(test: str) -> str | None:
    """The function a test calls: the first called name that is not a builtin.

    >>> tested_function("assert math.isclose(area_circle(2), 12.57, rel_tol=0.01)")
    'area_circle'
    """
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        called = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if called and not hasattr(builtins, node.func.id):
            return node.func.id
    return None


def to_problem(record: Record) -> tuple[Record, Problem]:
    hint = " (MBPP records need task_id, text, code and test_list)"
    task_id = record.text("task_id", hint)
    text = record.text("text", hint, numbers=False)
    code = record.text("code", hint, numbers=False)
    tests = text_list(record, "test_list", hint)
    setup = record.data.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise RiseError(f"{record.where}: field 'test_setup_code' must be text")
    for test in tests:
        try:
            ast.parse(test)
        except SyntaxError as e:
            raise RiseError(
                f"{record.where}: test {test!r} of field 'test_list' is not Python ({e.msg})"
            ) from None
    problem = Problem(
        id=f"mbpp/{task_id}",
        question=question_text(text, tests[0]),
        answer=code,
        meta={
            "entry_point": tested_function(tests[0]),
            "header": "",
            "setup": setup,
            "visible": [tests[0]],
            "hidden": "\n".join(tests) + "\n",
        },
    )
    return record, problem


@dataclass
class MBPPTask(CodeTask):
    """MBPP, judged in the sandbox (`tasks/code.py` has the shared options).

    Args:
        data: a Hugging Face Hub dataset id (default google-research-datasets/mbpp), a local
            folder holding SPLIT.jsonl (or .parquet) files, or one file.
        data_config: the Hub dataset's config (default: `full` for the default id, else none).
    """

    data: str = DEFAULT_DATA
    data_config: str | None = None
    prompt: PromptFormat = field(
        default_factory=lambda: build_prompt_format("zero-shot", ZERO_SHOT, None, RETRY_TEMPLATE)
    )
    name: str = "mbpp"

    SPLITS: ClassVar[tuple[str, ...]] = SPLITS
    ZERO_SHOT_TEMPLATE: ClassVar[str] = ZERO_SHOT

    def _load(self, split: str) -> list[Problem]:
        config = self.data_config or ("full" if self.data == DEFAULT_DATA else None)
        return unique(to_problem(r) for r in code_records(self.data, split, config))
