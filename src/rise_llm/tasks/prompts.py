"""Prompt formats: zero-shot through the chat template, or the reference one-shot format.

Every task takes the same prompt options (`--task-option KEY=VALUE`, or `task_options` in YAML):

- `prompt`: `zero-shot` (the problem alone, in the task's question template) or `one-shot`
  (the reference format: a worked demonstration, user and assistant, before the problem);
- `question_template`: the user message that carries the problem (`{question}` is replaced);
- `retry_template`: the message after an attempt; `{feedback}` in it is replaced by the
  verifier's feedback on that attempt (default: the task's own, the reference retry message
  for tasks that give no feedback);
- `system_prompt`: a system message that opens every conversation (default: none).

The one-shot texts are those of the authors' reference code (utils/template.py and the
environments' first observation), so a model sees exactly what the paper's models saw.
"""

from __future__ import annotations

from typing import Any

from rise_llm.errors import RiseError
from rise_llm.tasks.base import REFERENCE_RETRY, PromptFormat

STYLES = ("zero-shot", "one-shot")
PROMPT_OPTIONS = ("prompt", "question_template", "retry_template", "system_prompt")

REFERENCE_INSTRUCTION = (
    "You are an AI language model designed to assist with math problem-solving. In this task, "
    "I will provide you with math problems. Your goal is to solve the problem step-by-step, "
    "showing your reasoning at each step. After you have finished solving the problem, present "
    "your final answer as \\boxed{Your Answer}.\n\n"
    "Here is the math word problem for you to solve:\n\n"
)
"""The reference instruction that opens the one-shot demonstration."""

DEMONSTRATION_PROBLEM = (
    "Of the 60 students in the drama club, 36 take mathematics, 27 take physics and 20 students "
    "take both mathematics and physics. How many drama club students take neither mathematics "
    "nor physics?"
)
DEMONSTRATION_SOLUTION = (
    "Step 1: To find the number of drama club students who take neither mathematics nor "
    "physics, we first need to determine the number of students taking only math, only physics, "
    "and both math and physics. Step 2: Out of the 60 students in the drama club, 36 take "
    "mathematics and 27 take physics, and 20 students take both mathematics and physics. "
    "Step 3: To calculate the number of students taking only math, we subtract the number of "
    "students taking both from the total taking math: $36 - 20 = 16$. Step 4: Similarly, to "
    "calculate the number of students taking only physics, we subtract the number of students "
    "taking both from the total taking physics: $27 - 20 = 7$. Step 5: Now, to find the number "
    "of students taking neither math nor physics, we subtract the total number of students "
    "taking only math, only physics, and both from the total number of students in the drama "
    "club. This gives us $60 - 16 - 7 - 20 = \\boxed{17}$ students taking neither. "
    "Answer: \\boxed{17}"
)
ONE_SHOT_QUESTION = (
    "Great job! You've successfully answered the question. Now, let's move on to the next one."
    "\n{question}"
)
"""The reference's first observation: after the demonstration, the problem follows this line."""

ONE_SHOT_DEMONSTRATION = (
    {"role": "user", "content": REFERENCE_INSTRUCTION + DEMONSTRATION_PROBLEM},
    {"role": "assistant", "content": DEMONSTRATION_SOLUTION},
)

MATH_ZERO_SHOT = REFERENCE_INSTRUCTION + "{question}"
"""Zero-shot question template of gsm8k and math: the reference instruction, then the problem."""


def _text_option(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RiseError(
            f"task option {name} must be text, got {type(value).__name__} {value!r}; quote it"
        )
    return value


def build_prompt_format(
    style: str,
    zero_shot_template: str = "{question}",
    question_template: str | None = None,
    retry_template: str | None = None,
    system_prompt: str | None = None,
    default_retry: str = REFERENCE_RETRY,
) -> PromptFormat:
    """The PromptFormat of the prompt options; a task supplies its own zero-shot template.

    >>> build_prompt_format("one-shot").demonstration[1]["content"][-18:]
    'Answer: \\\\boxed{17}'
    """
    style = _text_option("prompt", style)
    if style not in STYLES:
        raise RiseError(f"task option prompt must be one of {', '.join(STYLES)}, got {style!r}")
    question_template = _text_option("question_template", question_template)
    retry_template = _text_option("retry_template", retry_template)
    system_prompt = _text_option("system_prompt", system_prompt)
    if question_template is not None and "{question}" not in question_template:
        raise RiseError(
            f"task option question_template must contain {{question}} (where the problem goes), "
            f"got {question_template!r}"
        )
    one_shot = style == "one-shot"
    default_question = ONE_SHOT_QUESTION if one_shot else zero_shot_template
    return PromptFormat(
        question_template=question_template or default_question,
        retry_template=default_retry if retry_template is None else retry_template,
        system_prompt=system_prompt or None,
        demonstration=ONE_SHOT_DEMONSTRATION if one_shot else (),
    )
