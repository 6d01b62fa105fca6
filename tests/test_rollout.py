"""Episodes: oracle stops at the first correct turn, no-oracle runs all turns, context windows.

A scripted engine stands in for the model so that each turn's answer is known; the real engine
runs the same code in tests/test_cli.py.
"""

from __future__ import annotations

from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.records import Problem
from rise_llm.rollout import context, parallel_episodes, sequential_episodes
from rise_llm.tasks.arith import ArithTask

PROBLEMS = [
    Problem(id="a", question="What is 1 + 1?", answer="2"),
    Problem(id="b", question="What is 2 + 2?", answer="4"),
]
# per problem, the answer given at turns 1, 2, 3 ("" = no boxed answer)
SCRIPT = {"a": ["3", "2", "2"], "b": ["", "5", "4"]}


class ScriptedEngine:
    """Answers each conversation with the scripted answer for its problem and turn."""

    def __init__(self):
        self.calls = []

    def generate(self, conversations, n, params, desc=""):
        self.calls.append((len(conversations), n))
        out = []
        for conv in conversations:
            question = conv[0]["content"]
            pid = next(p.id for p in PROBLEMS if p.question == question)
            turn = sum(m["role"] == "assistant" for m in conv)  # only right with a full window
            answer = SCRIPT[pid][turn]
            text = f"\\boxed{{{answer}}}" if answer else "no idea"
            out.append([Completion(text=text, num_tokens=3, finish_reason="stop")] * n)
        return out


def test_no_oracle_runs_every_turn_and_records_rewards():
    engine = ScriptedEngine()
    eps = sequential_episodes(engine, ArithTask(), PROBLEMS, 3, 3, SamplingParams(), oracle=False)
    assert [[t.reward for t in ep.turns] for ep in eps] == [[0, 1, 1], [-1, 0, 1]]
    assert [[t.answer for t in ep.turns] for ep in eps] == [["3", "2", "2"], [None, "5", "4"]]
    assert engine.calls == [(2, 1), (2, 1), (2, 1)]  # one batched call per turn
    # the retry message after every turn, whatever the truth
    assert eps[0].turns[2].messages[-1]["content"].startswith("The answer is incorrect.")


def test_oracle_stops_at_first_correct_turn():
    engine = ScriptedEngine()
    eps = sequential_episodes(engine, ArithTask(), PROBLEMS, 3, 3, SamplingParams(), oracle=True)
    assert [len(ep.turns) for ep in eps] == [2, 3]
    assert [ep.solved for ep in eps] == [True, True]
    assert engine.calls == [(2, 1), (2, 1), (1, 1)]  # turn 3 only for the unsolved problem


def test_context_window_keeps_first_prompt_and_last_pairs():
    task = ArithTask()
    engine = ScriptedEngine()
    eps = sequential_episodes(engine, task, PROBLEMS, 3, 3, SamplingParams(), oracle=False)
    turns = eps[0].turns
    responses = [t.response for t in turns]
    first = task.prompt.first_messages(PROBLEMS[0])
    assert context(task, PROBLEMS[0], responses, window=1) == first
    two = context(task, PROBLEMS[0], responses, window=2)
    assert two[0] == first[0]
    assert [m["role"] for m in two] == ["user", "assistant", "user"]
    assert two[1]["content"] == turns[-1].response
    assert two[2]["content"].endswith(PROBLEMS[0].question)  # the retry restates the question
    three = context(task, PROBLEMS[0], responses, window=3)
    assert [m["content"] for m in three[1::2]] == [turns[1].response, turns[2].response]


def test_parallel_gives_independent_turn1_samples():
    engine = ScriptedEngine()
    eps = parallel_episodes(engine, ArithTask(), PROBLEMS, 4, SamplingParams())
    assert engine.calls == [(2, 4)]
    assert [(ep.problem_id, ep.sample) for ep in eps] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 0),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert all(len(ep.turns) == 1 and ep.turns[0].index == 1 for ep in eps)
