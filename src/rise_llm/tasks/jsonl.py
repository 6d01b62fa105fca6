"""A user's own task: problems from a JSON Lines (or Parquet) file and a verifier.

    rise evaluate --task jsonl --task-option path=problems.jsonl \\
        --task-option verifier=check.py:verify --model MODEL

Each line is a JSON object with the question and its answer (fields `question` and `answer` by
default; other names with `question_field` / `answer_field`), and optionally an `id`; every
field of the line reaches the verifier in `problem.meta`. `path` is one file, used for every
split, or a folder holding `train.jsonl` and `test.jsonl` (so `collect` and `evaluate` use
different problems), or a Hugging Face Hub id. The verifier and what it receives and returns
are described in `rise_llm/verifiers.py`; the README has a complete example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rise_llm.errors import RiseError
from rise_llm.records import Problem, Verdict
from rise_llm.tasks.base import PromptFormat
from rise_llm.tasks.loading import LoadedTask, Record, load_records, problem_id, unique
from rise_llm.verifiers import Verifier, call_verifier, load_verifier

DEFAULT_MAX_NEW_TOKENS = 1000


@dataclass
class JsonlTask(LoadedTask):
    """Problems from a JSON Lines file and a verifier function.

    Args:
        path: a .jsonl or .parquet file (used for every split), a folder holding SPLIT.jsonl
            files, or a Hugging Face Hub id.
        verifier: `math` (default), `number`, `module:function`, `path/to/file.py:function`,
            or the name of an installed entry point of group rise_llm.verifiers.
        question_field: the record field holding the question.
        answer_field: the record field holding the reference answer.
        id_field: the record field holding a unique id; records without one get an id made
            from the question.
    """

    path: str | None = None
    verifier: str = "math"
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    prompt: PromptFormat = field(default_factory=PromptFormat)
    name: str = "jsonl"
    _verify: Verifier = field(init=False, repr=False, compare=False)

    default_max_new_tokens: ClassVar[int] = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        if not self.path:
            raise RiseError(
                "task jsonl needs its problems: --task-option path=FILE.jsonl "
                "(or task_options: {path: ...} in YAML)"
            )
        self._verify = load_verifier(self.verifier)

    def to_problem(self, record: Record) -> tuple[Record, Problem]:
        hint = " (set {}_field=NAME if your records call it otherwise)"
        question = record.text(self.question_field, hint.format("question"), numbers=False)
        answer = record.text(self.answer_field, hint.format("answer"))
        given = record.data.get(self.id_field)
        if given is not None and (isinstance(given, bool) or not isinstance(given, str | int)):
            raise RiseError(
                f"{record.where}: field {self.id_field!r} must be text or an integer, got "
                f"{type(given).__name__}; give each record a unique string id, or none"
            )
        pid = str(given) if given is not None else problem_id("jsonl", question)
        return record, Problem(id=pid, question=question, answer=answer, meta=dict(record.data))

    def _load(self, split: str) -> list[Problem]:
        return unique(self.to_problem(r) for r in load_records(self.path, split))

    def verify(self, problem: Problem, response: str) -> Verdict:
        return call_verifier(self._verify, self.verifier, problem, response)
