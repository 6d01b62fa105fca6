"""Training data: RWR weights, which turns each criterion keeps, examples and `build`.

Expected values are worked out by hand from METHOD.md, "Training data".
"""

from __future__ import annotations

import math

import pytest

from rise_llm.data import DATA, BuildDataConfig, build, examples_from_episode, keep, rwr_weight
from rise_llm.errors import RiseError
from rise_llm.records import (
    KEEP,
    Attempt,
    CollectedEpisode,
    CollectedTurn,
    TrainingExample,
    read_jsonl,
    write_jsonl,
)

Q = {"role": "user", "content": "What is 1 + 1?"}
RETRY = {
    "role": "user",
    "content": "The answer is incorrect. Please try again. Here's the question: What is 1 + 1?",
}


def test_rwr_weight_reference_values():
    assert round(rwr_weight(1), 2) == 12.18  # exp(2.5)
    assert rwr_weight(0) == 1.0
    assert round(rwr_weight(-1), 3) == 0.082  # exp(-2.5)
    assert rwr_weight(1, tau=1.0) == pytest.approx(math.e)
    assert rwr_weight(-1, tau=0.5) == pytest.approx(math.exp(-2))
    assert rwr_weight(1, tau=1.0) < rwr_weight(1)  # a larger tau flattens the weights


# kept turns per criterion, by hand: better = higher than the previous turn; best = no earlier
# turn higher (ties kept); success = reward 1; the first turn is kept except under success.
KEEP_TABLE = [
    # rewards, all, better, best, success
    ([0, 1], [1, 1], [1, 1], [1, 1], [0, 1]),
    ([0, 0], [1, 1], [1, 0], [1, 1], [0, 0]),
    ([1], [1], [1], [1], [1]),
    ([-1, 0], [1, 1], [1, 1], [1, 1], [0, 0]),
    ([0, -1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 1], [0, 0, 1]),
    ([1, 0], [1, 1], [1, 0], [1, 0], [1, 0]),
    ([0, -1, 0], [1, 1, 1], [1, 0, 1], [1, 0, 1], [0, 0, 0]),
    ([-1, -1, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0]),
    ([0, -1, -1], [1, 1, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]),
    ([-1], [1], [1], [1], [0]),
]


@pytest.mark.parametrize(("rewards", "all_", "better", "best", "success"), KEEP_TABLE)
def test_keep_table(rewards, all_, better, best, success):
    for criteria, expected in [
        ("all", all_),
        ("better", better),
        ("best", best),
        ("success", success),
    ]:
        kept = [int(keep(rewards, t, criteria)) for t in range(len(rewards))]
        assert kept == expected, (criteria, rewards)


def attempt(answer: str | None, reward: int, degenerate: bool = False) -> Attempt:
    text = f"\\boxed{{{answer}}}" if answer is not None else "no idea"
    return Attempt(response=text, answer=answer, reward=reward, degenerate=degenerate)


def episode(pid: str = "p1", answers=(("3", 0), ("2", 1)), chosen=None) -> CollectedEpisode:
    """An episode whose turn t chose the attempt answering answers[t]."""
    turns, history = [], [Q]
    for t, (answer, reward) in enumerate(answers, start=1):
        attempts = [attempt("9", 0), attempt(answer, reward)]  # the chosen one is index 1
        turns.append(
            CollectedTurn(
                index=t,
                messages=list(history),
                attempts=attempts,
                chosen=1 if chosen is None else chosen[t - 1],
                source="policy" if t == 1 else "self",
            )
        )
        history += [{"role": "assistant", "content": attempts[1].response}, RETRY]
    return CollectedEpisode(problem_id=pid, turns=turns)


def test_examples_from_episode_conversations_and_weights():
    exs = examples_from_episode(episode(), "all", 0.4)
    assert [(ex.turn, ex.reward, ex.problem_id) for ex in exs] == [(1, 0, "p1"), (2, 1, "p1")]
    assert exs[0].messages == [Q, {"role": "assistant", "content": "\\boxed{3}"}]
    assert exs[1].messages == [
        Q,
        {"role": "assistant", "content": "\\boxed{3}"},
        RETRY,
        {"role": "assistant", "content": "\\boxed{2}"},
    ]
    assert exs[0].weight == 1.0
    assert exs[1].weight == pytest.approx(math.exp(2.5))
    assert examples_from_episode(episode(), "all", 1.0)[1].weight == pytest.approx(math.e)
    assert [ex.turn for ex in examples_from_episode(episode(), "success", 0.4)] == [2]


def test_examples_from_episode_uses_the_chosen_attempt():
    ep = episode(answers=[("3", 0)], chosen=[0])  # attempt 0 answers 9
    (ex,) = examples_from_episode(ep, "all", 0.4)
    assert ex.messages[-1] == {"role": "assistant", "content": "\\boxed{9}"}


def test_turns_with_no_chosen_attempt_are_skipped():
    ep = episode(answers=[("3", 0), ("7", 0)], chosen=[1, -1])  # turn 2 all degenerate
    exs = examples_from_episode(ep, "all", 0.4)
    assert [ex.turn for ex in exs] == [1]


def write_collection(folder, episodes):
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "episodes.jsonl", episodes)
    return folder


def test_build_writes_data_readable_as_training_examples(tmp_path):
    src = write_collection(tmp_path / "c", [episode("p1"), episode("p2", answers=[("2", 1)])])
    exs = build(BuildDataConfig(episodes=[str(src)], out=str(tmp_path / "d"), criteria="all"))
    stored = read_jsonl(tmp_path / "d" / DATA, TrainingExample)
    assert stored == exs
    assert [(ex.problem_id, ex.turn, ex.reward) for ex in stored] == [
        ("p1", 1, 0),
        ("p1", 2, 1),
        ("p2", 1, 1),
    ]
    assert (tmp_path / "d" / "config.json").exists()


def test_build_again_keeps_finished_data_and_rebuilds_changed_data(tmp_path):
    """A rerun (a resumed `rise run`) does not rewrite finished data; a collection that grew
    or other settings do."""
    src = write_collection(tmp_path / "c", [episode("p1")])
    config = BuildDataConfig(episodes=[str(src)], out=str(tmp_path / "d"))
    first = build(config)
    files = (tmp_path / "d" / DATA, tmp_path / "d" / "config.json")
    stamps = [f.stat().st_mtime_ns for f in files]
    assert build(config) == first
    assert [f.stat().st_mtime_ns for f in files] == stamps
    write_collection(src, [episode("p1"), episode("p2", answers=[("2", 1)])])
    assert len(build(config)) == 3
    assert len(read_jsonl(files[0], TrainingExample)) == 3
    build(BuildDataConfig(episodes=[str(src)], out=str(tmp_path / "d"), tau=1.0))
    assert read_jsonl(files[0], TrainingExample)[1].weight == pytest.approx(math.e)


def test_build_dedupe_removes_exact_duplicate_conversations(tmp_path):
    # p1-again repeats p1's two conversations and p3's one is p1's turn 1
    eps = [episode("p1"), episode("p1-again"), episode("p3", answers=[("3", 0)])]
    src = write_collection(tmp_path / "c", eps)
    deduped = build(BuildDataConfig(episodes=[str(src)], out=str(tmp_path / "d1")))
    assert [(ex.problem_id, ex.turn) for ex in deduped] == [("p1", 1), ("p1", 2)]
    kept = build(BuildDataConfig(episodes=[str(src)], out=str(tmp_path / "d2"), dedupe=False))
    assert len(kept) == 5
    assert len(read_jsonl(tmp_path / "d2" / DATA, TrainingExample)) == 5


def test_build_concatenates_several_sources(tmp_path):
    a = write_collection(tmp_path / "a", [episode("p1", answers=[("2", 1)])])
    b = write_collection(tmp_path / "b", [episode("p2", answers=[("4", 0), ("5", 0)])])
    sources = [str(a), str(b / "episodes.jsonl")]  # a folder or its file
    exs = build(BuildDataConfig(episodes=sources, out=str(tmp_path / "d"), dedupe=False))
    assert [(ex.problem_id, ex.turn) for ex in exs] == [("p1", 1), ("p2", 1), ("p2", 2)]


def test_build_with_nothing_kept_raises(tmp_path):
    src = write_collection(tmp_path / "c", [episode("p1", answers=[("3", 0), ("4", 0)])])
    with pytest.raises(RiseError, match="kept no example"):
        build(BuildDataConfig(episodes=[str(src)], out=str(tmp_path / "d"), criteria="success"))
    assert not (tmp_path / "d" / DATA).exists()


def test_build_missing_episodes_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(RiseError, match="does not exist") as info:
        build(BuildDataConfig(episodes=[str(missing)], out=str(tmp_path / "d")))
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"criteria": "nope"}, "criteria must be one of all, better, best, success"),
        ({"tau": 0}, "tau must be positive"),
        ({"tau": -0.4}, "tau must be positive"),
        ({"episodes": []}, "at least one collection"),
        ({"keep_ratio": -1}, "keep_ratio must be 0 or more"),
        ({"progress_bonus": -0.5}, "progress_bonus must be 0 or more"),
    ],
)
def test_build_data_config_validation(kwargs, message):
    with pytest.raises(RiseError, match=message):
        BuildDataConfig(**{"episodes": ["c"], "out": "d", **kwargs})


def with_keep_state(ep: CollectedEpisode) -> CollectedEpisode:
    """`ep` (solved at turn 1) with the keep state `rise collect --keep-states` records."""
    first = ep.turns[0]
    answer = first.chosen_attempt
    messages = [*first.messages, {"role": "assistant", "content": answer.response}, RETRY]
    keep_state = CollectedTurn(index=2, messages=messages, attempts=[answer], chosen=0, source=KEEP)
    return CollectedEpisode(problem_id=ep.problem_id, turns=[first, keep_state])


def test_keep_states_become_examples_that_keep_the_answer():
    ep = with_keep_state(episode("k", answers=[("2", 1)]))
    first, kept = examples_from_episode(ep, "all", 0.4)
    assert (kept.turn, kept.reward, kept.source) == (2, 1, KEEP)
    assert kept.messages[-1] == kept.messages[1] == {"role": "assistant", "content": "\\boxed{2}"}
    assert kept.messages[-2] == RETRY
    assert kept.weight == pytest.approx(math.exp(2.5))
    assert first.source == "policy"
    assert [ex.source for ex in examples_from_episode(ep, "better", 0.4)] == ["policy"]


@pytest.mark.parametrize(
    ("keeps", "repairs", "ratio", "kept"),
    [(3, 2, 1.0, 2), (3, 2, 0.5, 1), (1, 2, 1.0, 1), (3, 2, 0.0, 0), (3, 0, 1.0, 0), (4, 3, 2, 4)],
)
def test_keep_ratio_caps_keep_states_per_repair(tmp_path, keeps, repairs, ratio, kept):
    solved = [with_keep_state(episode(f"k{i}", answers=[("2", 1)])) for i in range(keeps)]
    repaired = [episode(f"r{i}") for i in range(repairs)]  # wrong, then right: a repair
    src = write_collection(tmp_path / "c", solved + repaired)
    settings = dict(episodes=[str(src)], keep_ratio=ratio, dedupe=False)  # all ask 1 + 1
    exs = build(BuildDataConfig(**settings, out=str(tmp_path / "d")))
    assert sum(ex.source == KEEP for ex in exs) == kept
    assert sum(ex.turn == 1 for ex in exs) == keeps + repairs  # first attempts all stay
    again = build(BuildDataConfig(**settings, out=str(tmp_path / "e")))
    assert again == exs  # the same keep states every time


@pytest.mark.parametrize(
    ("answers", "bonus", "weights"),
    [
        ([("3", 0), ("2", 1)], 0.0, [1.0, math.exp(1 / 0.4)]),  # the reference
        ([("3", 0), ("2", 1)], 2.0, [1.0, math.exp(3 / 0.4)]),  # a repair: 1 + 2 * (1 - 0)
        ([("3", 0), ("4", 0)], 2.0, [1.0, 1.0]),  # no progress, no bonus
        ([(None, -1), ("4", 0)], 1.0, [math.exp(-1 / 0.4), math.exp(1 / 0.4)]),  # 0 + 1 * 1
        ([("2", 1)], 2.0, [math.exp(1 / 0.4)]),  # the first turn is never shaped
    ],
)
def test_progress_bonus_shapes_later_turns(answers, bonus, weights):
    exs = examples_from_episode(episode(answers=answers), "all", 0.4, progress_bonus=bonus)
    assert [ex.weight for ex in exs] == pytest.approx(weights)
    assert [ex.reward for ex in exs] == [r for _, r in answers]  # the stored reward is r_t


def test_progress_bonus_keeps_a_kept_answer_at_its_own_weight():
    ep = with_keep_state(episode("k", answers=[("2", 1)]))
    assert [ex.weight for ex in examples_from_episode(ep, "all", 0.4, 2.0)] == pytest.approx(
        [math.exp(2.5)] * 2
    )
