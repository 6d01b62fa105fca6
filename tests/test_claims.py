"""The four claims and the paired bootstrap, on hand-worked numbers.

Every expected figure was worked out by hand from the answers listed (METHOD.md, "Metrics";
the majority rule of `metrics`), not recomputed by a second implementation.
"""

from __future__ import annotations

import pytest

from rise_llm.claims import (
    FIRST_TURN_CHANGE,
    ORACLE_GAIN,
    SEQUENTIAL_OVER_PARALLEL,
    TURN_GAIN,
    paired_bootstrap,
    rise_claims,
)
from rise_llm.metrics import Outcome, outcomes
from rise_llm.records import Episode, Turn

R, W = 1, 0


def evaluation(problems: dict[str, dict[str, list]]) -> list[Episode]:
    """Episodes from {problem: {mode: attempts}}; "parallel" lists one attempt per sample."""
    episodes = []
    for pid, modes in problems.items():
        for mode, attempts in modes.items():
            if mode == "parallel":
                for i, (answer, reward) in enumerate(attempts):
                    turn = Turn(index=0, messages=[], response="", answer=answer, reward=reward)
                    episodes.append(Episode(problem_id=pid, mode=mode, turns=[turn], sample=i))
                continue
            turns = [
                Turn(index=t, messages=[], response="", answer=a, reward=r)
                for t, (a, r) in enumerate(attempts)
            ]
            episodes.append(Episode(problem_id=pid, mode=mode, turns=turns))
    return episodes


# K = 2, four problems. Outcomes (first, majority, oracle, parallel majority), worked by hand:
# base    a: 0 0 1 0 | b: 1 0 1 - (tie 5/3: the later 3) | c: 0 0 0 0 | d: 0 1 1 0 (tie: 7)
# trained a: 0 1 1 0 | b: 1 1 1 0 (parallel tie 5/2: 2)    | c: 1 1 1 1 | d: 0 0 0 1 (tie: 7)
BASE = evaluation(
    {
        "a": {
            "no_oracle": [("1", W), ("1", W)],
            "oracle": [("1", W), ("5", R)],
            "parallel": [("1", W), ("2", W)],
        },
        "b": {
            "no_oracle": [("5", R), ("3", W)],
            "oracle": [("5", R)],
            "parallel": [("5", R), ("3", W)],
        },
        "c": {
            "no_oracle": [("3", W), ("4", W)],
            "oracle": [("3", W), ("4", W)],
            "parallel": [("3", W), ("3", W)],
        },
        "d": {
            "no_oracle": [("1", W), ("7", R)],
            "oracle": [("1", W), ("7", R)],
            "parallel": [("1", W), ("1", W)],
        },
    }
)
TRAINED = evaluation(
    {
        "a": {
            "no_oracle": [("1", W), ("5", R)],
            "oracle": [("1", W), ("5", R)],
            "parallel": [("1", W), ("1", W)],
        },
        "b": {
            "no_oracle": [("5", R), ("5", R)],
            "oracle": [("5", R)],
            "parallel": [("5", R), ("2", W)],
        },
        "c": {
            "no_oracle": [("4", R), ("4", R)],
            "oracle": [("4", R)],
            "parallel": [("4", R), ("4", R)],
        },
        "d": {
            "no_oracle": [("1", W), ("1", W)],
            "oracle": [("1", W), ("1", W)],
            "parallel": [("2", W), ("7", R)],
        },
    }
)


def test_outcomes_per_problem_by_hand() -> None:
    got = outcomes(TRAINED, turns=2)
    assert got == {
        "a": Outcome(first=0.0, majority=1.0, oracle=1.0, parallel_majority=0.0, parallel_any=0.0),
        "b": Outcome(first=1.0, majority=1.0, oracle=1.0, parallel_majority=0.0, parallel_any=1.0),
        "c": Outcome(first=1.0, majority=1.0, oracle=1.0, parallel_majority=1.0, parallel_any=1.0),
        "d": Outcome(first=0.0, majority=0.0, oracle=0.0, parallel_majority=1.0, parallel_any=1.0),
    }
    # a mode that was not run leaves its fields None
    only_oracle = [ep for ep in BASE if ep.mode == "oracle"]
    assert outcomes(only_oracle, turns=2)["c"] == Outcome(oracle=0.0)


def test_rise_claims_by_hand() -> None:
    claims = rise_claims(BASE, TRAINED, turns=2)
    assert [c.name for c in claims] == [
        "p1@t2 gain over base",
        "m1@t2 - m2@t1 (sequential vs parallel)",
        "(m1@t2 - m1@t1) gain over base",
        "acc@1 change from base",
    ]
    # per problem a, b, c, d:
    # oracle gain              0, 0, 1, -1 -> 0
    # majority - parallel      1, 1, 0, -1 -> 0.25
    # turn gain (trained - base): (1-0)-(0-0), (1-1)-(0-1), (1-1)-(0-0), (0-0)-(1-0) -> 0.25
    # acc@1 change             0, 0, 1, 0 -> 0.25
    assert [c.estimate for c in claims] == [0.0, 0.25, 0.25, 0.25]
    assert [c.threshold for c in claims] == [
        ORACLE_GAIN,
        SEQUENTIAL_OVER_PARALLEL,
        TURN_GAIN,
        FIRST_TURN_CHANGE,
    ]
    assert [c.holds for c in claims] == [False, True, True, True]
    assert all(c.n == 4 for c in claims)
    # acc@1 change: differences 0, 0, 1, 0 (the bootstrap case worked out below)
    assert (claims[3].low, claims[3].high) == (0.0, 0.75)
    assert claims[3].significant  # its whole interval clears -0.02


def test_one_turn_claims_only_what_one_turn_shows() -> None:
    """K = 1 runs no parallel mode (its samples are turn 1) and has no turn gain: the two
    claims that need them are left out rather than computed from missing outcomes."""

    def first_turn(episodes):
        return [
            Episode(problem_id=ep.problem_id, mode=ep.mode, turns=ep.turns[:1])
            for ep in episodes
            if ep.mode != "parallel"
        ]

    claims = rise_claims(first_turn(BASE), first_turn(TRAINED), turns=1)
    assert [c.name for c in claims] == ["p1@t1 gain over base", "acc@1 change from base"]
    # per problem a, b, c, d: first turns 0,1,0,0 -> 0,1,1,0 (oracle at turn 1 = acc@1)
    assert [c.estimate for c in claims] == [0.25, 0.25]


def test_rise_claims_need_the_same_problems() -> None:
    fewer = [ep for ep in TRAINED if ep.problem_id != "d"]
    with pytest.raises(ValueError, match="same problems"):
        rise_claims(BASE, fewer, turns=2)


def test_paired_bootstrap_of_constant_differences_is_that_constant() -> None:
    assert paired_bootstrap([0.5] * 10) == (0.5, 0.5, 0.5)
    assert paired_bootstrap([-1.0, -1.0]) == (-1.0, -1.0, -1.0)


def test_paired_bootstrap_interval_by_hand() -> None:
    # differences 0, 0, 0, 1: a resample's mean is k/4 with k ~ Binomial(4, 1/4), so
    # P(mean <= 0) = 0.316 > 2.5% and P(mean <= 0.5) = 0.949 < 97.5% <= P(mean <= 0.75) = 0.996:
    # the interval is [0, 0.75] around the mean 0.25
    assert paired_bootstrap([0.0, 0.0, 0.0, 1.0], resamples=4000) == (0.25, 0.0, 0.75)
    # the same seed gives the same interval; the mean does not depend on it
    assert paired_bootstrap([0, 1, 1, 0, 1], seed=3) == paired_bootstrap([0, 1, 1, 0, 1], seed=3)
    assert paired_bootstrap([0, 1, 1, 0, 1], seed=4)[0] == 0.6
