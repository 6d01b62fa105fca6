"""GSM8K (Cobbe et al. 2021): grade-school math word problems with numeric answers.

Each record holds `question` and `answer`, a worked solution that ends in `#### <number>`; the
number after `####` (commas, a minus sign or decimals allowed: `#### 1,234`, `#### -5`) is the
ground truth. A response's answer is the last `\\boxed{}` read as a number, also with a unit or
words around it (`answers.read_number`); rewards: 1 equal, 0 another number, -1 no number.

Sources (task option `data`): the Hub id `openai/gsm8k` (config `main`) by default, or a local
folder with `train.jsonl` / `test.jsonl` (or `.parquet`), or one file (see `tasks/loading.py`).
The default prompt is the reference one-shot format (`tasks/prompts.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rise_llm.answers import canonical_number, number_verdict, parse_number
from rise_llm.errors import RiseError
from rise_llm.records import Problem, Verdict
from rise_llm.tasks.base import PromptFormat
from rise_llm.tasks.loading import LoadedTask, Record, load_records, problem_id, unique
from rise_llm.tasks.prompts import MATH_ZERO_SHOT, build_prompt_format

DEFAULT_DATA = "openai/gsm8k"
SPLITS = ("train", "test")
REFERENCE_MAX_NEW_TOKENS = 1000
"""The reference policy's response limit (policies.py, `response_limit=1000`)."""


def final_number(solution: str) -> str | None:
    """The canonical number after the last `####` of a GSM8K solution, else None.

    >>> final_number("48/2 = 24 clips\\n#### 1,234")
    '1234'
    >>> final_number("no marker") is None
    True
    """
    _, sep, tail = solution.rpartition("####")
    value = parse_number(tail.strip()) if sep else None
    return canonical_number(value) if value is not None else None


def to_problem(record: Record) -> tuple[Record, Problem]:
    hint = " (GSM8K records need 'question' and 'answer')"
    question = record.text("question", hint, numbers=False)
    solution = record.text("answer", hint)
    answer = final_number(solution)
    if answer is None:
        raise RiseError(
            f"{record.where}: field 'answer' does not end in '#### <number>' "
            f"(ends with {solution[-40:]!r})"
        )
    problem = Problem(
        id=problem_id("gsm8k", question),
        question=question,
        answer=answer,
        meta={"solution": solution},
    )
    return record, problem


@dataclass
class GSM8KTask(LoadedTask):
    """GSM8K from the Hub or local files.

    Args:
        data: a Hugging Face Hub dataset id (default openai/gsm8k), a local folder holding
            train.jsonl / test.jsonl (or .parquet), or one .jsonl / .parquet file.
        data_config: the Hub dataset's config (default: `main` for openai/gsm8k, else none).
    """

    data: str = DEFAULT_DATA
    data_config: str | None = None
    prompt: PromptFormat = field(
        default_factory=lambda: build_prompt_format(GSM8KTask.PROMPT_STYLE, MATH_ZERO_SHOT)
    )
    name: str = "gsm8k"

    SPLITS: ClassVar[tuple[str, ...]] = SPLITS
    PROMPT_STYLE: ClassVar[str] = "one-shot"
    ZERO_SHOT_TEMPLATE: ClassVar[str] = MATH_ZERO_SHOT
    default_max_new_tokens: ClassVar[int] = REFERENCE_MAX_NEW_TOKENS

    def _load(self, split: str) -> list[Problem]:
        config = self.data_config or ("main" if self.data == DEFAULT_DATA else None)
        return unique(to_problem(r) for r in load_records(self.data, split, config))

    def verify(self, problem: Problem, response: str) -> Verdict:
        return number_verdict(problem.answer, response)
