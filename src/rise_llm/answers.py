"""Reading final answers out of model responses.

The final answer is the content of the *last* `\\boxed{...}` in a response (METHOD.md), with
nested braces balanced, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`.
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, else None.

    >>> last_boxed(r"so \\boxed{3} no wait \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> last_boxed("no answer") is None
    True
    """
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        # unbalanced: try the previous \boxed
    return None


_NUMBER_NOISE = re.compile(r"(\\\$|\$|\\!|\\,|\s|,(?=\d{3}\b))")


def parse_number(text: str) -> Decimal | None:
    """A number written in a final answer, tolerant of `1,234`, `$5`, `-3`, `2.50`; else None.

    >>> parse_number("1,234")
    Decimal('1234')
    >>> parse_number("-0.50")
    Decimal('-0.5')
    >>> parse_number("x") is None
    True
    """
    cleaned = _NUMBER_NOISE.sub("", text)
    cleaned = (
        cleaned.removeprefix("\\text{").removesuffix("}")
        if cleaned.startswith("\\text{")
        else cleaned
    )
    try:
        value = Decimal(cleaned)
        if not value.is_finite():
            return None
        return value.normalize() if value != 0 else Decimal(0)
    except DecimalException:  # not a number, or an exponent beyond what Decimal can hold
        return None


def canonical_number(value: Decimal) -> str:
    """A number's canonical text: no exponent, no trailing zeros (`12`, `-0.5`)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
