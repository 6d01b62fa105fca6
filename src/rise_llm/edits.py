"""How a retry relates to the attempt before it: a repair of it, or a fresh attempt.

RISE's reference best-of-N keeps the first sample of the best reward, which is as likely to be a
fresh attempt as a repair of the failed one. The edit-preserving choice (`selection: closest`
of `rise collect`) keeps, among the samples of the best reward, the one most similar to the
previous attempt, so the improved responses teach "keep what was right, fix what was wrong"
(issue "self-correction"; METHOD.md, "Beyond the reference recipe").

Similarity is difflib's ratio over characters (2 x matches / total length, 1.0 for equal
texts). A retry is an *edit* when it keeps at least the first line of the previous attempt and
is not a copy of it; the share of edits among corrections says whether a model repairs or
resamples, and is reported by `rise collect` and by the evaluation's transitions.
"""

from __future__ import annotations

from difflib import SequenceMatcher


def similarity(a: str, b: str) -> float:
    """difflib's similarity ratio of two responses, in [0, 1].

    >>> similarity("1 + 2 = 3", "1 + 2 = 3"), round(similarity("1 + 2 = 3", "1 + 2 = 4"), 3)
    (1.0, 0.889)
    """
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def shared_lines(previous: str, retry: str) -> int:
    """How many leading lines the retry has in common with the previous attempt.

    >>> shared_lines("1 + 2 = 3\\n3 + 4 = 8", "1 + 2 = 3\\n3 + 4 = 7")
    1
    """
    count = 0
    for a, b in zip(previous.strip().splitlines(), retry.strip().splitlines(), strict=False):
        if a.strip() != b.strip():
            break
        count += 1
    return count


def is_edit(previous: str, retry: str) -> bool:
    """True when the retry keeps the previous attempt's first line but is not the same text."""
    return previous.strip() != retry.strip() and shared_lines(previous, retry) >= 1


def closest(candidates: list[str], previous: str) -> int:
    """Index of the candidate most similar to `previous` (the earliest on ties)."""
    scores = [similarity(previous, c) for c in candidates]
    return max(range(len(candidates)), key=lambda i: (scores[i], -i))
