"""What every task provides: problems, prompt formatting, and a verifier.

A task turns a single-turn problem into the messages of a multi-turn episode (METHOD.md,
"Episode"): the first prompt, and the retry message the environment sends after an attempt.
Its verifier reads the final answer and gives the reward (1 correct, 0 wrong, -1 no answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rise_llm.records import Message, Problem, Verdict

REFERENCE_RETRY = "The answer is incorrect. Please try again. Here's the question: {question}"
"""The retry message of the authors' reference code; it restates the question."""


@dataclass(frozen=True)
class PromptFormat:
    """How a problem is put to the model.

    question_template formats the first user message; retry_template is the feedback sent after
    an attempt (`{question}` is substituted); system_prompt, when set, opens every conversation.
    """

    question_template: str = "{question}"
    retry_template: str = REFERENCE_RETRY
    system_prompt: str | None = None

    def first_messages(self, problem: Problem) -> list[Message]:
        messages: list[Message] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append(
            {"role": "user", "content": self.question_template.format(question=problem.question)}
        )
        return messages

    def retry_message(self, problem: Problem) -> Message:
        return {"role": "user", "content": self.retry_template.format(question=problem.question)}


class Task(Protocol):
    """A problem source, a prompt format and a verifier."""

    name: str
    prompt: PromptFormat
    default_max_new_tokens: int

    def problems(self, split: str, limit: int | None = None) -> list[Problem]:
        """The problems of a split, in a fixed order; the first `limit` when given."""
        ...

    def verify(self, problem: Problem, response: str) -> Verdict:
        """The extracted canonical answer and the reward of one response."""
        ...
