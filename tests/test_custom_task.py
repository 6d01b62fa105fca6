"""Users' own tasks: the README example run as written, verifier loading and its errors,
malformed problem files, and what a verifier may return."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import assert_metrics_match_episodes

from rise_llm import verifiers
from rise_llm.cli import main
from rise_llm.errors import RiseError
from rise_llm.records import CollectedEpisode, Episode, Problem, Verdict, read_jsonl
from rise_llm.tasks import get_task
from rise_llm.tasks.jsonl import JsonlTask

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> dict[str, str]:
    """The fenced blocks of the README's "Your own task" section, by language."""
    text = README.read_text()
    section = text.split("### Your own task", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, str] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(lang, body)
    return blocks


@pytest.fixture
def example(tmp_path, monkeypatch, tiny_model_dir) -> dict[str, str]:
    """The README's files written in a fresh folder (the current folder), runs/toy the tiny
    model; returns the README's commands."""
    blocks = readme_example()
    (tmp_path / "problems.jsonl").write_text(blocks["jsonl"])
    (tmp_path / "check.py").write_text(blocks["python"])
    (tmp_path / "mine.yaml").write_text(blocks["yaml"])
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "toy").symlink_to(tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    commands = [shlex.split(line) for line in blocks["bash"].strip().splitlines()]
    assert [c[:2] for c in commands] == [["rise", "evaluate"], ["rise", "collect"], ["rise", "run"]]
    return {c[1]: c[1:] for c in commands}


def test_readme_example_evaluates_end_to_end(example, capsys) -> None:
    assert main(example["evaluate"]) == 0, capsys.readouterr().err
    out = Path("runs/mine-eval")
    metrics = json.loads((out / "metrics.json").read_text())
    episodes = read_jsonl(out / "episodes.jsonl", Episode)
    assert metrics["n"] == 4
    assert_metrics_match_episodes(metrics, episodes, 2)
    assert len(episodes) == 4 + 4 + 4 * 2  # no oracle, oracle, 2 parallel samples each
    # the rewards are the README verifier's
    problems = {p.id: p for p in get_task("jsonl", path="problems.jsonl").problems("test")}
    for episode in episodes:
        for turn in episode.turns:
            boxed = re.findall(r"\\boxed\{([^{}]*)\}", turn.response)
            if not boxed:
                assert (turn.reward, turn.answer) == (-1, None)
            else:
                expected = problems[episode.problem_id].answer
                assert turn.answer == boxed[-1].replace(" ", "")
                assert turn.reward == (1 if turn.answer == expected else 0)


def test_readme_example_collects(example, capsys) -> None:
    assert main(example["collect"]) == 0, capsys.readouterr().err
    collected = read_jsonl(Path("runs/mine-collect/episodes.jsonl"), CollectedEpisode)
    assert len(collected) == 4
    assert all(len(t.attempts) == (1 if t.index == 1 else 4) for e in collected for t in e.turns)


@pytest.mark.slow
def test_readme_example_runs_an_iteration(example, capsys) -> None:
    assert main(example["run"]) == 0, capsys.readouterr().err
    summary = json.loads(Path("runs/mine/summary.json").read_text())
    assert set(summary) == {"base", "iter1"} and summary["iter1"]["n"] == 4
    assert (Path("runs/mine/iter1/train/model") / "config.json").exists()


def test_problems_keep_ids_fields_and_file_order(tmp_path) -> None:
    lines = [
        {"id": "first", "question": "Q1", "answer": 3, "tests": [1, 2]},
        {"question": "Q2", "answer": "x"},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    one, two = JsonlTask(path=str(tmp_path / "p.jsonl")).problems("train")
    assert (one.id, one.answer, one.meta["tests"]) == ("first", "3", [1, 2])
    assert two.id.startswith("jsonl-") and two.question == "Q2"


def test_renamed_fields(tmp_path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "Q", "target": "4"}\n')
    task = get_task("jsonl", path=str(tmp_path / "p.jsonl"), question_field="prompt")
    with pytest.raises(RiseError, match=r"p.jsonl:1: missing field 'answer' \(set answer_field="):
        task.problems("test")
    task = get_task(
        "jsonl", path=str(tmp_path / "p.jsonl"), question_field="prompt", answer_field="target"
    )
    assert task.problems("test")[0].answer == "4"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "Q", "answer": "1"}\n{"question": "Q2"\n', r"p.jsonl:2: not valid JSON"),
        ('{"question": "Q", "answer": "1"}\n{"answer": "2"}\n', r"p.jsonl:2: missing field 'quest"),
        ('"just a string"\n', r"p.jsonl:1: expected a JSON object"),
        ('{"question": {"a": 1}, "answer": "1"}\n', r"p.jsonl:1: field 'question' must be text"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, message) -> None:
    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(RiseError, match=message):
        JsonlTask(path=str(tmp_path / "p.jsonl")).problems("test")


def test_path_is_required() -> None:
    with pytest.raises(RiseError, match=r"task jsonl needs its problems: --task-option path="):
        get_task("jsonl")


VERIFIER_FILE = """
from rise_llm.records import Verdict

def exact(problem, response):
    return 1 if response.strip() == problem.answer else 0

def verdict(problem, response):
    return Verdict(answer=response.strip().lower(), reward=int(response.strip() == problem.answer))

def boolean(problem, response):
    return response.strip() == problem.answer

def hinted(problem, response):
    right = response.strip() == problem.answer
    hint = None if right else "too small"
    return Verdict(answer=response.strip(), reward=int(right), feedback=hint)

def numeric_feedback(problem, response):
    return Verdict(answer=None, reward=0, feedback=3)

def half(problem, response):
    return 0.5

def crash(problem, response):
    raise ZeroDivisionError("bad verifier")

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def verifier_file(tmp_path) -> Path:
    path = tmp_path / "myverify.py"
    path.write_text(VERIFIER_FILE)
    return path


PROBLEM = Problem(id="p1", question="Q", answer="42")


@pytest.mark.parametrize(
    ("function", "response", "verdict"),
    [
        ("exact", "42", Verdict(answer=None, reward=1)),  # no \boxed{}: no answer to vote with
        ("exact", r"\boxed{ 4 1 }", Verdict(answer="4 1", reward=0)),
        ("verdict", " ABC ", Verdict(answer="abc", reward=0)),
        ("boolean", "42", Verdict(answer=None, reward=1)),
        ("boolean", r"\boxed{7}", Verdict(answer="7", reward=0)),
        ("hinted", "41", Verdict(answer="41", reward=0, feedback="too small")),  # kept as given
    ],
)
def test_verifier_from_a_file_and_its_results(verifier_file, function, response, verdict) -> None:
    spec = f"{verifier_file}:{function}"
    assert verifiers.as_verdict(
        verifiers.load_verifier(spec)(PROBLEM, response), response, spec, PROBLEM
    ) == (verdict)


def test_verifier_by_module_name_from_the_current_folder(verifier_file, monkeypatch) -> None:
    monkeypatch.chdir(verifier_file.parent)
    task = JsonlTask(path=str(verifier_file), verifier="myverify:exact")
    assert task.verify(PROBLEM, "42").reward == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:verify", r"no module named 'no_such_module_xyz'"),
        ("{dir}/missing.py:verify", r"file .*missing.py does not exist"),
        (
            "{file}:nothing",
            r"has no function 'nothing'; it defines: boolean, crash, exact, half, hinted, "
            r"numeric_feedback, verdict$",
        ),
        ("{file}:NOT_A_FUNCTION", r"NOT_A_FUNCTION is a int, not callable"),
        ("{file}:", r"expected module:function"),
        ("no_such_verifier", r"unknown verifier 'no_such_verifier'.*math, number"),
        ("{broken}:verify", r"importing .*broken.py failed \(NameError"),
        ("", r"verifier must be a name or module:function"),
    ],
)
def test_bad_verifiers_are_one_line_errors(tmp_path, verifier_file, spec, message) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("undefined_name + 1\n")
    spec = spec.format(dir=tmp_path, file=verifier_file, broken=broken)
    with pytest.raises(RiseError, match=message):
        verifiers.load_verifier(spec)


def test_bad_verifier_results_and_crashes(verifier_file) -> None:
    task = JsonlTask(path=str(verifier_file), verifier=f"{verifier_file}:half")
    with pytest.raises(RiseError, match=r"returned 0.5 for problem p1; return 1 .* or a Verdict"):
        task.verify(PROBLEM, "x")
    task = JsonlTask(path=str(verifier_file), verifier=f"{verifier_file}:numeric_feedback")
    with pytest.raises(RiseError, match=r"gave feedback 3 for problem p1; feedback must be text"):
        task.verify(PROBLEM, "x")
    task = JsonlTask(path=str(verifier_file), verifier=f"{verifier_file}:crash")
    # a bug in user code is one line: the verifier, the problem, the exception and the user's
    # own line (none of ours)
    with pytest.raises(RiseError) as info:
        task.verify(PROBLEM, "x")
    line = (
        verifier_file.read_text().splitlines().index('    raise ZeroDivisionError("bad verifier")')
    )
    assert str(info.value) == (
        f"verifier '{verifier_file}:crash' raised ZeroDivisionError: bad verifier on problem p1 "
        f"(at {verifier_file}:{line + 1} in crash); fix the verifier and rerun the same command"
    )


def test_verifier_from_an_entry_point(verifier_file, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(verifier_file.parent))
    point = importlib.metadata.EntryPoint(
        name="mine", value="myverify:exact", group=verifiers.ENTRY_POINT_GROUP
    )

    def entry_points(group):
        return [point] if group == verifiers.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(verifiers.importlib.metadata, "entry_points", entry_points)
    assert verifiers.load_verifier("mine")(PROBLEM, "42") == 1
    with pytest.raises(RiseError, match=r"unknown verifier 'other'.*math, mine, number"):
        verifiers.load_verifier("other")


@pytest.mark.parametrize(
    ("verifier", "answer", "response", "verdict"),
    [
        ("math", r"\frac{1}{2}", r"so \boxed{0.5}", Verdict(answer="1/2", reward=1)),
        ("math", r"\frac{1}{2}", "no box", Verdict(answer=None, reward=-1)),
        ("number", "1,234", r"\boxed{1234 \text{ apples}}", Verdict(answer="1234", reward=1)),
        ("number", "7", r"\boxed{8}", Verdict(answer="8", reward=0)),
    ],
)
def test_builtin_verifiers(tmp_path, verifier, answer, response, verdict) -> None:
    (tmp_path / "p.jsonl").write_text(json.dumps({"question": "Q", "answer": answer}) + "\n")
    task = JsonlTask(path=str(tmp_path / "p.jsonl"), verifier=verifier)
    (problem,) = task.problems("test")
    assert task.verify(problem, response) == verdict


def test_number_verifier_needs_numeric_answers(tmp_path) -> None:
    task = JsonlTask(path=str(tmp_path), verifier="number")
    with pytest.raises(RiseError, match=r"answer 'x' is not a number; .*verifier=math"):
        task.verify(Problem(id="p", question="Q", answer="x"), r"\boxed{1}")
