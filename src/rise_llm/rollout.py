"""Multi-turn episodes: attempt, verifier reward, feedback, next attempt (METHOD.md, "Episode").

Turn t of every still-running episode is one batched engine call, and its responses are judged
together (`judging.judge_all`: a pool when the task's checks run programs). In oracle mode an
episode stops at its first correct attempt; without the oracle it always runs all turns. The
retry message after an attempt is the task's, with the verifier's feedback on that attempt when
it gives one (`Verdict.feedback`); feedback comes from checks the model may see at test time,
never from the reward (README "Feedback"), so it is the same in both modes.

So an oracle episode is a prefix of a no-oracle one (the same contexts up to its first correct
attempt), and a no-oracle turn 1 is a turn-1 sample like the parallel ones: `oracle_prefixes`
and `with_first_turns` read those modes off the no-oracle episodes, with the same distribution
as sampling them on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rise_llm.engines.base import Completion, Engine, SamplingParams
from rise_llm.judging import judge_all, parallel_checks
from rise_llm.records import Episode, Message, Problem, Turn, Verdict
from rise_llm.seeds import problem_key, turn_seed
from rise_llm.tasks.base import Task

MODES = ("no_oracle", "oracle", "parallel")
DEFAULT_CONTEXT_WINDOW = 2  # the reference's, for models trained on two-turn data


def default_context_window(turns: int) -> int:
    """W when none is given for K=`turns` evaluation or serving turns: 2, at most K."""
    return min(DEFAULT_CONTEXT_WINDOW, turns)


class Prompt(Protocol):
    """What opens an episode and follows each attempt: a task's `PromptFormat`, or a served
    request's messages with the task's retry message (`serve.py`)."""

    def first_messages(self, problem: Problem) -> list[Message]: ...

    def retry_message(self, problem: Problem, feedback: str | None = None) -> Message: ...


Shown = tuple[str, str | None]
"""An earlier attempt as the model sees it again: its response and the feedback on it."""


def context(
    prompt: Prompt, problem: Problem, history: Sequence[Shown], window: int
) -> list[Message]:
    """The messages the model sees before its next attempt, given its earlier attempts.

    The first prompt plus only the most recent `window - 1` attempts, each followed by the
    retry message with the feedback it got (METHOD.md: a model never sees a longer history
    than it was trained on). window=1 shows no history.
    """
    messages = prompt.first_messages(problem)
    kept = history[max(0, len(history) - (window - 1)) :] if window > 1 else []
    for response, feedback in kept:
        messages.append({"role": "assistant", "content": response})
        messages.append(prompt.retry_message(problem, feedback))
    return messages


# (engine, samples) that answer turn t
Sampler = Callable[[int], tuple[Engine, int]]
# judges one response of a problem: a Verdict, or whatever the step reads (collection: two)
Judge = Callable[[Problem, str], Any]
# records turn t of episode i (its messages, completions and their judgements) and returns the
# attempt the episode goes on from, with its feedback, or None when it stops there
Step = Callable[[int, int, list[Message], list[Completion], list[Any]], Shown | None]


def play_turns(
    prompt: Prompt,
    problems: Sequence[Problem],
    turns: int,
    window: int,
    params: SamplingParams,
    sampler: Sampler,
    judge: Judge,
    step: Step,
    desc: str,
    workers: int = 1,
) -> None:
    """The one episode loop: collection, evaluation and `rise serve --rise-turns` all play it.

    Turn t of every running episode is one batched call of `sampler(t)`'s engine for its number
    of samples, seeded `turn_seed(params.seed, t)`, each episode's samples keyed by its problem
    (`seeds.problem_key`: the same draws in any batch, chunk or shard). All its completions are
    then judged, `workers` at a time; the context shows the attempts `step` returned for
    earlier turns with their feedback, within `window`. Which completion an episode goes on
    from (one sample, best-of-N, a teacher's) and when it stops (oracle, a solved state) is
    `step`'s.
    """
    shown: list[list[Shown]] = [[] for _ in problems]
    running = list(range(len(problems)))
    for t in range(1, turns + 1):
        if not running:
            break
        convs = [context(prompt, problems[i], shown[i], window) for i in running]
        engine, n = sampler(t)
        outs = engine.generate(
            convs,
            n=n,
            params=params.with_seed(turn_seed(params.seed, t)),
            desc=f"{desc} turn {t}",
            keys=[problem_key(problems[i].id) for i in running],
        )
        pairs = [(problems[i], c.text) for i, cs in zip(running, outs, strict=True) for c in cs]
        judgements = iter(judge_all(judge, pairs, workers, f"{desc} turn {t} checks"))
        still_running = []
        for i, messages, completions in zip(running, convs, outs, strict=True):
            judged = [next(judgements) for _ in completions]
            attempt = step(i, t, messages, completions, judged)
            if attempt is not None:
                shown[i].append(attempt)
                still_running.append(i)
        running = still_running


def judged_turn(
    index: int, messages: list[Message], completion: Completion, verdict: Verdict
) -> Turn:
    """A sampled completion as a Turn, with the verifier's answer, reward and feedback."""
    return Turn(
        index=index,
        messages=messages,
        response=completion.text,
        answer=verdict.answer,
        reward=verdict.reward,
        num_tokens=completion.num_tokens,
        finish_reason=completion.finish_reason,
        feedback=verdict.feedback,
    )


def sequential_episodes(
    engine: Engine,
    task: Task,
    problems: Sequence[Problem],
    turns: int,
    window: int,
    params: SamplingParams,
    oracle: bool,
) -> list[Episode]:
    """Run up to `turns` sequential attempts per problem; turn t of all episodes is one batch."""
    mode = "oracle" if oracle else "no_oracle"
    episodes = [Episode(problem_id=p.id, mode=mode, turns=[]) for p in problems]

    def step(
        i: int, t: int, messages: list[Message], completions: list[Completion], verdicts: list
    ) -> Shown | None:
        turn = judged_turn(t, messages, *completions, *verdicts)
        episodes[i].turns.append(turn)
        return None if oracle and turn.correct else (turn.response, turn.feedback)

    play_turns(
        task.prompt,
        problems,
        turns,
        window,
        params,
        lambda t: (engine, 1),
        task.verify,
        step,
        mode,
        parallel_checks(task),
    )
    return episodes


def parallel_episodes(
    engine: Engine, task: Task, problems: Sequence[Problem], samples: int, params: SamplingParams
) -> list[Episode]:
    """`samples` independent turn-1 attempts per problem, as one batched call (the baselines)."""
    convs = [task.prompt.first_messages(p) for p in problems]
    keys = [problem_key(p.id) for p in problems]
    outs = engine.generate(convs, n=samples, params=params, desc="parallel turn 1", keys=keys)
    pairs = [(p, c.text) for p, cs in zip(problems, outs, strict=True) for c in cs]
    verdicts = iter(judge_all(task.verify, pairs, parallel_checks(task), "parallel checks"))
    episodes = []
    for problem, messages, completions in zip(problems, convs, outs, strict=True):
        for k, completion in enumerate(completions):
            turn = judged_turn(1, messages, completion, next(verdicts))
            episodes.append(Episode(problem_id=problem.id, mode="parallel", turns=[turn], sample=k))
    return episodes


def oracle_prefixes(no_oracle: Sequence[Episode]) -> list[Episode]:
    """The oracle episodes of `no_oracle` ones: each cut after its first correct attempt."""
    oracle = []
    for ep in no_oracle:
        solved_at = next((i for i, t in enumerate(ep.turns) if t.correct), len(ep.turns) - 1)
        oracle.append(
            Episode(problem_id=ep.problem_id, mode="oracle", turns=ep.turns[: solved_at + 1])
        )
    return oracle


def with_first_turns(no_oracle: Sequence[Episode], extra: Sequence[Episode]) -> list[Episode]:
    """Parallel episodes: each no-oracle turn 1 as sample 0, then the `extra` turn-1 samples of
    the same problems renumbered 1, 2, ...; in the no-oracle episodes' problem order."""
    by_problem: dict[str, list[Episode]] = {}
    for ep in extra:
        by_problem.setdefault(ep.problem_id, []).append(ep)
    parallel = []
    for ep in no_oracle:
        firsts = [ep.turns[0], *(e.turns[0] for e in by_problem.get(ep.problem_id, []))]
        parallel += [
            Episode(problem_id=ep.problem_id, mode="parallel", turns=[turn], sample=k)
            for k, turn in enumerate(firsts)
        ]
    return parallel
