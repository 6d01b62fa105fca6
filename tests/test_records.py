"""Tests of the typed records and their JSON Lines storage (schema version, errors by file:line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rise_llm.errors import RiseError
from rise_llm.records import (
    SCHEMA_VERSION,
    Episode,
    Problem,
    Turn,
    Verdict,
    from_json,
    read_jsonl,
    to_json,
    write_jsonl,
)


def make_problem(i: int = 0) -> Problem:
    return Problem(
        id=f"arith-{i}",
        question=f"What is {i} + 1?",
        answer=str(i + 1),
        meta={"start": i, "steps": [["+", 1]]},
    )


def make_episode(problem_id: str = "arith-0", mode: str = "no_oracle") -> Episode:
    first = [{"role": "user", "content": "What is 0 + 1?"}]
    retry = "The answer is incorrect. Please try again. Here's the question: What is 0 + 1?"
    return Episode(
        problem_id=problem_id,
        mode=mode,
        turns=[
            Turn(index=0, messages=first, response=r"\boxed{2}", answer="2", reward=0),
            Turn(
                index=1,
                messages=[
                    *first,
                    {"role": "assistant", "content": r"\boxed{2}"},
                    {"role": "user", "content": retry},
                ],
                response="0 + 1 = 1 \u2713 \\boxed{1}",
                answer="1",
                reward=1,
                num_tokens=9,
                finish_reason="length",
            ),
        ],
        sample=2,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_problem_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    problems = [make_problem(i) for i in range(3)]
    write_jsonl(path, problems)
    stored = lines(path)
    assert len(stored) == 3
    assert all(obj["schema_version"] == SCHEMA_VERSION for obj in stored)
    assert stored[1] == {
        "schema_version": SCHEMA_VERSION,
        "id": "arith-1",
        "question": "What is 1 + 1?",
        "answer": "2",
        "meta": {"start": 1, "steps": [["+", 1]]},
    }
    assert read_jsonl(path, Problem) == problems


def test_episode_round_trip_rebuilds_turns(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    episodes = [make_episode("a"), make_episode("b", mode="oracle")]
    write_jsonl(path, episodes)
    stored = lines(path)
    assert [obj["schema_version"] for obj in stored] == [SCHEMA_VERSION, SCHEMA_VERSION]
    assert "\u2713" in path.read_text(encoding="utf-8")  # written as UTF-8, not \u-escaped
    back = read_jsonl(path, Episode)
    assert back == episodes
    assert isinstance(back[0].turns[1], Turn)
    assert back[0].turns[1].finish_reason == "length"
    assert back[0].solved and back[0].turns[1].correct and not back[0].turns[0].correct
    assert back[1].sample == 2


def test_turn_and_verdict_round_trip(tmp_path: Path) -> None:
    turns = make_episode().turns
    write_jsonl(tmp_path / "turns.jsonl", turns)
    assert read_jsonl(tmp_path / "turns.jsonl", Turn) == turns
    verdicts = [Verdict(answer="1", reward=1), Verdict(answer=None, reward=-1)]
    write_jsonl(tmp_path / "verdicts.jsonl", verdicts)
    assert read_jsonl(tmp_path / "verdicts.jsonl", Verdict) == verdicts


def test_defaults_fill_optional_fields() -> None:
    turn = from_json(
        Turn, {"index": 0, "messages": [], "response": "x", "answer": None, "reward": -1}
    )
    assert (turn.num_tokens, turn.finish_reason) == (0, "stop")
    assert from_json(Problem, {"id": "p", "question": "q", "answer": "1"}).meta == {}


def test_append_mode_adds_lines(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, [make_problem(0), make_problem(1)])
    write_jsonl(path, [make_problem(2)], append=True)
    assert [p.id for p in read_jsonl(path, Problem)] == ["arith-0", "arith-1", "arith-2"]
    # without append the file is replaced
    write_jsonl(path, [make_problem(5)])
    assert [p.id for p in read_jsonl(path, Problem)] == ["arith-5"]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, [make_problem(0)])
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n   \n")
    write_jsonl(path, [make_problem(1)], append=True)
    assert [p.id for p in read_jsonl(path, Problem)] == ["arith-0", "arith-1"]


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, [make_problem(0), make_problem(1)])
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"schema_version": 1, "id": "half a line\n')
    with pytest.raises(RiseError, match="not valid JSON") as info:
        read_jsonl(path, Problem)
    assert f"{path}:3" in str(info.value)


def test_non_object_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(RiseError, match="expected a JSON object, got list") as info:
        read_jsonl(path, Problem)
    assert f"{path}:1" in str(info.value)


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, [make_problem(0)])
    obj = to_json(make_problem(1))
    del obj["answer"]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
    with pytest.raises(RiseError, match=r"missing field\(s\) answer for a Problem") as info:
        read_jsonl(path, Problem)
    assert f"{path}:2" in str(info.value)


def test_missing_field_of_a_nested_turn_is_named(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    obj = to_json(make_episode())
    del obj["turns"][1]["reward"]
    path.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    with pytest.raises(RiseError, match=r"missing field\(s\) reward for a Turn") as info:
        read_jsonl(path, Episode)
    assert f"{path}:1" in str(info.value)


def test_wrong_schema_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    obj = to_json(make_problem(0))
    obj["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    with pytest.raises(RiseError, match=f"schema_version {SCHEMA_VERSION + 1} is not supported"):
        read_jsonl(path, Problem)


def test_resume_reader_cuts_only_a_torn_tail(tmp_path):
    from rise_llm.records import read_jsonl_for_resume

    path = tmp_path / "p.jsonl"
    problems = [Problem(id=str(i), question="q", answer="1") for i in range(3)]
    write_jsonl(path, problems)
    stamp = path.stat().st_mtime_ns
    assert [p.id for p in read_jsonl_for_resume(path, Problem)] == ["0", "1", "2"]
    assert path.stat().st_mtime_ns == stamp  # a whole file is left alone
    path.write_text(path.read_text() + '{"schema_version": 1, "id": "3", "quest')
    assert [p.id for p in read_jsonl_for_resume(path, Problem)] == ["0", "1", "2"]
    assert path.read_text().endswith("}\n")  # the torn line is gone
    assert read_jsonl_for_resume(tmp_path / "missing.jsonl", Problem) == []
