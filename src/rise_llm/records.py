"""Typed records passed between pipeline stages, and their JSON Lines storage.

Every stored line carries `schema_version` so that files written by one release can be checked
when read by another. Readers name the file and line of any malformed record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rise_llm.errors import RiseError

SCHEMA_VERSION = 1

Message = dict[str, str]
"""A chat message: {"role": "system" | "user" | "assistant", "content": str}."""


@dataclass
class Problem:
    """One single-turn problem: the question and its ground-truth final answer."""

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    """What a verifier says of one response: the extracted answer and the reward.

    Reward follows METHOD.md: 1 correct, 0 wrong, -1 when no final answer can be extracted.
    `answer` is the canonical form of the extracted answer (None when there is none), so two
    responses with the same canonical answer vote for the same thing in a majority.
    `feedback` is what the environment tells the model about the response before its next
    attempt (the output of a failing visible test, the first wrong line of a solution); None
    when the verifier gives none, and the retry message is then the task's plain one. It must
    come from checks the model may see at test time, never from the hidden ones behind `reward`
    (README "Feedback").
    """

    answer: str | None
    reward: int
    feedback: str | None = None

    @property
    def correct(self) -> bool:
        return self.reward == 1


@dataclass
class Turn:
    """One attempt: the messages the model saw, what it wrote, and the verifier's verdict
    (`feedback`: what the next retry message told the model of it, `Verdict.feedback`)."""

    index: int
    messages: list[Message]
    response: str
    answer: str | None
    reward: int
    num_tokens: int = 0
    finish_reason: str = "stop"
    feedback: str | None = None

    @property
    def correct(self) -> bool:
        return self.reward == 1


@dataclass
class Episode:
    """The attempts at one problem in one mode.

    mode is "no_oracle" (K turns, retry message after every turn), "oracle" (stops at the first
    correct turn) or "parallel" (one independent turn-1 sample; `sample` numbers them).
    """

    problem_id: str
    mode: str
    turns: list[Turn]
    sample: int = 0

    @property
    def solved(self) -> bool:
        return any(t.correct for t in self.turns)


@dataclass
class Attempt:
    """One sampled response at a collection state, with its verdict.

    `degenerate` marks a response dropped by the repetition filter (METHOD.md); it is kept in
    the file so that nothing sampled is lost, but it is never chosen or trained on.
    `plain_reward` is the task's own reward when the collection judged with another verifier
    (`reward` is then that verifier's), None otherwise. `feedback` is the task's feedback on
    the response (`Verdict.feedback`), which the retry message after it shows.
    """

    response: str
    answer: str | None
    reward: int
    num_tokens: int = 0
    degenerate: bool = False
    plain_reward: int | None = None
    feedback: str | None = None

    @property
    def correct(self) -> bool:
        return self.reward == 1


KEEP = "keep"
"""The source of a keep state (`CollectedTurn.source`, `TrainingExample.source`)."""


@dataclass
class CollectedTurn:
    """A state reached during collection and every response sampled there.

    messages: what the model saw; attempts: all samples (1 on-policy, or N improved ones);
    chosen: index of the attempt the episode continued from (-1 if every sample was degenerate);
    source: "policy" (the learner's on-policy attempt), "self" (best-of-N from the learner),
    "teacher" (best-of-N from the teacher model) or "keep" (the retry message after a correct
    first attempt, whose one attempt is that same answer: `rise collect --keep-states`).
    """

    index: int
    messages: list[Message]
    attempts: list[Attempt]
    chosen: int
    source: str

    @property
    def chosen_attempt(self) -> Attempt | None:
        return self.attempts[self.chosen] if self.chosen >= 0 else None


@dataclass
class CollectedEpisode:
    """The collection rollout of one problem: a path of states with their samples."""

    problem_id: str
    turns: list[CollectedTurn]


@dataclass
class TrainingExample:
    """One RISE training example: the conversation whose last (assistant) turn is trained.

    weight = exp(reward / tau) (reward-weighted regression, METHOD.md "Training data").
    source: the collected turn's source ("policy", "self", "teacher", "keep"), "" when unknown.
    """

    messages: list[Message]
    reward: int
    weight: float
    turn: int
    problem_id: str
    source: str = ""


R = TypeVar(
    "R", Problem, Turn, Episode, Verdict, Attempt, CollectedTurn, CollectedEpisode, TrainingExample
)


def to_json(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict, tagged with the schema version."""
    return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(record)}


def from_json(cls: type[R], data: dict[str, Any], where: str = "record") -> R:
    """Build a record of type `cls` from a dict, with an error naming `where` if it does not fit."""
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RiseError(
            f"{where}: schema_version {version} is not supported (this release reads "
            f"{SCHEMA_VERSION}); regenerate the file with this version of rise-llm"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - data.keys())
    if missing:
        raise RiseError(f"{where}: missing field(s) {', '.join(missing)} for a {cls.__name__}")
    kwargs = {k: v for k, v in data.items() if k in names}
    if cls is Episode:
        kwargs["turns"] = [from_json(Turn, t, where) for t in kwargs["turns"]]
    elif cls is CollectedEpisode:
        kwargs["turns"] = [from_json(CollectedTurn, t, where) for t in kwargs["turns"]]
    elif cls is CollectedTurn:
        kwargs["attempts"] = [from_json(Attempt, a, where) for a in kwargs["attempts"]]
    return cls(**kwargs)


def write_jsonl(path: str | Path, records: Iterable[Any], append: bool = False) -> None:
    """Write records as JSON Lines; flushed and fsynced so a kill cannot leave half a batch.

    A whole file is written beside `path` and renamed over it (`write_atomic`), so a full disk
    or a kill leaves the old file or none, never a short one; an appended batch cut short is
    a torn last line, which `read_jsonl_for_resume` drops.
    """
    lines = jsonl_text(records)
    if not append:
        write_atomic(path, lines)
        return
    with _naming(path), open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


def jsonl_text(records: Iterable[Any]) -> str:
    """Records as the JSON Lines text `write_jsonl` stores, one record a line."""
    return "".join(json.dumps(to_json(r), ensure_ascii=False) + "\n" for r in records)


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed over it: readers (and reruns)
    see the old content or the new, never half of it (a full disk, a kill)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with _naming(path), open(partial, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming(path: Path | str) -> Iterator[None]:
    """A write's OSError (a full disk says no file) names the file it was writing."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def iter_jsonl(
    path: str | Path, torn_tail_ok: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-empty line; a malformed line names file:line.

    With `torn_tail_ok`, a last line with no newline that does not parse (a write cut short by
    a kill) is skipped instead of raising, so a resumed run can keep everything before it.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if torn_tail_ok and not line.endswith("\n"):
                    return
                raise RiseError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); fix or delete the line"
                ) from None
            if not isinstance(obj, dict):
                raise RiseError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


def read_jsonl(path: str | Path, cls: type[R], torn_tail_ok: bool = False) -> list[R]:
    """Read a JSON Lines file of records of type `cls` (see `iter_jsonl` for `torn_tail_ok`)."""
    return [
        from_json(cls, obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path, torn_tail_ok)
    ]


def read_jsonl_for_resume(path: str | Path, cls: type[R]) -> list[R]:
    """Records already written by an interrupted run; a torn last line is cut off the file.

    The file is rewritten only when its end was torn, so finished files keep their timestamps.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = read_jsonl(path, cls, torn_tail_ok=True)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
        torn = size > 0 and f.read(1) != b"\n"
    if torn:
        write_jsonl(path, records)
    return records


def read_stage_outputs(sources: Sequence[str], filename: str, cls: type[R], hint: str) -> list[R]:
    """Records from several stage folders (or files directly), concatenated in order.

    A folder is read as `folder/filename`; a missing or empty one is an error that says `hint`
    (the command that makes it).
    """
    records: list[R] = []
    for source in sources:
        path = Path(source)
        path = path / filename if path.is_dir() else path
        if not path.exists():
            raise RiseError(f"{path} does not exist; {hint}")
        found = read_jsonl(path, cls)
        if not found:
            raise RiseError(f"{path} holds no records; {hint}")
        records.extend(found)
    return records
