"""Repairs against fresh attempts: similarity, shared leading lines, the closest sample."""

from __future__ import annotations

import pytest

from rise_llm.edits import closest, is_edit, shared_lines, similarity

WRONG = "6 + 4 = 11\n11 - 8 = 3\nAnswer: \\boxed{3}"
REPAIRED_LATE = "6 + 4 = 11\n11 - 8 = 2\nAnswer: \\boxed{2}"  # keeps line 1
REPAIRED = "6 + 4 = 10\n10 - 8 = 2\nAnswer: \\boxed{2}"  # fixes line 1, redoes the rest
FRESH = "6 + 4 = 10\n10 - 8 = 2\nAnswer: \\boxed{2}\n"


@pytest.mark.parametrize(
    ("previous", "retry", "lines", "edit"),
    [
        (WRONG, REPAIRED_LATE, 1, True),
        (WRONG, REPAIRED, 0, False),  # the first line changed: a fresh start
        (WRONG, WRONG, 3, False),  # a copy is no edit
        (WRONG, WRONG + "\n", 3, False),  # nor is a copy with trailing space
        ("", REPAIRED, 0, False),
        ("  6 + 4 = 11 \nx", "6 + 4 = 11\ny", 1, True),  # lines compared without edge spaces
    ],
)
def test_shared_lines_and_edits(previous, retry, lines, edit):
    assert shared_lines(previous, retry) == lines
    assert is_edit(previous, retry) is edit


def test_similarity_is_one_for_equal_texts_and_symmetric_in_length():
    assert similarity(WRONG, WRONG) == 1.0
    assert similarity("", "") == 1.0
    assert similarity("abcd", "abce") == pytest.approx(0.75)  # 2 * 3 matches / 8 characters
    assert similarity(WRONG, REPAIRED_LATE) > similarity(WRONG, REPAIRED)


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ([REPAIRED, REPAIRED_LATE], 1),  # the one that kept line 1
        ([REPAIRED_LATE, REPAIRED], 0),
        ([REPAIRED, FRESH], 0),  # equally close up to a newline: FRESH is further by one
        ([REPAIRED, REPAIRED], 0),  # ties go to the earliest
        (["x"], 0),
    ],
)
def test_closest_picks_the_most_similar_candidate(candidates, expected):
    assert closest(candidates, WRONG) == expected
