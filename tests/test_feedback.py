"""Feedback between attempts on the embedded task: arith's `feedback: lines` reaches the next
prompt, the records and the training data, in the modes README "Feedback between attempts"
defines. A scripted engine stands in for the model: it repairs its first attempt only when the
retry message names the wrong line, so what it does proves what it was shown."""

from __future__ import annotations

import json

import pytest

from rise_llm import collect, evaluate
from rise_llm.engines.base import Completion
from rise_llm.records import Problem, read_jsonl
from rise_llm.tasks import get_task
from rise_llm.tasks.arith import solution_lines, steps_of

OPTIONS = {"seed": 3, "min_steps": 2, "max_steps": 3}


def slipped(problem: Problem) -> str:
    """The problem's solution with a slip on line 1 carried through to the answer."""
    lines = solution_lines(problem.meta["start"], steps_of(problem))
    a, op, b, _, c = lines[0].split()
    wrong = int(c) + 1
    value, out = wrong, [f"{a} {op} {b} = {wrong}"]
    for op, operand in steps_of(problem)[1:]:
        nxt = value + operand if op == "+" else value - operand
        out.append(f"{value} {op} {operand} = {nxt}")
        value = nxt
    return "\n".join([*out, f"Answer: \\boxed{{{value}}}"])


class RepairsWhenTold:
    """Slips on its first attempt; repairs it when the last message names a wrong line; keeps
    its answer when told every line is right; otherwise repeats itself."""

    def __init__(self, problems: list[Problem]):
        self.by_question = {p.question: p for p in problems}
        self.task = get_task("arith", **OPTIONS)
        self.seen: list[str] = []

    def generate(self, conversations, n=1, params=None, desc="", keys=None):
        out = []
        for conv in conversations:
            problem = self.by_question[conv[0]["content"]]
            last = conv[-1]["content"]
            self.seen.append(last)
            told = len(conv) > 1 and ("is wrong" in last or "Every line is right" in last)
            text = self.task.solution(problem) if told else slipped(problem)
            out.append([Completion(text, len(text), "stop") for _ in range(n)])
        return out


def evaluation(tmp_path, feedback: str, reuse: bool = True) -> evaluate.EvaluateResult:
    options = {**OPTIONS, "feedback": feedback}
    problems = get_task("arith", **options).problems("test", 6)
    config = evaluate.EvaluateConfig(
        model="scripted",
        task_options=options,
        limit=6,
        turns=3,
        out=str(tmp_path / f"{feedback}-{reuse}"),
        reuse_samples=reuse,
    )
    return evaluate.run(config, engine=RepairsWhenTold(problems))


def test_feedback_reaches_the_next_attempt_and_the_records(tmp_path) -> None:
    result = evaluation(tmp_path, "lines")
    no_oracle = [ep for ep in result.episodes if ep.mode == "no_oracle"]
    # without the oracle every episode runs all K turns, told its line 1 slip after turn 1
    assert {len(ep.turns) for ep in no_oracle} == {3}
    for ep in no_oracle:
        first, second, third = ep.turns
        assert first.feedback.startswith("Line 1: ") and first.feedback.endswith(" is wrong.")
        assert second.messages[-1]["content"].startswith(f"Checking your work: {first.feedback}")
        assert second.feedback == third.feedback == "Every line is right."
        assert [t.reward for t in ep.turns] == [0, 1, 1]
    # with the oracle: the same episodes cut at the first attempt the answer check passes
    oracle = [ep for ep in result.episodes if ep.mode == "oracle"]
    assert [len(ep.turns) for ep in oracle] == [2] * 6
    assert result.metrics.acc == [0.0, 1.0, 1.0]
    assert result.metrics.oracle == 1.0
    # the stored records hold the feedback of each turn
    stored = read_jsonl(tmp_path / "lines-True" / "episodes.jsonl", type(no_oracle[0]))
    assert [t.feedback for t in stored[0].turns] == [t.feedback for t in no_oracle[0].turns]


def test_without_feedback_the_message_is_the_reference_and_nothing_is_repaired(tmp_path) -> None:
    result = evaluation(tmp_path, "none")
    no_oracle = [ep for ep in result.episodes if ep.mode == "no_oracle"]
    for ep in no_oracle:
        assert [t.feedback for t in ep.turns] == [None, None, None]
        assert (
            ep.turns[1]
            .messages[-1]["content"]
            .startswith("The answer is incorrect. Please try again. Here's the question: ")
        )
    assert result.metrics.acc == [0.0, 0.0, 0.0]


def test_oracle_episodes_sampled_alone_equal_the_ones_read_off(tmp_path) -> None:
    """The message after an attempt is the same in both modes, so sampling the oracle mode on
    its own gives the episodes `reuse_samples` reads off the no-oracle ones."""

    def oracle(result):
        return [
            [(t.response, t.feedback, t.reward) for t in ep.turns]
            for ep in result.episodes
            if ep.mode == "oracle"
        ]

    assert oracle(evaluation(tmp_path, "lines", reuse=False)) == oracle(
        evaluation(tmp_path, "lines", reuse=True)
    )


@pytest.mark.parametrize("keep_states", [False, True])
def test_collection_trains_on_the_message_with_the_feedback(tmp_path, keep_states) -> None:
    options = {**OPTIONS, "feedback": "lines"}
    problems = get_task("arith", **options).problems("train", 4)
    engine = RepairsWhenTold(problems)
    config = collect.CollectConfig(
        model="scripted",
        out=str(tmp_path / "collect"),
        task_options=options,
        limit=4,
        samples=2,
        keep_states=keep_states,
        verifier="strict",
    )
    episodes = collect.run(config, learner=engine)
    for ep in episodes:
        first, second = ep.turns[:2]
        assert first.attempts[0].feedback.startswith("Line 1: ")
        assert second.messages[-1]["content"].startswith(
            f"Checking your work: {first.attempts[0].feedback}"
        )
        assert [a.reward for a in second.attempts] == [1, 1]
        assert second.attempts[0].feedback == "Every line is right."
    record = json.loads((tmp_path / "collect" / "episodes.jsonl").read_text().splitlines()[0])
    assert record["turns"][0]["attempts"][0]["feedback"].startswith("Line 1: ")
