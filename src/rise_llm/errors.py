"""The one exception type that rise-llm raises for bad input.

The command line turns a `RiseError` into a single line on stderr (no traceback), so every
message must name the offending file, field or value and say how to fix it.
"""


class RiseError(Exception):
    """Bad input or an impossible request, explained in one line."""
