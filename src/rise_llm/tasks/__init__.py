"""Task registry: look a task up by name, with its options.

`get_task("arith", max_steps=5)` returns a ready task. Later tasks (GSM8K, MATH, a user's JSONL)
register here the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rise_llm.errors import RiseError
from rise_llm.tasks.arith import ArithTask
from rise_llm.tasks.base import PromptFormat, Task

TASKS: dict[str, Callable[..., Task]] = {"arith": ArithTask}


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with `options`; a clear error for an unknown name or option."""
    if name not in TASKS:
        raise RiseError(f"unknown task {name!r}; available tasks: {', '.join(sorted(TASKS))}")
    factory = TASKS[name]
    if dataclasses.is_dataclass(factory):
        known = {f.name for f in dataclasses.fields(factory) if f.init}
        unknown = sorted(set(options) - known)
        if unknown:
            raise RiseError(
                f"task {name!r} has no option(s) {', '.join(unknown)}; "
                f"its options are: {', '.join(sorted(known - {'name', 'prompt'}))}"
            )
    return factory(**options)


__all__ = ["TASKS", "PromptFormat", "Task", "get_task"]
