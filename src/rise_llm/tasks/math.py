"""MATH (Hendrycks et al. 2021): competition problems with LaTeX answers, and MATH500.

Each record holds `problem` and `solution`; the ground truth is the content of the solution's
last `\\boxed{}` (or the record's `answer` field when it has one, as MATH500 does). Answers are
compared through math-verify (`math_equivalence.py`), rewards 1 / 0 / -1 as for GSM8K.

Splits:
- `test`: the full MATH test split (5000 problems);
- `test500`: MATH500, the 500-problem subset of the test split used by PRM800K and most papers;
- `train`: the source's train split when it has one (the Hub's MATH, 7500 problems); without a
  train file (a local folder holding only test files, as ../shared/data/math does) it is the
  4500 test problems that are not in MATH500 (exact `problem` match), the pool PRM800K trains
  on. Evaluate such a model on `test500`, never on `test`, which contains its training problems.

Sources: task option `data` (default the Hub id DigitalLearningGmbH/MATH-lighteval, the full
MATH with train and test) and `math500` (default HuggingFaceH4/MATH-500), which is only used
when `data` is not a folder holding `test500.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rise_llm.answers import last_boxed
from rise_llm.errors import RiseError
from rise_llm.math_equivalence import math_verdict
from rise_llm.records import Problem, Verdict
from rise_llm.tasks.base import PromptFormat
from rise_llm.tasks.loading import (
    LoadedTask,
    Record,
    has_split,
    load_records,
    problem_id,
    unique,
)
from rise_llm.tasks.prompts import MATH_ZERO_SHOT, build_prompt_format

DEFAULT_DATA = "DigitalLearningGmbH/MATH-lighteval"
DEFAULT_MATH500 = "HuggingFaceH4/MATH-500"
SPLITS = ("train", "test", "test500")
REFERENCE_MAX_NEW_TOKENS = 1000
"""The reference policy's response limit (policies.py, `response_limit=1000`)."""


def to_problem(record: Record) -> tuple[Record, Problem]:
    hint = " (MATH records need 'problem' and 'solution')"
    question = record.text("problem", hint, numbers=False)
    solution = record.text("solution", hint)
    answer = record.text("answer") if record.data.get("answer") is not None else None
    answer = answer if answer is not None else last_boxed(solution)
    if answer is None or not answer.strip():
        raise RiseError(
            f"{record.where}: field 'solution' has no \\boxed{{}} final answer and the record "
            "has no 'answer' field"
        )
    meta = {
        k: record.data[k]
        for k in ("idx", "level", "type", "subject", "unique_id")
        if k in record.data
    }
    problem = Problem(
        id=problem_id("math", question),
        question=question,
        answer=answer.strip(),
        meta={**meta, "solution": solution},
    )
    return record, problem


@dataclass
class MathTask(LoadedTask):
    """MATH and MATH500 from the Hub or local files.

    Args:
        data: a Hugging Face Hub dataset id with train and test splits (default
            DigitalLearningGmbH/MATH-lighteval), a local folder holding test.jsonl (and
            optionally train.jsonl and test500.jsonl; .parquet also works), or one file.
        data_config: the Hub dataset's config (default none).
        math500: where MATH500 comes from when `data` is not a folder with test500.jsonl:
            a Hub id (its test split) or a local file (default HuggingFaceH4/MATH-500).
    """

    data: str = DEFAULT_DATA
    data_config: str | None = None
    math500: str = DEFAULT_MATH500
    prompt: PromptFormat = field(
        default_factory=lambda: build_prompt_format(MathTask.PROMPT_STYLE, MATH_ZERO_SHOT)
    )
    name: str = "math"

    SPLITS: ClassVar[tuple[str, ...]] = SPLITS
    PROMPT_STYLE: ClassVar[str] = "one-shot"
    ZERO_SHOT_TEMPLATE: ClassVar[str] = MATH_ZERO_SHOT
    default_max_new_tokens: ClassVar[int] = REFERENCE_MAX_NEW_TOKENS

    def _load(self, split: str) -> list[Problem]:
        if split == "test500":
            if Path(self.data).expanduser().is_dir() and has_split(self.data, "test500"):
                records = load_records(self.data, "test500")
            else:
                records = load_records(self.math500, "test")
            return unique(to_problem(r) for r in records)
        if split == "train" and not has_split(self.data, "train"):
            held_out = {p.question for p in self.problems("test500")}
            return [p for p in self.problems("test") if p.question not in held_out]
        return unique(to_problem(r) for r in load_records(self.data, split, self.data_config))

    def verify(self, problem: Problem, response: str) -> Verdict:
        return math_verdict(problem.answer, response)
