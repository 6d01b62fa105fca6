"""The one exception type that rise-llm raises for bad input.

The command line turns a `RiseError` into a single line on stderr (no traceback), so every
message must name the offending file, field or value and say how to fix it.
"""


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
