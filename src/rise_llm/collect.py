"""`rise collect`: on-policy multi-turn rollouts with improved responses (METHOD.md, "Data
collection").

Each problem's episode runs in oracle mode for up to T turns. Turn 1 is the learner's own
on-policy attempt; at every later state the improved response is the best of N samples, from
the learner itself (self-distillation) or from a teacher model through the same engine protocol
(distillation). The episode continues from the chosen response and stops at the first correct
one. Every sampled response is kept with its reward, so `build-data` can rebuild the training
set under other criteria without sampling again.

Three opt-in levers change what the improved responses teach (issue "self-correction"; the
defaults are the reference): `verifier` judges collection with another verifier than the
task's (arith's `strict` also checks every line, so a right total reached through wrong lines
is not a target); `selection: closest` keeps, among the samples of the best reward, the one
most similar to the previous attempt (a repair rather than a fresh attempt, `edits.py`);
`keep_states` records, after each correct first attempt, the state the no-oracle evaluation
lives in ("incorrect" after a correct answer) with that same answer as its target.

Problems are processed in chunks; turn t of all episodes of a chunk is one batched engine call.
Each finished chunk is appended to `episodes.jsonl`, so a rerun after a kill skips the problems
already collected: nothing is lost or duplicated. `--shard I/N` collects only part I of N of the
problems, so N processes or hosts can share a collection; `rise merge` joins their folders.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rise_llm import edits
from rise_llm.engines.base import BATCH_SIZE, RESUME_FREE, Completion, Engine, SamplingParams
from rise_llm.engines.load import stage_engine
from rise_llm.errors import (
    RiseError,
    check_at_least,
    check_context_window,
    check_device,
    check_sampling,
)
from rise_llm.judging import check_ready, parallel_checks
from rise_llm.progress import console
from rise_llm.provenance import check_out, check_settings, write_run_record
from rise_llm.records import (
    KEEP,
    Attempt,
    CollectedEpisode,
    CollectedTurn,
    Message,
    Problem,
    Verdict,
    read_jsonl_for_resume,
    write_jsonl,
)
from rise_llm.report import collection_table, stdout
from rise_llm.rollout import Shown, context, play_turns
from rise_llm.tasks import get_task
from rise_llm.tasks.base import Task
from rise_llm.verifiers import stage_verifier

EPISODES = "episodes.jsonl"
SELECTIONS = ("first", "closest")
WHOLE = "0/1"
"""The shard of an unsharded collection: part 0 of 1."""

T = TypeVar("T")


@dataclass
class CollectConfig:
    """Settings of `rise collect`.

    Args:
        model: the learner (a model folder, .gguf file or Hub id, or openai:MODEL[@URL] for
            a model behind an OpenAI-compatible server).
        chat_template: a Jinja file or text replacing the learner's chat template.
        teacher: a stronger model for the improved responses (distillation); None means
            best-of-N from the learner itself (self-distillation). It keeps its own template.
            `openai:gpt-3.5-turbo` is the paper's teacher (API key in $OPENAI_API_KEY).
        task: the task whose training problems are collected (arith, gsm8k, math, jsonl, ...).
        task_options: the task's options, e.g. {"max_steps": 5} for arith.
        split: the split the problems come from.
        limit: collect the first `limit` problems of the split (all when None).
        shard: I/N collects only part I of N of those problems (positions I, I+N, I+2N, ...,
            counted from 0), for N processes or hosts; join the N out folders with `rise merge`.
        turns: T, the most turns per episode (reference: 2).
        samples: N, samples per improved state, the best kept (reference: 16).
        context_window: W for the prompts during collection (default: T, the whole episode).
        temperature: sampling temperature (reference: 1.0).
        top_p: nucleus sampling threshold (1.0: off).
        max_new_tokens: most tokens per response (None: the task's default).
        seed: sampling seed; the same seed and config give the same episodes.
        max_word_repeats: a response where one word appears more often is degenerate and is
            never chosen (reference: 150).
        verifier: judges the samples instead of the task's verifier (rewards, choice, and so
            the training weights): a name the task offers (arith: `strict`, every line right
            and chained) or any `verifier` form of `verifiers.py` (module:function,
            file.py:function, an entry point). None is the task's own; evaluation always uses
            the task's own, so accuracy stays comparable. Each sample also records the task's
            own reward (`plain_reward`) so the summary can count what the verifier demoted.
        selection: which of the samples of the best reward continues the episode: `first`
            (reference) or `closest` (most similar to the previous attempt, `edits.py`).
        keep_states: after each correct first attempt, also record a state with the retry
            message and that same attempt as its target (source `keep`): it teaches to keep a
            right answer when told it is wrong. `rise build-data --keep-ratio` caps how many
            are trained per repair.
        chunk_size: problems per resumable chunk.
        device: "auto" (CUDA when present, else CPU), "cpu" or "cuda".
        dtype: "auto" (bfloat16 on a GPU that has it, else float32) or a dtype name.
        batch_size: most sequences the engine generates together.
        engine_options: options of the openai engine, for openai: models (max_concurrency,
            timeout, max_retries, api_key_env).
        out: output folder (episodes.jsonl, config.json).
    """

    model: str
    out: str
    chat_template: str | None = None
    teacher: str | None = None
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    limit: int | None = 2000
    shard: str = WHOLE
    turns: int = 2
    samples: int = 16
    context_window: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    seed: int = 0
    max_word_repeats: int = 150
    verifier: str | None = None
    selection: str = "first"
    keep_states: bool = False
    chunk_size: int = 512
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = BATCH_SIZE
    engine_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_at_least("collect", 1, turns=self.turns, samples=self.samples, limit=self.limit)
        check_at_least("collect", 1, chunk_size=self.chunk_size, batch_size=self.batch_size)
        # 0 would mark every response degenerate, so no episode could go on
        check_at_least("collect", 1, max_word_repeats=self.max_word_repeats)
        check_sampling("collect", self.temperature, self.top_p, self.max_new_tokens)
        check_device("collect", self.device)
        if self.context_window is None:
            self.context_window = self.turns
        check_context_window("collect", self.context_window, self.turns)
        parse_shard(self.shard)
        if self.selection not in SELECTIONS:
            raise RiseError(
                f"collect: selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}"
            )
        if self.keep_states and self.context_window < 2:
            raise RiseError(
                "collect: keep_states needs context_window >= 2 (a keep state shows the answer "
                f"it keeps), got {self.context_window}; raise turns or context_window"
            )


def parse_shard(spec: str) -> tuple[int, int]:
    """(I, N) from "I/N": part I of N, counted from 0.

    >>> parse_shard("2/8")
    (2, 8)
    """
    index, _, count = spec.partition("/")
    if not (index.isdigit() and count.isdigit() and int(count) >= 1):
        raise RiseError(
            f"collect: shard must be I/N, part I of N counted from 0 (e.g. 0/4), got {spec!r}"
        )
    i, n = int(index), int(count)
    if i >= n:
        raise RiseError(
            f"collect: shard {spec} does not exist; the {n} shards are 0/{n} to {n - 1}/{n}"
        )
    return i, n


def shard_problems(items: Sequence[T], spec: str) -> list[T]:
    """The items of shard `spec`, round robin so every shard gets an even mix of the list.

    >>> shard_problems(list("abcdefg"), "1/3")
    ['b', 'e']
    """
    i, n = parse_shard(spec)
    return list(items[i::n])


def is_degenerate(text: str, max_word_repeats: int = 150) -> bool:
    """True when one whitespace-separated word occurs more than `max_word_repeats` times."""
    counts = Counter(text.split())
    return bool(counts) and max(counts.values()) > max_word_repeats


def choose(attempts: list[Attempt], previous: str | None = None, selection: str = "first") -> int:
    """Index of the best non-degenerate attempt, else -1.

    Best is the highest reward; among those, the earliest (`first`, the reference) or the one
    most similar to the `previous` attempt (`closest`; the earliest on ties).
    """
    valid = [i for i, a in enumerate(attempts) if not a.degenerate]
    if not valid:
        return -1
    top = max(attempts[i].reward for i in valid)
    best = [i for i in valid if attempts[i].reward == top]
    if selection == "closest" and previous is not None and len(best) > 1:
        return best[edits.closest([attempts[i].response for i in best], previous)]
    return best[0]


def keep_turn(task: Task, problem: Problem, first: CollectedTurn, window: int) -> CollectedTurn:
    """The state after a correct first attempt with the retry message, targeting that attempt."""
    attempt = first.chosen_attempt
    messages = context(task.prompt, problem, [(attempt.response, attempt.feedback)], window)
    return CollectedTurn(index=2, messages=messages, attempts=[attempt], chosen=0, source=KEEP)


def collect_chunk(
    learner: Engine,
    improver: Engine,
    task: Task,
    problems: list[Problem],
    config: CollectConfig,
    params: SamplingParams,
) -> list[CollectedEpisode]:
    """Roll out one chunk of problems; turn t of all its running episodes is one batch."""
    episodes = [CollectedEpisode(problem_id=p.id, turns=[]) for p in problems]
    source = "teacher" if config.teacher else "self"
    by_stage = stage_verifier(task, config.verifier)

    def sampler(t: int) -> tuple[Engine, int]:
        return (learner, 1) if t == 1 else (improver, config.samples)

    def judge(problem: Problem, response: str) -> tuple[Verdict, Verdict]:
        """The stage's verdict (reward, choice) and the task's own (its reward, the feedback
        the environment gives: the same verdict when the stage has no verifier of its own)."""
        verdict = by_stage(problem, response)
        return verdict, task.verify(problem, response) if config.verifier else verdict

    def step(
        i: int,
        t: int,
        messages: list[Message],
        completions: list[Completion],
        verdicts: list[tuple[Verdict, Verdict]],
    ) -> Shown | None:
        attempts = []
        for c, (verdict, own) in zip(completions, verdicts, strict=True):
            attempts.append(
                Attempt(
                    response=c.text,
                    answer=verdict.answer,
                    reward=verdict.reward,
                    num_tokens=c.num_tokens,
                    degenerate=is_degenerate(c.text, config.max_word_repeats),
                    plain_reward=own.reward if config.verifier else None,
                    feedback=own.feedback,
                )
            )
        turns = episodes[i].turns
        previous = turns[-1].chosen_attempt.response if turns else None
        chosen = choose(attempts, previous, config.selection)
        turns.append(
            CollectedTurn(
                index=t,
                messages=messages,
                attempts=attempts,
                chosen=chosen,
                source="policy" if t == 1 else source,
            )
        )
        if chosen >= 0 and attempts[chosen].reward != 1:
            return attempts[chosen].response, attempts[chosen].feedback
        if chosen >= 0 and t == 1 and config.keep_states:
            turns.append(keep_turn(task, problems[i], turns[0], config.context_window))
        return None

    play_turns(
        task.prompt,
        problems,
        config.turns,
        config.context_window,
        params,
        sampler,
        judge,
        step,
        "collect",
        parallel_checks(task),
    )
    return episodes


def _settings(config: CollectConfig) -> dict[str, Any]:
    settings = dataclasses.asdict(config)
    if settings["shard"] == WHOLE:  # unsharded folders record no shard, as before sharding
        del settings["shard"]
    return {k: v for k, v in settings.items() if k not in ("out", "chunk_size")}


def _plan(
    config: CollectConfig,
) -> tuple[Task, list[Problem], list[CollectedEpisode], list[Problem]]:
    """(task, this shard's problems, the episodes already collected, the problems left)."""
    check_out(config.out, "collect")
    task = get_task(config.task, **config.task_options)
    problems = task.problems(config.split, config.limit)
    mine = shard_problems(problems, config.shard)
    if not mine:
        raise RiseError(
            f"collect: shard {config.shard} has no problems, the split has only "
            f"{len(problems)}; use at most {len(problems)} shards"
        )
    out = Path(config.out)
    check_settings(out, _settings(config), "a collection", defaults=CollectConfig, free=RESUME_FREE)
    done = read_jsonl_for_resume(out / EPISODES, CollectedEpisode)
    have = {ep.problem_id for ep in done}
    return task, mine, done, [p for p in mine if p.id not in have]


def pending(config: CollectConfig) -> int:
    """How many problems `run(config)` has left to collect (0: it would sample nothing)."""
    return len(_plan(config)[3])


def run(
    config: CollectConfig, learner: Engine | None = None, teacher: Engine | None = None
) -> list[CollectedEpisode]:
    """Collect (or finish collecting) episodes into `config.out`; returns all of them."""
    out = Path(config.out)
    task, mine, done, todo = _plan(config)
    settings = _settings(config)
    path = out / EPISODES
    name = "collect" if config.shard == WHOLE else f"collect (shard {config.shard})"
    if not todo:
        console.print(f"{name}: all {len(mine)} problems already in {path}")
        return done
    check_ready(task)  # a code task without its sandbox stops before the model loads
    learner = learner or stage_engine(config)
    if config.teacher and teacher is None:
        teacher = stage_engine(config, config.teacher, chat_template=False)
    params = SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens or task.default_max_new_tokens,
        seed=config.seed,
    )
    if done:
        console.print(f"{name}: resuming, {len(done)} of {len(mine)} problems already done")
    start = time.perf_counter()
    for c in range(0, len(todo), config.chunk_size):
        chunk = todo[c : c + config.chunk_size]
        # every problem samples from its own streams (`seeds.problem_key`): a resumed run, a
        # shard or another chunk size draws what one unsharded run draws
        new = collect_chunk(learner, teacher or learner, task, chunk, config, params)
        if not (out / "config.json").exists():  # with the first episodes: see evaluate.run
            write_run_record(out, settings)
        write_jsonl(path, new, append=True)
        done.extend(new)
        console.print(
            f"{name}: {len(done)}/{len(mine)} problems "
            f"({(c + len(chunk)) / (time.perf_counter() - start):.1f} problems/s)"
        )
    print_collection_summary(done)
    return done


def print_collection_summary(episodes: list[CollectedEpisode]) -> None:
    """Per turn: states reached, samples drawn, mean reward, and how many states got solved."""
    stdout.print(collection_table(episodes))
