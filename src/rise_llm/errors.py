"""The one exception type that rise-llm raises for bad input.

The command line turns a `RiseError` into a single line on stderr (no traceback), so every
message must name the offending file, field or value and say how to fix it.
"""

import re


class RiseError(Exception):
    """Bad input or an impossible request, explained in one line."""


def check_at_least(stage: str, minimum: float, **values: float | None) -> None:
    """Raise a RiseError naming the first of `values` below `minimum` (None is skipped).

    >>> check_at_least("collect", 1, turns=2, limit=None)
    """
    for name, value in values.items():
        if value is not None and value < minimum:
            raise RiseError(f"{stage}: {name} must be at least {minimum}, got {value}")


def check_context_window(stage: str, window: int, turns: int) -> None:
    """The context window W must show at least the first prompt and at most all K turns."""
    if not 1 <= window <= turns:
        raise RiseError(
            f"{stage}: context_window must be between 1 and turns ({turns}), got {window}"
        )


def check_sampling(
    stage: str, temperature: float, top_p: float, max_new_tokens: int | None
) -> None:
    """Sampling settings that give a meaningful run (checked at load, before any model loads)."""
    if temperature < 0:
        raise RiseError(f"{stage}: temperature must be 0 (greedy) or more, got {temperature}")
    if not 0 < top_p <= 1:
        raise RiseError(f"{stage}: top_p must be in (0, 1] (1 turns it off), got {top_p}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise RiseError(
            f"{stage}: max_new_tokens must be at least 1 (or unset for the task's default), "
            f"got {max_new_tokens}"
        )


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(stage: str, device: str) -> None:
    """A device name the engines and the trainer know.

    >>> check_device("evaluate", "cuda:1")
    """
    if not DEVICE.fullmatch(device):
        raise RiseError(f"{stage}: device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
