"""Reading final answers out of model responses.

The final answer is the content of the *last* `\\boxed{...}` in a response (METHOD.md), with
nested braces balanced, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. Numeric tasks (arith,
GSM8K) compare canonical numbers; MATH answers go through `math_equivalence`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, DecimalException

from rise_llm.records import Verdict

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


_WRAPPED_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_UNIT_MARKS = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\%|%|\\[,;:! ]|~")
_LEADING_NAME = re.compile(r"^\s*[A-Za-z]\w*\s*=")
_TRAILING_WORDS = re.compile(r"(?<=[\d.])\s*[A-Za-z][A-Za-z\s.^{}\d]*$")
_FRACTION = re.compile(r"^([-+]?)\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}$")


def read_number(text: str) -> Decimal | None:
    """A number in a final answer, also with units, words or a name around it; else None.

    Beyond `parse_number`, it reads `18 \\text{ dollars}`, `25\\%`, `30^\\circ`, `x = 5`,
    `5 apples` and `\\frac{7}{2}` as 18, 25, 30, 5, 5 and 3.5: a model that writes its number
    with a unit still gave that number.

    >>> read_number(r"\\$18.90 \\text{ dollars}")
    Decimal('18.9')
    >>> read_number("x = -3")
    Decimal('-3')
    >>> read_number("about five") is None
    True
    """
    value = parse_number(text)
    if value is not None:
        return value
    cleaned = _WRAPPED_TEXT.sub(r" \1 ", text)
    cleaned = _UNIT_MARKS.sub(" ", cleaned)
    cleaned = _LEADING_NAME.sub("", cleaned).strip()
    cleaned = _TRAILING_WORDS.sub("", cleaned).strip()
    fraction = _FRACTION.match(cleaned)
    if fraction:
        sign, numerator, denominator = fraction.groups()
        if int(denominator) == 0:
            return None
        value = Decimal(int(numerator)) / Decimal(int(denominator))
        return -value if sign == "-" else value
    return parse_number(cleaned)


def number_verdict(
    truth: str, response: str, read: Callable[[str], Decimal | None] = read_number
) -> Verdict:
    """Reward of a response whose answer is a number (METHOD.md rewards): the one numeric grader.

    `truth` is a canonical number (`canonical_number`). The answer is the last `\\boxed{}`
    read by `read` (`read_number` by default; `parse_number` for a task that takes the bare
    number only): equal -> 1, another number -> 0, no box or no number in it -> -1. The
    argument order is `math_equivalence.math_verdict`'s.

    >>> number_verdict("12", "so \\\\boxed{12 \\\\text{ apples}}")
    Verdict(answer='12', reward=1, feedback=None)
    >>> number_verdict("12", "so \\\\boxed{12 \\\\text{ apples}}", read=parse_number).reward
    -1
    """
    boxed = last_boxed(response)
    value = read(boxed) if boxed is not None else None
    if value is None:
        return Verdict(answer=None, reward=-1)
    answer = canonical_number(value)
    return Verdict(answer=answer, reward=1 if answer == truth else 0)
