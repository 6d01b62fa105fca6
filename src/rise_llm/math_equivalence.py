"""MATH answer equivalence through math-verify (Hugging Face's `math_verify`).

The final answer is the content of the last `\\boxed{}` (`answers.last_boxed`), as for every
task. Ground truth and answer are both parsed by math-verify's LaTeX extraction and compared
with its `verify(gold, answer)` (order matters there), which accepts equal values in other forms:
`\\frac{14}{3}` = `14/3` = `4\\frac{2}{3}`, `\\$18.90` = `18.9`, `39^\\circ` = `39`,
`15,600` = `15600`, `\\text{(C)}` = `C`, intervals and unions up to order, sets, tuples,
matrices, and units or words around a number (`440\\text{ cm}^2` = `440`).

Rewards follow METHOD.md and are the same as GSM8K's: 1 equivalent, 0 an answer that is not,
-1 when there is no final answer (no `\\boxed{}`, an empty one, or content math-verify cannot
read at all). The reference MATH environment never gives -1; this project treats both tasks
alike (METHOD.md, "Episode").

math-verify bounds each parse and comparison with a SIGALRM timeout, which only the main thread
may set; elsewhere (a user's worker thread) it runs without the timeout instead of failing.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from rise_llm.answers import last_boxed
from rise_llm.records import Verdict

TIMEOUT_SECONDS = 5


def _timeout() -> int | None:
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def parse_answer(text: str) -> tuple[Any, ...]:
    """math-verify's parse of a final answer (a sympy object and/or its normalised string).

    The text is wrapped as `\\boxed{text}` so that the LaTeX extraction reads exactly this
    answer; an empty tuple means math-verify found nothing to read.
    """
    from math_verify import LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    return tuple(parse(f"\\boxed{{{text}}}", extraction_config=config, parsing_timeout=_timeout()))


def equivalent(truth: str, answer: str) -> bool:
    """Whether `answer` means the same as the ground truth `truth` (both without \\boxed)."""
    from math_verify import verify

    gold, parsed = parse_answer(truth), parse_answer(answer)
    if not gold or not parsed:
        return False
    return verify(list(gold), list(parsed), timeout_seconds=_timeout())


def canonical(parsed: tuple[Any, ...], text: str) -> str:
    """The answer's form for majority votes: the parsed value's text, so `\\dfrac12` and
    `\\frac{1}{2}` vote together; the answer as written when math-verify found no value."""
    for item in parsed:
        if not isinstance(item, str):
            return str(item)
    return " ".join(text.split())


def math_verdict(truth: str, response: str) -> Verdict:
    """Answer and reward of a response to a problem whose final answer is `truth`.

    >>> math_verdict("\\\\frac{14}{3}", "so \\\\boxed{\\\\dfrac{14}{3}}")
    Verdict(answer='14/3', reward=1, feedback=None)
    >>> math_verdict("\\\\frac{14}{3}", "no box").reward
    -1
    """
    content = last_boxed(response)
    if content is None or not content.strip():
        return Verdict(answer=None, reward=-1)
    parsed = parse_answer(content)
    if not parsed:
        return Verdict(answer=None, reward=-1)
    return Verdict(answer=canonical(parsed, content), reward=1 if equivalent(truth, content) else 0)
