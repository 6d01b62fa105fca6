"""`rise compare`: the ablation table's numbers, worked out by hand on four problems."""

from __future__ import annotations

import json

import pytest

from rise_llm.compare import CompareConfig, compare, compare_row
from rise_llm.edits import similarity
from rise_llm.errors import RiseError
from rise_llm.records import Episode, Turn, write_jsonl

WRONG = "1 + 2 = 4\nAnswer: \\boxed{4}"
EDIT = "1 + 2 = 4\n4 - 1 = 3\nAnswer: \\boxed{3}"  # keeps the wrong attempt's first line
RIGHT = "1 + 2 = 3\nAnswer: \\boxed{3}"


def said(text: str) -> Turn:
    answer = text[-2]
    return Turn(index=0, messages=[], response=text, answer=answer, reward=int(answer == "3"))


def run_of(no_oracle: dict[str, list[str]]) -> list[Episode]:
    """No-oracle episodes as given; the oracle stops at the first right turn; K parallel
    samples (K turns), all the first turn's response."""
    episodes = []
    for pid, texts in no_oracle.items():
        turns = [said(t) for t in texts]
        episodes.append(Episode(pid, "no_oracle", turns))
        solved = next((i for i, t in enumerate(turns) if t.correct), len(turns) - 1)
        episodes.append(Episode(pid, "oracle", turns[: solved + 1]))
        episodes += [Episode(pid, "parallel", [turns[0]], sample=k) for k in range(len(turns))]
    return episodes


BASE = run_of({"a": [WRONG, WRONG], "b": [RIGHT, RIGHT], "c": [WRONG, RIGHT], "d": [RIGHT, WRONG]})
MODEL = run_of({"a": [WRONG, EDIT], "b": [RIGHT, RIGHT], "c": [WRONG, WRONG], "d": [RIGHT, RIGHT]})


def test_row_of_a_model_against_its_base():
    row = compare_row("m", BASE, MODEL, seed=0)
    assert row.n == 4 and row.acc == [0.5, 0.75]
    assert row.right_kept == 1.0  # b and d keep their right answer
    assert row.wrong_fixed == 0.5  # a fixed, c not
    assert row.wrong_unchanged == 0.5  # c repeats WRONG word for word
    assert row.edit_share == 1.0  # a's fix keeps the first line
    assert row.fix_similarity == pytest.approx(similarity(WRONG, EDIT))
    assert row.turn2_rise[0] == pytest.approx(0.25)  # only a rises, from 0 to 1
    # m1@t2 (ties to the latest): a right, b right, c wrong, d right; m2@t1 = acc@1 here
    assert row.sequential_vs_parallel[0] == pytest.approx(0.75 - 0.5)
    # base: m1@t2 = a W, b R, c R, d W = 0.5, acc@1 0.5: gain 0; model: 0.75 - 0.5
    assert row.turn_gain_vs_base[0] == pytest.approx(0.25)
    assert row.oracle_gain[0] == pytest.approx(0.75 - 0.75)
    assert row.acc1_change[0] == 0.0
    for interval in (row.sequential_vs_parallel, row.turn2_rise, row.turn_gain_vs_base):
        assert interval[1] <= interval[0] <= interval[2]


def test_base_row_and_files(tmp_path):
    for name, episodes in (("base", BASE), ("model", MODEL)):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "episodes.jsonl", episodes)
    config = CompareConfig(
        base=str(tmp_path / "base"), models=[f"m={tmp_path / 'model'}"], out=str(tmp_path)
    )
    rows = compare(config)
    assert [r.label for r in rows] == ["base", "m"]
    assert rows[0].wrong_unchanged == 0.5 and rows[0].right_kept == 0.5
    stored = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["label"] for r in stored["rows"]] == ["base", "m"]
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| model | acc@1..acc@K | m1@tK - mK@t1 |")
    assert table[3].startswith("| m | 0.500 0.750 | +0.250 [")
    # then the per-turn table: curve, m1@t2, m2@t1, p1@t2, p2@t1, the transitions 1->2
    assert table[5].startswith("| model | acc@1 .. acc@2 | m1@t2 | m2@t1 | p1@t2 | p2@t1 |")
    assert table[8] == "| m | .500 .750 | .750 | .500 | .750 | .500 | 100%/50%/50% |"


def test_transitions_at_every_turn():
    three = run_of(
        {
            "a": [WRONG, EDIT, EDIT],  # fixed at 2, kept at 3
            "b": [RIGHT, RIGHT, WRONG],  # kept at 2, broken at 3
            "c": [WRONG, WRONG, RIGHT],  # repeated at 2, fixed at 3
            "d": [WRONG, RIGHT, RIGHT],
        }
    )
    row = compare_row("m", three, three, seed=0)
    assert row.per_turn == [[1.0, 2 / 3, 1 / 3], [2 / 3, 1.0, 0.0]]
    assert (row.right_kept, row.wrong_fixed, row.wrong_unchanged) == (1.0, 2 / 3, 1 / 3)
    assert (row.majority, row.parallel_majority, row.oracle, row.parallel_any) == (
        0.75,  # a, b and d by two votes of three; c's two WRONG win
        0.25,
        1.0,
        0.25,
    )


def test_compare_needs_models_and_the_same_problems(tmp_path):
    with pytest.raises(RiseError, match="at least one model"):
        CompareConfig(base="b")
    with pytest.raises(RiseError, match="share a label"):
        CompareConfig(base="b", models=["x=a", "x=b"])
    models = ["iter-1=runs/a/eval", "runs/b/eval", "T=3, lr=2e-3=runs/c/eval"]
    assert CompareConfig(base="b", models=models).labelled() == {
        "iter-1": "runs/a/eval",
        "runs/b/eval": "runs/b/eval",
        "T=3, lr=2e-3": "runs/c/eval",  # the last "=" separates label and folder
    }
    other = [ep for ep in MODEL if ep.problem_id != "d"]
    with pytest.raises(ValueError, match="same problems"):
        compare_row("m", BASE, other, seed=0)


def test_an_unfinished_evaluation_is_named(tmp_path):
    (tmp_path / "base").mkdir()
    write_jsonl(tmp_path / "base" / "episodes.jsonl", [ep for ep in BASE if ep.mode != "parallel"])
    config = CompareConfig(base=str(tmp_path / "base"), models=[str(tmp_path / "base")])
    with pytest.raises(RiseError, match=r"base has no parallel episodes; rerun"):
        compare(config)
