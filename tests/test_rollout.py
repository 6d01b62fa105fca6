"""Episodes: oracle stops at the first correct turn, no-oracle runs all turns, context windows.

A scripted engine stands in for the model so that each turn's answer is known; the real engine
runs the same code in tests/test_cli.py.
"""

from __future__ import annotations

import json

from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.records import Episode, Problem
from rise_llm.rollout import (
    context,
    oracle_prefixes,
    parallel_episodes,
    sequential_episodes,
    with_first_turns,
)
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

    def generate(self, conversations, n, params, desc="", keys=None):
        self.calls.append((len(conversations), n))
        out = []
        for conv in conversations:
            question = conv[0]["content"]
            pid = next(p.id for p in PROBLEMS if p.question == question)
            turn = sum(m["role"] == "assistant" for m in conv)  # only right with a full window
            answer = SCRIPT[pid][turn]
            text = f"\\boxed{{{answer}}}" if answer else "no idea"
            # the n samples differ (in length), so a test sees which one went where
            out.append(
                [Completion(text=text, num_tokens=3 + k, finish_reason="stop") for k in range(n)]
            )
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
    responses = [(t.response, t.feedback) for t in turns]
    first = task.prompt.first_messages(PROBLEMS[0])
    assert context(task.prompt, PROBLEMS[0], responses, window=1) == first
    two = context(task.prompt, PROBLEMS[0], responses, window=2)
    assert two[0] == first[0]
    assert [m["role"] for m in two] == ["user", "assistant", "user"]
    assert two[1]["content"] == turns[-1].response
    assert two[2]["content"].endswith(PROBLEMS[0].question)  # the retry restates the question
    three = context(task.prompt, PROBLEMS[0], responses, window=3)
    assert [m["content"] for m in three[1::2]] == [turns[1].response, turns[2].response]
    # a window longer than the history shows all of it (turn 3 of a window of 4)
    four = context(task.prompt, PROBLEMS[0], responses[:2], window=4)
    assert [m["content"] for m in four[1::2]] == [turns[0].response, turns[1].response]


def test_parallel_gives_independent_turn1_samples():
    engine = ScriptedEngine()
    eps = parallel_episodes(engine, ArithTask(), PROBLEMS, 4, SamplingParams())
    assert engine.calls == [(2, 4)]
    # sample k is the engine's k-th completion, not one completion repeated
    assert [ep.turns[0].num_tokens for ep in eps] == [3, 4, 5, 6] * 2
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


def test_oracle_episodes_are_the_no_oracle_ones_cut_at_their_first_success():
    no_oracle = sequential_episodes(
        ScriptedEngine(), ArithTask(), PROBLEMS, 3, 3, SamplingParams(), oracle=False
    )
    sampled = sequential_episodes(
        ScriptedEngine(), ArithTask(), PROBLEMS, 3, 3, SamplingParams(), oracle=True
    )
    assert oracle_prefixes(no_oracle) == sampled
    never = [Episode("c", "no_oracle", [no_oracle[1].turns[0]] * 3)]  # never solved: all turns
    assert oracle_prefixes(never) == [Episode("c", "oracle", never[0].turns)]


def test_parallel_samples_start_with_the_no_oracle_first_turns():
    no_oracle = sequential_episodes(
        ScriptedEngine(), ArithTask(), PROBLEMS, 3, 3, SamplingParams(), oracle=False
    )
    extra = parallel_episodes(ScriptedEngine(), ArithTask(), PROBLEMS[::-1], 2, SamplingParams())
    eps = with_first_turns(no_oracle, extra)
    assert [(ep.problem_id, ep.sample, ep.mode) for ep in eps] == [
        (pid, k, "parallel") for pid in "ab" for k in range(3)
    ]
    assert eps[0].turns == [no_oracle[0].turns[0]] and eps[3].turns == [no_oracle[1].turns[0]]
    assert [ep.turns for ep in eps if ep.sample] == [
        e.turns for pid in "ab" for e in extra if e.problem_id == pid
    ]


class SlowLearner:
    """Right from turn `1 + (i % 3)` on at the i-th test problem, whatever the sampling stream."""

    def __init__(self, task):
        problems = task.problems("test", 30)
        self.answers = {p.question: (p.answer, i % 3) for i, p in enumerate(problems)}
        self.samples = 0

    def generate(self, conversations, n, params, desc="", keys=None):
        out = []
        for conv in conversations:
            answer, wrong_turns = self.answers[conv[0]["content"]]
            turn = sum(m["role"] == "assistant" for m in conv) + 1
            given = answer if turn > wrong_turns else f"{answer}1"
            out.append([Completion(f"\\boxed{{{given}}}", 3, "stop")] * n)
            self.samples += n
        return out


def test_an_evaluation_reusing_samples_gives_the_same_metrics_from_fewer_samples(tmp_path):
    from rise_llm.evaluate import EvaluateConfig, run

    task = ArithTask()
    results = {}
    for reuse in (True, False):
        engine = SlowLearner(task)
        config = EvaluateConfig(
            model="scripted",
            limit=30,
            turns=4,
            context_window=4,
            reuse_samples=reuse,
            out=str(tmp_path / str(reuse)),
        )
        result = run(config, engine)
        results[reuse] = (result.metrics.to_dict(), engine.samples, result.episodes)
    (reused, fewer, episodes), (sampled, more, separate) = results[True], results[False]
    assert {k: v for k, v in reused.items() if k != "seconds"} == {
        k: v for k, v in sampled.items() if k != "seconds"
    }
    assert reused["p1@t4"] == 1.0 and reused["acc@1"] == 10 / 30
    # 30 problems: 4 no-oracle turns + 3 extra turn-1 samples against 4 + up to 4 + 4
    assert fewer == 30 * 7 and more == 30 * 4 + (30 + 20 + 10) + 30 * 4
    key = lambda ep: (ep.mode, ep.problem_id, ep.sample)  # noqa: E731
    assert sorted(map(key, episodes)) == sorted(map(key, separate))
    assert [len(ep.turns) for ep in episodes if ep.mode == "oracle"] == [
        len(ep.turns) for ep in separate if ep.mode == "oracle"
    ]


def test_an_evaluation_from_before_reuse_samples_resumes_under_it(tmp_path):
    from rise_llm.evaluate import EvaluateConfig, run

    task = ArithTask()
    config = EvaluateConfig(model="scripted", limit=6, turns=3, out=str(tmp_path))
    first = run(config, SlowLearner(task))
    record = json.loads((tmp_path / "config.json").read_text())
    del record["config"]["reuse_samples"]  # written before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(record))
    again = SlowLearner(task)
    assert run(config, again).metrics == first.metrics and again.samples == 0
