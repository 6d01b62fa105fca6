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


def fill(template: str, problem: Problem, feedback: str | None = None) -> str:
    """`template` with `{question}` replaced by the problem's text and `{feedback}` by the
    feedback on the previous attempt (`Verdict.feedback`; nothing when there is none).

    Plain replacement rather than `str.format`, so templates may hold LaTeX braces such as
    `\\boxed{Your Answer}` and questions may hold anything. The feedback goes in first, so a
    `{question}` inside it (model-written code may hold one) stays as written.

    >>> fill("{feedback} Try again: {question}", Problem("p", "2+2?", "4"), "line 1 is wrong.")
    'line 1 is wrong. Try again: 2+2?'
    """
    parts = template.split("{question}")
    parts = [part.replace("{feedback}", feedback or "") for part in parts]
    return problem.question.join(parts)


@dataclass(frozen=True)
class PromptFormat:
    """How a problem is put to the model.

    question_template formats the first user message; retry_template is the message sent after
    an attempt (`{question}` is substituted in both, and `{feedback}` in the retry message by
    the verifier's feedback on that attempt, `Verdict.feedback`); system_prompt, when set,
    opens every conversation; demonstration is a worked example (user and assistant messages)
    shown before the problem: empty for zero-shot, one pair for the reference one-shot format.
    """

    question_template: str = "{question}"
    retry_template: str = REFERENCE_RETRY
    system_prompt: str | None = None
    demonstration: tuple[Message, ...] = ()

    def first_messages(self, problem: Problem) -> list[Message]:
        messages: list[Message] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.extend(dict(m) for m in self.demonstration)
        messages.append({"role": "user", "content": fill(self.question_template, problem)})
        return messages

    def retry_message(self, problem: Problem, feedback: str | None = None) -> Message:
        return {"role": "user", "content": fill(self.retry_template, problem, feedback)}


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
