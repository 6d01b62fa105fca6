"""Task registry: look a task up by name, with its options.

`get_task("gsm8k", data="../shared/data/gsm8k", prompt="zero-shot")` returns a ready task. The
options are the task dataclass's fields plus the prompt options every task shares (`prompt`,
`question_template`, `retry_template`, `system_prompt`; see `tasks/prompts.py`), which are
turned into the task's PromptFormat here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rise_llm.errors import RiseError
from rise_llm.tasks.arith import ArithTask
from rise_llm.tasks.base import REFERENCE_RETRY, PromptFormat, Task
from rise_llm.tasks.gsm8k import GSM8KTask
from rise_llm.tasks.humaneval import HumanEvalTask
from rise_llm.tasks.jsonl import JsonlTask
from rise_llm.tasks.math import MathTask
from rise_llm.tasks.mbpp import MBPPTask
from rise_llm.tasks.prompts import PROMPT_OPTIONS, build_prompt_format

TASKS: dict[str, Callable[..., Task]] = {
    "arith": ArithTask,
    "gsm8k": GSM8KTask,
    "math": MathTask,
    "jsonl": JsonlTask,
    "humaneval": HumanEvalTask,
    "mbpp": MBPPTask,
}


def _prompt_format(factory: Callable[..., Task], options: dict[str, Any]) -> PromptFormat:
    """The task's PromptFormat from the prompt options given (its defaults for the others)."""
    given = {k: options.pop(k) for k in PROMPT_OPTIONS if k in options}
    if isinstance(given.get("prompt"), PromptFormat):
        if len(given) > 1:
            raise RiseError("give either a PromptFormat as prompt or the prompt options, not both")
        return given["prompt"]
    return build_prompt_format(
        given.pop("prompt", getattr(factory, "PROMPT_STYLE", "zero-shot")),
        getattr(factory, "ZERO_SHOT_TEMPLATE", "{question}"),
        default_retry=_default_retry(factory, options),
        **given,
    )


def _default_retry(factory: Callable[..., Task], options: dict[str, Any]) -> str:
    """The task's own retry message: its RETRY_TEMPLATE (the reference's when it has none), or
    its FEEDBACK_RETRY_TEMPLATE, which places `{feedback}`, when an option turns feedback on."""
    feedback = options.get("feedback", "none")
    if feedback != "none" and hasattr(factory, "FEEDBACK_RETRY_TEMPLATE"):
        return factory.FEEDBACK_RETRY_TEMPLATE
    return getattr(factory, "RETRY_TEMPLATE", REFERENCE_RETRY)


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with `options`; a clear error for an unknown name or option."""
    if name not in TASKS:
        raise RiseError(f"unknown task {name!r}; available tasks: {', '.join(sorted(TASKS))}")
    factory = TASKS[name]
    if dataclasses.is_dataclass(factory):
        known = {f.name for f in dataclasses.fields(factory) if f.init} - {"name"}
        known |= set(PROMPT_OPTIONS)
        unknown = sorted(set(options) - known)
        if unknown:
            raise RiseError(
                f"task {name!r} has no option(s) {', '.join(unknown)}; "
                f"its options are: {', '.join(sorted(known))}"
            )
    options = _typed_options(name, factory, options)
    options["prompt"] = _prompt_format(factory, options)
    return factory(**options)


def _typed_options(name: str, factory: Callable[..., Task], options: dict[str, Any]):
    """The options checked (and coerced, "3" -> 3) against the task's field types, so a value of
    the wrong type is named here rather than failing inside the task."""
    hints = typing.get_type_hints(factory) if dataclasses.is_dataclass(factory) else {}
    typed = dict(options)
    for key, value in options.items():
        if key in hints and key not in PROMPT_OPTIONS:
            try:
                typed[key] = TypeAdapter(hints[key]).validate_python(value)
            except ValidationError as e:
                raise RiseError(
                    f"task {name!r}: option {key}: {e.errors()[0]['msg']} (got {value!r})"
                ) from None
    return typed


__all__ = ["TASKS", "PromptFormat", "Task", "get_task"]
