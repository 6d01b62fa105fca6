"""`rise serve` pieces that need no server: the RISE procedure per request (scripted engine),
the question inside a templated prompt, the seeded fault injector and the settings checks.
The HTTP path itself is tested against real servers in test_openai_engine.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.errors import RiseError
from rise_llm.serve import ServeConfig, question_of, rise_answers
from rise_llm.tasks import get_task
from rise_llm.tasks.base import REFERENCE_RETRY, PromptFormat


class ScriptedEngine:
    """Answers turn t of every conversation with script[t-1]; records what it was asked."""

    def __init__(self, script: list[str]):
        self.script = script
        self.calls: list[list[list[dict]]] = []

    def generate(self, conversations, n, params, desc="generate"):
        assert n == 1
        self.calls.append([list(c) for c in conversations])
        text = self.script[len(self.calls) - 1]
        return [
            [Completion(text=text, num_tokens=len(text), finish_reason="stop")]
            for _ in conversations
        ]


REQUEST = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 5?"},
]


@pytest.mark.parametrize(
    ("script", "answer", "chosen_turn"),
    [
        ([r"\boxed{7}", r"\boxed{6}", r"\boxed{7}"], "7", 3),  # 7 has two votes
        ([r"\boxed{7}", r"\boxed{7}", r"\boxed{6}"], "7", 2),  # the most recent attempt giving 7
        ([r"\boxed{6}", r"\boxed{7}", "no answer"], "7", 2),  # 1-1 tie: the most recent answer
        (["none", "still none", "nothing"], None, 3),  # no votes: the last attempt
    ],
)
def test_rise_answers_choose_by_majority_over_turns(script, answer, chosen_turn):
    engine = ScriptedEngine(script)
    task = get_task("arith")
    params = SamplingParams(max_new_tokens=8, seed=3)
    (found,) = rise_answers(engine, task, REQUEST, n=1, turns=3, window=3, params=params)
    assert found.answer == answer
    assert found.chosen.index == chosen_turn
    assert found.chosen.response == script[chosen_turn - 1]
    assert [t.response for t in found.turns] == script
    meta = found.metadata()
    assert meta["chosen_turn"] == chosen_turn and len(meta["attempts"]) == 3
    assert "ties go to the most recent" in meta["majority_rule"]


def test_rise_answers_send_the_retry_message_without_oracle_and_respect_the_window():
    engine = ScriptedEngine([r"\boxed{7}", r"\boxed{8}", r"\boxed{9}"])
    task = get_task("arith")
    found = rise_answers(engine, task, REQUEST, n=2, turns=3, window=2, params=SamplingParams())
    assert len(found) == 2  # n independent episodes, batched per turn
    assert [len(call) for call in engine.calls] == [2, 2, 2]
    retry = {"role": "user", "content": REFERENCE_RETRY.format(question="What is 2 + 5?")}
    # turn 2: the request, attempt 1, the retry message (even though 7 is right: no oracle)
    assert engine.calls[1][0] == [*REQUEST, {"role": "assistant", "content": r"\boxed{7}"}, retry]
    # turn 3 with W=2: only the most recent attempt/feedback pair is shown
    assert engine.calls[2][0] == [*REQUEST, {"role": "assistant", "content": r"\boxed{8}"}, retry]


@pytest.mark.parametrize(
    ("template", "text", "question"),
    [
        ("{question}", "What is 1 + 1?", "What is 1 + 1?"),
        ("Solve: {question}\nEnd with \\boxed{}.", "Solve: 3+4\nEnd with \\boxed{}.", "3+4"),
        ("Solve: {question}!", "something else", "something else"),  # not the template: all
    ],
)
def test_question_of_reads_the_question_inside_the_template(template, text, question):
    assert question_of(PromptFormat(question_template=template), text) == question


def test_fault_injector_is_seeded_and_near_its_rate():
    from faulty_server import FaultInjector

    draws = [FaultInjector(None, 0.3, seed=5, hang=0) for _ in range(2)]
    first, second = ([d.draw() for _ in range(2000)] for d in draws)
    assert first == second
    kinds = Counter(k for k in first if k)
    assert 0.26 < sum(kinds.values()) / 2000 < 0.34
    assert set(kinds) == {"500", "429", "hang"}
    assert [FaultInjector(None, 0.0, seed=0, hang=0).draw() for _ in range(50)] == [None] * 50


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rise_turns": -1}, "rise_turns must be at least 0"),
        ({"max_n": 0}, "max_n must be at least 1"),
        ({"port": 70000}, "port must be in 0..65535"),
    ],
)
def test_serve_settings_are_checked(settings, message):
    with pytest.raises(RiseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ServeConfig(model="m", **settings)


def test_serve_listens_on_loopback_by_default():
    assert ServeConfig(model="m").host == "127.0.0.1"


@pytest.mark.parametrize("task", ["arith", "gsm8k", "math"])
def test_question_of_recovers_the_question_from_each_tasks_first_message(task):
    from rise_llm.records import Problem

    prompt = get_task(task).prompt
    problem = Problem(id="p", question=r"What is {x} if x = \frac{1}{2}?", answer="")
    assert question_of(prompt, prompt.first_messages(problem)[-1]["content"]) == problem.question
