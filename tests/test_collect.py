"""Data collection: the repetition filter, best-of-N choice, chunk rollouts and resumable runs.

Scripted engines stand in for the learner and the improver so that every sample's reward is
known; `run` is then exercised with the real tiny model for the file and resume behaviour.
"""

from __future__ import annotations

import pytest
from conftest import TINY

from rise_llm import collect
from rise_llm.collect import CollectConfig, choose, collect_chunk, is_degenerate
from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.errors import RiseError
from rise_llm.records import Attempt, CollectedEpisode, Problem, read_jsonl
from rise_llm.report import collection_table
from rise_llm.tasks.arith import ArithTask
from rise_llm.toy_model import ToyModelConfig, build

PROBLEMS = [
    Problem(id="a", question="What is 1 + 1?", answer="2"),
    Problem(id="b", question="What is 2 + 2?", answer="4"),
    Problem(id="c", question="What is 3 + 3?", answer="6"),
]
NO = "no idea"  # no boxed answer: reward -1


def boxed(x: str) -> str:
    return f"\\boxed{{{x}}}"


# per problem and turn, the texts of the samples drawn there
SCRIPT = {
    "a": {1: [boxed("2")]},  # solved at turn 1
    "b": {1: [boxed("5")], 2: [NO, boxed("4"), boxed("4")]},  # turn 2: tie, earliest is 1
    "c": {1: [NO], 2: [boxed("7"), boxed("8"), NO], 3: [boxed("9"), boxed("6"), NO]},
}


class ScriptedEngine:
    """Answers with the scripted samples for the conversation's problem and turn."""

    def __init__(self, script=SCRIPT):
        self.script = script
        self.calls = []  # (problem ids, n, seed)

    def generate(self, conversations, n, params, desc="", keys=None):
        ids, out = [], []
        for conv in conversations:
            pid = next(p.id for p in PROBLEMS if p.question == conv[0]["content"])
            turn = 1 + sum(m["role"] == "assistant" for m in conv)  # needs the full window
            texts = self.script[pid][turn]
            assert len(texts) == n
            ids.append(pid)
            out.append([Completion(text=t, num_tokens=len(t), finish_reason="stop") for t in texts])
        self.calls.append((ids, n, params.seed))
        return out


class RefusingEngine:
    def generate(self, conversations, n, params, desc="", keys=None):
        raise AssertionError("this run should not sample")


def config(**kw) -> CollectConfig:
    return CollectConfig(**{"model": "m", "out": "o", "samples": 3, **kw})


def retry(problem: Problem) -> dict[str, str]:
    content = f"The answer is incorrect. Please try again. Here's the question: {problem.question}"
    return {"role": "user", "content": content}


def test_is_degenerate_counts_the_most_repeated_word():
    assert is_degenerate(" ".join(["the"] * 151))
    assert not is_degenerate(" ".join(["the"] * 150))
    assert not is_degenerate(" ".join(["the", "cat"] * 150))  # 150 each
    assert is_degenerate("a a a b", max_word_repeats=2)
    assert not is_degenerate("a a b b", max_word_repeats=2)
    assert not is_degenerate("")
    assert not is_degenerate("   ", max_word_repeats=0)


def att(reward: int, degenerate: bool = False) -> Attempt:
    return Attempt(response="r", answer=None, reward=reward, degenerate=degenerate)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        ([att(0), att(1), att(-1)], 1),
        ([att(-1), att(0), att(0)], 1),  # earliest of the ties
        ([att(1), att(1)], 0),
        ([att(1, True), att(0), att(0, True)], 1),  # degenerate never chosen, even if correct
        ([att(1, True), att(-1)], 1),
        ([att(1, True), att(0, True)], -1),
        ([], -1),
    ],
)
def test_choose(attempts, expected):
    assert choose(attempts) == expected


def said(text: str, reward: int, degenerate: bool = False) -> Attempt:
    return Attempt(response=text, answer=None, reward=reward, degenerate=degenerate)


PREVIOUS = "1 + 2 = 4\n4 + 3 = 7\nAnswer: \\boxed{7}"


@pytest.mark.parametrize(
    ("attempts", "first", "closest"),
    [
        # the fresh attempt comes first; the repair keeps line 1 and is chosen by `closest`
        (
            [
                said("1 + 2 = 3\n3 + 3 = 6\nAnswer: 6", 1),
                said("1 + 2 = 4\n4 + 2 = 6\nAnswer: 6", 1),
            ],
            0,
            1,
        ),
        # closer but of a lower reward: never chosen
        ([said("x", 1), said(PREVIOUS, 0)], 0, 0),
        # the closest sample is degenerate: the next closest of the best reward
        ([said("zzz", 1), said(PREVIOUS + " ", 1, degenerate=True), said(PREVIOUS[:-3], 1)], 0, 2),
        ([said("q", 0), said("z", 0)], 0, 0),  # equally far: the earliest
        ([said("a", 1, degenerate=True)], -1, -1),
    ],
)
def test_choose_first_or_closest_among_the_best(attempts, first, closest):
    assert choose(attempts, PREVIOUS, "first") == first
    assert choose(attempts, PREVIOUS, "closest") == closest
    assert choose(attempts) == first


def test_collect_chunk_closest_continues_from_the_sample_nearest_the_failed_attempt():
    script = {
        "a": {1: [boxed("2")]},
        "b": {1: ["2 + 2 = 5 " + boxed("5")], 2: [boxed("4"), "2 + 2 = 4 " + boxed("4"), NO]},
        "c": {1: [NO], 2: [boxed("7"), NO, NO]},
    }
    cfg = config(selection="closest")
    _, b, c = collect_chunk(
        ScriptedEngine(script), ScriptedEngine(script), ArithTask(), PROBLEMS, cfg, SamplingParams()
    )
    assert b.turns[1].chosen == 1  # the reference `first` would take sample 0
    assert c.turns[1].chosen == 0
    assert (
        collect_chunk(
            ScriptedEngine(script),
            ScriptedEngine(script),
            ArithTask(),
            PROBLEMS,
            config(),
            SamplingParams(),
        )[1]
        .turns[1]
        .chosen
        == 0
    )


def test_keep_states_exactly_after_correct_first_attempts():
    learner, improver = ScriptedEngine(), ScriptedEngine()
    cfg = config(keep_states=True)
    a, b, c = collect_chunk(learner, improver, ArithTask(), PROBLEMS, cfg, SamplingParams())
    assert improver.calls == [(["b", "c"], 3, 2 * 7919)]  # a keep state samples nothing
    assert [t.source for t in a.turns] == ["policy", "keep"]
    keep = a.turns[1]
    assert keep.index == 2 and keep.chosen == 0
    assert keep.attempts == [a.turns[0].attempts[0]]  # the same answer is the target
    assert keep.messages == [
        {"role": "user", "content": PROBLEMS[0].question},
        {"role": "assistant", "content": boxed("2")},
        retry(PROBLEMS[0]),  # "incorrect", after a correct answer: the no-oracle state
    ]
    assert [t.source for t in b.turns] == ["policy", "self"]  # wrong first: no keep state
    assert [t.source for t in c.turns] == ["policy", "self"]
    b_solved_late = collect_chunk(
        ScriptedEngine(), ScriptedEngine(), ArithTask(), PROBLEMS, config(), SamplingParams()
    )
    assert [len(ep.turns) for ep in b_solved_late] == [1, 2, 2]  # off by default


def test_a_collection_verifier_judges_and_the_plain_reward_is_kept(tmp_path):
    checker = tmp_path / "checker.py"
    checker.write_text(
        "def no_guesses(problem, response):\n"
        "    if 'guess' in response:\n"
        "        return 0\n"
        "    return 1 if response.endswith('{' + problem.answer + '}') else 0\n"
    )
    script = {
        "a": {1: ["guess " + boxed("2")], 2: [boxed("2"), "guess " + boxed("2"), NO]},
        "b": {1: [boxed("4")]},
        "c": {1: [NO], 2: ["guess " + boxed("6"), boxed("5"), boxed("6")]},
    }
    cfg = config(verifier=f"{checker}:no_guesses")
    a, b, c = collect_chunk(
        ScriptedEngine(script), ScriptedEngine(script), ArithTask(), PROBLEMS, cfg, SamplingParams()
    )
    assert [x.reward for x in a.turns[0].attempts] == [0]  # demoted: the episode goes on
    assert [x.plain_reward for x in a.turns[0].attempts] == [1]
    assert [(x.reward, x.plain_reward) for x in a.turns[1].attempts] == [(1, 1), (0, 1), (0, -1)]
    assert a.turns[1].chosen == 0 and len(b.turns) == 1
    assert c.turns[1].chosen == 2  # the guessed right answer is not the target
    assert c.turns[1].attempts[0].answer == "6"  # a bare reward: the boxed answer is kept
    table = collection_table([a, b, c])
    demoted = [cell for cell in table.columns[7].cells]
    assert demoted == ["1/2 (50%)", "2/4 (50%)"]


def test_collect_chunk_turn1_on_policy_then_best_of_n_from_the_improver():
    learner, improver = ScriptedEngine(), ScriptedEngine()
    eps = collect_chunk(learner, improver, ArithTask(), PROBLEMS, config(), SamplingParams())
    assert learner.calls == [(["a", "b", "c"], 1, 7919)]
    assert improver.calls == [(["b", "c"], 3, 2 * 7919)]  # only the unsolved ones
    a, b, c = eps
    assert [ep.problem_id for ep in eps] == ["a", "b", "c"]
    assert [len(ep.turns) for ep in eps] == [1, 2, 2]
    assert [t.source for t in b.turns] == ["policy", "self"]
    assert [t.index for t in b.turns] == [1, 2]
    assert [[x.reward for x in t.attempts] for t in b.turns] == [[0], [-1, 1, 1]]
    assert [t.chosen for t in b.turns] == [0, 1]
    assert [[x.reward for x in t.attempts] for t in c.turns] == [[-1], [0, 0, -1]]
    assert c.turns[1].chosen == 0
    assert c.turns[1].attempts[0].answer == "7"
    assert a.turns[0].messages == [{"role": "user", "content": PROBLEMS[0].question}]
    # turn 2 sees the turn-1 response and the retry message restating the question
    assert b.turns[1].messages == [
        {"role": "user", "content": PROBLEMS[1].question},
        {"role": "assistant", "content": boxed("5")},
        retry(PROBLEMS[1]),
    ]


def test_collect_chunk_source_is_teacher_with_a_teacher():
    learner, teacher = ScriptedEngine(), ScriptedEngine()
    cfg = config(teacher="big-model")
    eps = collect_chunk(learner, teacher, ArithTask(), PROBLEMS, cfg, SamplingParams())
    assert [t.source for t in eps[1].turns] == ["policy", "teacher"]
    assert len(learner.calls) == len(teacher.calls) == 1


def test_collect_chunk_continues_from_the_chosen_response():
    learner, improver = ScriptedEngine(), ScriptedEngine()
    cfg = config(turns=3)
    eps = collect_chunk(learner, improver, ArithTask(), PROBLEMS, cfg, SamplingParams(seed=5))
    assert learner.calls == [(["a", "b", "c"], 1, 5 + 7919)]
    assert improver.calls == [(["b", "c"], 3, 5 + 2 * 7919), (["c"], 3, 5 + 3 * 7919)]
    c = eps[2]
    assert [len(ep.turns) for ep in eps] == [1, 2, 3]
    assert c.turns[2].messages == [
        {"role": "user", "content": PROBLEMS[2].question},
        {"role": "assistant", "content": NO},
        retry(PROBLEMS[2]),
        {"role": "assistant", "content": boxed("7")},  # the chosen turn-2 sample
        retry(PROBLEMS[2]),
    ]
    assert (c.turns[2].chosen, c.turns[2].chosen_attempt.reward) == (1, 1)
    assert [t.source for t in c.turns] == ["policy", "self", "self"]


def test_collect_chunk_skips_degenerate_and_stops_when_all_are():
    script = {
        "a": {1: [boxed("1")], 2: ["\\boxed{2} x x x", "x x x x", boxed("3")]},
        "b": {1: [boxed("5")], 2: ["x x x x", "y y y y \\boxed{4}", "x x x x"]},
        "c": {1: [boxed("2")], 2: [NO, NO, NO], 3: [NO, NO, NO]},
    }
    engine = ScriptedEngine(script)
    cfg = config(turns=3, max_word_repeats=3)
    a, b, c = collect_chunk(engine, engine, ArithTask(), PROBLEMS, cfg, SamplingParams())
    assert [x.degenerate for x in a.turns[1].attempts] == [False, True, False]
    assert a.turns[1].chosen == 0 and a.turns[1].chosen_attempt.reward == 1
    assert [x.degenerate for x in b.turns[1].attempts] == [True, True, True]
    assert b.turns[1].chosen == -1 and b.turns[1].chosen_attempt is None
    assert [len(ep.turns) for ep in (a, b, c)] == [2, 2, 3]  # b stops: nothing to continue from


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"turns": 0}, "turns must be at least 1"),
        ({"samples": 0}, "samples must be at least 1"),
        ({"turns": 2, "context_window": 3}, "context_window must be between 1 and turns"),
        ({"context_window": 0}, "context_window must be between 1 and turns"),
        ({"limit": 0}, "limit must be at least 1"),
        ({"chunk_size": 0}, "chunk_size must be at least 1"),
        ({"selection": "nearest"}, "selection must be one of first, closest"),
        ({"keep_states": True, "turns": 1}, "keep_states needs context_window >= 2"),
    ],
)
def test_collect_config_validation(kwargs, message):
    with pytest.raises(RiseError, match=message):
        config(**kwargs)


def test_collect_config_context_window_defaults_to_turns():
    assert config(turns=3).context_window == 3


def test_run_writes_resumes_and_refuses_other_settings(tiny_model_dir, tiny_engine, tmp_path):
    out = tmp_path / "collect"
    settings = dict(model=str(tiny_model_dir), out=str(out), limit=6, samples=2, chunk_size=2)
    cfg = CollectConfig(**settings, max_new_tokens=24)
    first = collect.run(cfg, learner=tiny_engine)
    path = out / collect.EPISODES
    stored = read_jsonl(path, CollectedEpisode)
    assert stored == first
    ids = [ep.problem_id for ep in first]
    assert len(ids) == len(set(ids)) == 6
    for ep in first:
        assert ep.turns[0].source == "policy" and len(ep.turns[0].attempts) == 1
        assert all(len(t.attempts) == 2 and t.source == "self" for t in ep.turns[1:])
        assert len(ep.turns) == 2 or ep.turns[0].attempts[0].correct
    assert any(len(ep.turns) == 2 for ep in first)  # the tiny model is mostly wrong
    assert (out / "config.json").exists()

    # a finished collection is returned as it is, without sampling
    assert collect.run(cfg, learner=RefusingEngine()) == first

    # a kill in the middle of writing the third episode
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    resumed = collect.run(cfg, learner=tiny_engine)
    again = read_jsonl(path, CollectedEpisode)
    assert again == resumed
    assert [ep.problem_id for ep in again] == ids  # same problems, same order, no duplicates
    assert again[:2] == first[:2]
    assert again == first  # the seed depends on the chunk, so the resumed chunks sample the same

    with pytest.raises(RiseError, match="different settings") as info:
        collect.run(CollectConfig(**{**settings, "samples": 3}, max_new_tokens=24))
    assert "samples" in str(info.value)


def test_run_loads_a_real_teacher_model(tiny_model_dir, tmp_path):
    """The teacher is another model (the tiny toy, another seed, twice the steps), loaded by
    `collect.run` itself; greedy in float64, each sample can be traced to the model that
    wrote it: turn 1 is the learner's answer, every later attempt the teacher's."""
    from rise_llm.engines.hf import HFEngine

    teacher_dir = tmp_path / "teacher"
    build(ToyModelConfig(out=str(teacher_dir), **{**TINY, "seed": 1, "steps": 80}))
    cfg = CollectConfig(
        model=str(tiny_model_dir),
        teacher=str(teacher_dir),
        out=str(tmp_path / "c"),
        limit=6,
        samples=3,
        max_new_tokens=16,
        temperature=0.0,
        device="cpu",
        dtype="float64",
    )
    episodes = collect.run(cfg)
    assert len(episodes) == 6
    engines = {
        name: HFEngine.load(str(folder), device="cpu", dtype="float64")
        for name, folder in (("learner", tiny_model_dir), ("teacher", teacher_dir))
    }

    def greedy(name: str, messages) -> str:
        params = SamplingParams(temperature=0.0, max_new_tokens=16)
        return engines[name].generate([messages], n=1, params=params)[0][0].text

    later = [turn for ep in episodes for turn in ep.turns[1:]]
    assert later, "no episode reached turn 2; the check below would be empty"
    for ep in episodes:
        first = ep.turns[0]
        assert first.source == "policy" and len(first.attempts) == 1
        assert first.attempts[0].response == greedy("learner", first.messages)
    for turn in later:
        assert turn.source == "teacher" and len(turn.attempts) == 3
        assert {a.response for a in turn.attempts} == {greedy("teacher", turn.messages)}
    # the two models answer differently, so the check above tells them apart
    assert any(greedy("learner", t.messages) != greedy("teacher", t.messages) for t in later)
