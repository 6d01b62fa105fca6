"""Hand-worked examples of the metrics of METHOD.md ("Metrics").

Every expected number below was worked out by hand from the listed answers; none is recomputed
by a second implementation of the metric.
"""

from __future__ import annotations

import pytest

from rise_llm.metrics import (
    MAJORITY_RULE,
    OUTCOME_FIELDS,
    TRANSITIONS,
    MetricNames,
    Metrics,
    compute_metrics,
    majority_answer,
    majority_correct,
    transition_counts,
)
from rise_llm.records import Episode, Turn

R, W, M = 1, 0, -1  # rewards: right, wrong, missing (METHOD.md, "Episode")


def turn(answer: str | None, reward: int, index: int = 0) -> Turn:
    return Turn(index=index, messages=[], response="", answer=answer, reward=reward)


def episode(pid: str, mode: str, attempts: list[tuple[str | None, int]], sample: int = 0):
    turns = [turn(a, r, i) for i, (a, r) in enumerate(attempts)]
    return Episode(problem_id=pid, mode=mode, turns=turns, sample=sample)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        ([("5", R)], True),
        ([("4", W)], False),
        ([("4", W), ("5", R), ("5", R)], True),  # 5 has 2 votes
        ([("5", R), ("4", W), ("4", W)], False),  # 4 has 2 votes
        # 1-1 ties go to the most recent tied answer, in both directions
        ([("4", W), ("5", R)], True),
        ([("5", R), ("4", W)], False),
        # 2-2 ties
        ([("5", R), ("4", W), ("4", W), ("5", R)], True),
        ([("4", W), ("5", R), ("5", R), ("4", W)], False),
        # three-way 1-1-1 tie: the last answer wins
        ([("3", W), ("5", R), ("4", W)], False),
        ([("3", W), ("4", W), ("5", R)], True),
        # the last attempt is not among the tied answers: the most recent *tied* one wins
        ([("5", R), ("4", W), ("4", W), ("5", R), ("3", W)], True),
        ([("4", W), ("5", R), ("5", R), ("4", W), ("3", W)], False),
        # a clear winner beats a more recent minority answer
        ([("5", R), ("5", R), ("4", W), ("3", W)], True),
        # missing answers do not vote
        ([(None, M), (None, M), ("5", R)], True),
        ([("4", W), (None, M), (None, M), (None, M)], False),
        ([(None, M), ("5", R), ("4", W), (None, M)], False),  # 5-4 tie, 4 more recent
        ([(None, M), ("4", W), ("5", R), (None, M)], True),  # 4-5 tie, 5 more recent
        # no votes at all is wrong
        ([(None, M), (None, M), (None, M)], False),
        ([], False),
    ],
)
def test_majority_correct(attempts: list[tuple[str | None, int]], expected: bool) -> None:
    assert majority_correct([turn(a, r) for a, r in attempts]) is expected


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["4", "5", "5"], "5"),
        (["5", "4"], "4"),  # a tie goes to the most recent tied answer
        (["5", "4", "4", "5", "3"], "5"),
        ([None, "4", None], "4"),  # missing answers do not vote
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_answer_is_the_rule_majority_correct_scores(answers, expected) -> None:
    assert majority_answer([turn(a, W if a else M) for a in answers]) == expected


def three_problem_run() -> list[Episode]:
    """Three problems, K=3, all three modes.

    no_oracle (right answers: p1 "5", p2 "7", p3 "3"):
        p1: 4 W, 5 R, 5 R        p2: 7 R, 8 W, 9 W        p3: -- M, 2 W, 3 R
        acc@1 = 1/3 (p2), acc@2 = 1/3 (p1), acc@3 = 2/3 (p1, p3)
        m1@t3: p1 "5" has 2 votes -> right; p2 7/8/9 tie -> "9" wrong;
               p3 2/3 tie (missing does not vote) -> "3" right; so 2/3
        1->2: p1 W->C, p2 C->W, p3 W->W  => cc 0, cw 1, wc 1, ww 1
        2->3: p1 C->C, p2 W->W, p3 W->C  => cc 1, cw 0, wc 1, ww 1
    oracle: p1 W then R (stops), p2 R (stops), p3 W W W => p1@t3 = 2/3
    parallel, 3 samples (listed out of sample order on purpose):
        p1: 5 R, 4 W, 4 W -> "4" wrong; some right
        p2: 8 W, 7 R, -- M -> 8/7 tie, "7" is the higher sample -> right; some right
        p3: 1 W, 1 W, 2 W -> "1" wrong; none right
        m3@t1 = 1/3, p3@t1 = 2/3
    """
    return [
        episode("p1", "no_oracle", [("4", W), ("5", R), ("5", R)]),
        episode("p2", "no_oracle", [("7", R), ("8", W), ("9", W)]),
        episode("p3", "no_oracle", [(None, M), ("2", W), ("3", R)]),
        episode("p1", "oracle", [("4", W), ("5", R)]),
        episode("p2", "oracle", [("7", R)]),
        episode("p3", "oracle", [("1", W), ("2", W), (None, M)]),
        episode("p1", "parallel", [("4", W)], sample=2),
        episode("p1", "parallel", [("5", R)], sample=0),
        episode("p1", "parallel", [("4", W)], sample=1),
        episode("p2", "parallel", [(None, M)], sample=2),
        episode("p2", "parallel", [("7", R)], sample=1),
        episode("p2", "parallel", [("8", W)], sample=0),
        episode("p3", "parallel", [("1", W)], sample=0),
        episode("p3", "parallel", [("1", W)], sample=1),
        episode("p3", "parallel", [("2", W)], sample=2),
    ]


def test_compute_metrics_three_problems_three_turns() -> None:
    m = compute_metrics(three_problem_run(), turns=3).to_dict()
    assert m["turns"] == 3
    assert m["n"] == 3
    assert m["acc@1"] == pytest.approx(1 / 3)
    assert m["acc@2"] == pytest.approx(1 / 3)
    assert m["acc@3"] == pytest.approx(2 / 3)
    assert m["m1@t1"] == pytest.approx(1 / 3)
    assert m["m1@t3"] == pytest.approx(2 / 3)
    assert m["p1@t3"] == pytest.approx(2 / 3)
    assert m["m3@t1"] == pytest.approx(1 / 3)
    assert m["p3@t1"] == pytest.approx(2 / 3)
    assert m["transitions"] == {
        "1->2": {
            "correct->correct": 0,
            "correct->wrong": 1,
            "wrong->correct": 1,
            "wrong->wrong": 1,
            "wrong->wrong unchanged": 1,  # the helper's responses are all empty
            "wrong->correct edit": 0,
        },
        "2->3": {
            "correct->correct": 1,
            "correct->wrong": 0,
            "wrong->correct": 1,
            "wrong->wrong": 1,
            "wrong->wrong unchanged": 1,  # the helper's responses are all empty
            "wrong->correct edit": 0,
        },
    }
    assert m["majority_rule"] == MAJORITY_RULE
    assert set(m) == {
        "turns", "n", "acc@1", "acc@2", "acc@3", "m1@t1", "m1@t3", "transitions",
        "p1@t3", "m3@t1", "p3@t1", "majority_rule", "schema_version", "context_window", "seconds",
    }  # fmt: skip


def test_metrics_round_trip_through_the_flat_form() -> None:
    metrics = compute_metrics(three_problem_run(), turns=3)
    assert Metrics.from_dict(metrics.to_dict()) == metrics


def test_transition_counts_directly() -> None:
    eps = [ep for ep in three_problem_run() if ep.mode == "no_oracle"]
    assert transition_counts(eps, 1) == {
        "correct->correct": 0, "correct->wrong": 1, "wrong->correct": 1, "wrong->wrong": 1,
        "wrong->wrong unchanged": 1, "wrong->correct edit": 0,
    }  # fmt: skip
    assert transition_counts(eps, 2) == {
        "correct->correct": 1, "correct->wrong": 0, "wrong->correct": 1, "wrong->wrong": 1,
        "wrong->wrong unchanged": 1, "wrong->correct edit": 0,
    }  # fmt: skip
    assert transition_counts([], 1) == {
        "correct->correct": 0, "correct->wrong": 0, "wrong->correct": 0, "wrong->wrong": 0,
        "wrong->wrong unchanged": 0, "wrong->correct edit": 0,
    }  # fmt: skip


def said(response: str, reward: int) -> Turn:
    return Turn(index=0, messages=[], response=response, answer=None, reward=reward)


def test_transitions_count_unchanged_repeats_and_edits() -> None:
    wrong = "1 + 2 = 4\n4 + 3 = 7\nAnswer: \\boxed{7}"
    edited = "1 + 2 = 4\n4 + 3 = 6\nAnswer: \\boxed{6}"  # keeps line 1 (the answer 6 counts)
    fresh = "1 + 2 = 3\n3 + 3 = 6\nAnswer: \\boxed{6}"
    pairs = [
        (said(wrong, W), said(wrong, W)),  # repeated unchanged
        (said(wrong, W), said(edited, W)),  # changed, still wrong
        (said(wrong, W), said(edited, R)),  # an edit
        (said(wrong, W), said(fresh, R)),  # a fresh attempt
        (said(fresh, R), said(fresh, R)),  # right kept (a copy, but not a wrong one)
    ]
    eps = [Episode(problem_id=str(i), mode="no_oracle", turns=list(p)) for i, p in enumerate(pairs)]
    assert transition_counts(eps, 1) == {
        "correct->correct": 1, "correct->wrong": 0, "wrong->correct": 2, "wrong->wrong": 2,
        "wrong->wrong unchanged": 1, "wrong->correct edit": 1,
    }  # fmt: skip


def test_metric_names_and_n_counts_problems() -> None:
    m = compute_metrics(three_problem_run(), turns=3).to_dict()
    fractions = {k for k in m if "@" in k}
    assert fractions == {"acc@1", "acc@2", "acc@3", "m1@t1", "m1@t3", "p1@t3", "m3@t1", "p3@t1"}
    # 15 episodes, but 3 problems
    assert m["n"] == 3
    assert sum(m["transitions"]["1->2"][k] for k in TRANSITIONS) == 3


def test_k1_no_oracle_and_oracle() -> None:
    # turn-1 answers: right, wrong, missing, right -> acc@1 = 2/4
    eps = [
        episode("a", "no_oracle", [("5", R)]),
        episode("b", "no_oracle", [("4", W)]),
        episode("c", "no_oracle", [(None, M)]),
        episode("d", "no_oracle", [("6", R)]),
        episode("a", "oracle", [("5", R)]),
        episode("b", "oracle", [("4", W)]),
        episode("c", "oracle", [("3", R)]),
        episode("d", "oracle", [(None, M)]),
    ]
    m = compute_metrics(eps, turns=1).to_dict()
    assert {k for k in m if "@" in k} == {"acc@1", "m1@t1", "p1@t1"}
    assert (m["turns"], m["n"]) == (1, 4)
    assert m["acc@1"] == 0.5
    assert m["m1@t1"] == m["acc@1"]
    assert m["transitions"] == {}
    assert m["p1@t1"] == 0.5  # a and c


def test_k1_parallel_baseline_does_not_overwrite_m1_t1_and_p1_t1() -> None:
    eps = [
        episode("a", "no_oracle", [("5", R)]),
        episode("a", "oracle", [("5", R)]),
        episode("a", "parallel", [("4", W)]),
    ]
    m = compute_metrics(eps, turns=1).to_dict()
    assert m["acc@1"] == 1.0
    assert m["m1@t1"] == 1.0  # METHOD.md: m1@t1 is acc@1 of the no-oracle run
    assert m["p1@t1"] == 1.0  # the oracle run solved it


def test_oracle_p1_counts_a_late_success() -> None:
    # a: right at turn 3 (stopped there); b: wrong all 3 turns; c: right at turn 1
    eps = [
        episode("a", "oracle", [("1", W), (None, M), ("2", R)]),
        episode("b", "oracle", [("1", W), ("1", W), ("1", W)]),
        episode("c", "oracle", [("9", R)]),
    ]
    m = compute_metrics(eps, turns=3).to_dict()
    assert m["p1@t3"] == pytest.approx(2 / 3)
    assert m["n"] == 3
    assert "acc@1" not in m and "m3@t1" not in m  # absent modes are left out


@pytest.mark.parametrize(
    ("samples", "majority", "passk"),
    [
        # 5 samples each for 2 problems:
        # x: 1 W, 2 R, 1 W, 2 R, 3 W -> 1/2 tie at 2, "2" more recent -> right; pass
        # y: 7 W, 7 W, 8 R, -- M, -- M -> "7" wrong; pass
        # so m5@t1 = 1/2, p5@t1 = 2/2
        (
            {
                "x": [("1", W), ("2", R), ("1", W), ("2", R), ("3", W)],
                "y": [("7", W), ("7", W), ("8", R), (None, M), (None, M)],
            },
            ("m5@t1", 0.5),
            ("p5@t1", 1.0),
        ),
        # 3 samples each for 2 problems:
        # x: 2 R, 1 W, 1 W -> "1" wrong; pass.  y: -- M x3 -> wrong; no pass
        # so m3@t1 = 0/2, p3@t1 = 1/2
        (
            {"x": [("2", R), ("1", W), ("1", W)], "y": [(None, M), (None, M), (None, M)]},
            ("m3@t1", 0.0),
            ("p3@t1", 0.5),
        ),
    ],
)
def test_parallel_keys_are_named_after_the_number_of_samples(
    samples: dict, majority: tuple[str, float], passk: tuple[str, float]
) -> None:
    eps = [
        episode(pid, "parallel", [attempt], sample=i)
        for pid, attempts in samples.items()
        for i, attempt in enumerate(attempts)
    ]
    m = compute_metrics(eps, turns=5).to_dict()
    assert m[majority[0]] == majority[1]
    assert m[passk[0]] == passk[1]
    assert m["n"] == 2
    assert {k for k in m if "@" in k} == {majority[0], passk[0]}


def test_metric_names_are_formatted_in_one_place() -> None:
    names = MetricNames(turns=5, samples=5)
    assert names.columns() == [
        *(f"acc@{t}" for t in range(1, 6)),
        *("m1@t5", "p1@t5", "m5@t1", "p5@t1"),
    ]
    assert [names.outcome(f) for f in OUTCOME_FIELDS] == [
        *("acc@1", "m1@t5", "p1@t5", "m5@t1", "p5@t1")
    ]
    assert MetricNames(turns=3).columns() == ["acc@1", "acc@2", "acc@3", "m1@t3", "p1@t3"]


@pytest.mark.parametrize(
    ("stored", "samples"),
    [
        ({"turns": 5, "m1@t5": 0.5, "p1@t5": 0.7, "m3@t1": 0.4, "p3@t1": 0.6}, 3),
        ({"turns": 5, "m1@t5": 0.5, "p1@t5": 0.7}, 0),  # no parallel mode
        ({"turns": 1, "acc@1": 0.3, "m1@t1": 0.3, "p1@t1": 0.3}, 0),  # p1@t1: the oracle
        ({"turns": 2, "p1@t2": 0.5, "m2@t1": 0.1, "p2@t1": 0.2}, 2),
    ],
)
def test_metric_names_of_a_stored_dict_find_its_parallel_samples(stored, samples) -> None:
    assert MetricNames.of(stored) == MetricNames(stored["turns"], samples)
