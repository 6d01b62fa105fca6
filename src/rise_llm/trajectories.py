"""The trajectory browser's data: what happened over each episode's turns, and its attempts.

Only the no-oracle episodes are browsed (the oracle ones are their prefixes in a default
evaluation, and a parallel sample is one turn). Each episode gets the tags of `FILTERS`, which
the report's filters count and select:

- `fixed@t`: wrong at turn t-1, right at turn t (`fixed` at any turn);
- `broke`: right at some turn and wrong at the next (a retry message broke a right answer);
- `stuck`: the same wrong extracted answer at two consecutive turns;
- `never`: wrong at every turn; `always`: right at every turn.

The attempts (response, extracted answer, reward, and the feedback the retry message after it
gave, README "Feedback between attempts") travel gzip-compressed and base64-encoded
(`pack`), one blob for the problems and one per model, which the page unpacks only when the
browser is opened: a 7B model's 1000-token responses on 1000 problems stay a file a browser
opens (README "Report"). Each attempt after the first carries its line diff against the
attempt before it (`line_diff`, difflib's opcodes).
"""

from __future__ import annotations

import base64
import difflib
import gzip
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rise_llm.records import Episode, Turn

FILTERS = {
    "fixed": "fixed at some turn (wrong, then right)",
    "broke": "broke a right answer (right, then wrong)",
    "stuck": "stuck: the same wrong answer at two turns in a row",
    "never": "never solved",
    "always": "always right",
}
"""The browser's filters (besides `fixed@t` for each turn t >= 2), in display order."""

DIFF_OPS = {"equal": 0, "replace": 1, "delete": 2, "insert": 3}


def episode_tags(turns: Sequence[Turn]) -> list[str]:
    """The tags (module docstring) of one no-oracle episode's turns.

    >>> from rise_llm.records import Turn
    >>> def turn(answer, reward):
    ...     return Turn(index=0, messages=[], response="", answer=answer, reward=reward)
    >>> episode_tags([turn("3", 0), turn("3", 0), turn("5", 1), turn("4", 0)])
    ['fixed@3', 'fixed', 'broke', 'stuck']
    """
    right = [t.correct for t in turns]
    tags = [f"fixed@{t + 1}" for t in range(1, len(turns)) if right[t] and not right[t - 1]]
    if tags:
        tags.append("fixed")
    if any(right[t - 1] and not right[t] for t in range(1, len(turns))):
        tags.append("broke")
    if any(
        not right[t - 1]
        and not right[t]
        and turns[t].answer is not None
        and turns[t].answer == turns[t - 1].answer
        for t in range(1, len(turns))
    ):
        tags.append("stuck")
    if not any(right):
        tags.append("never")
    if all(right):
        tags.append("always")
    return tags


def line_diff(before: str, after: str) -> list[int]:
    """difflib's opcodes turning the lines of `before` into those of `after`, flattened to
    [op, i1, i2, j1, j2, ...] with op from `DIFF_OPS` (the page draws them).

    >>> line_diff("a\\nb\\nc", "a\\nB\\nc")
    [0, 0, 1, 0, 1, 1, 1, 2, 1, 2, 0, 2, 3, 2, 3]
    """
    matcher = difflib.SequenceMatcher(None, before.split("\n"), after.split("\n"), autojunk=False)
    return [x for op in matcher.get_opcodes() for x in (DIFF_OPS[op[0]], *op[1:])]


def question_of(episode: Episode) -> str:
    """The problem as the model saw it: the last user message before the first attempt."""
    users = [m["content"] for m in episode.turns[0].messages if m["role"] == "user"]
    return users[-1] if users else ""


def pack(value: Any) -> str:
    """`value` as JSON, gzip-compressed and base64-encoded (the page's `unpack` reverses it)."""
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def browser_data(
    models: Mapping[str, Sequence[Episode]],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The browser's index (problem ids, and per model each episode's problem, rewards and
    tags: enough to count and list without unpacking) and its packed blobs ("problems" and
    one per model: every attempt's response, answer, reward, line diff and feedback)."""
    ids: dict[str, int] = {}
    questions: list[str] = []
    index: dict[str, Any] = {"models": {}}
    blobs: dict[str, str] = {}
    for m, (label, episodes) in enumerate(models.items()):
        no_oracle = [ep for ep in episodes if ep.mode == "no_oracle"]
        entry: dict[str, list] = {"problem": [], "rewards": [], "tags": []}
        attempts = []
        for ep in no_oracle:
            if ep.problem_id not in ids:
                ids[ep.problem_id] = len(ids)
                questions.append(question_of(ep))
            entry["problem"].append(ids[ep.problem_id])
            entry["rewards"].append([t.reward for t in ep.turns])
            entry["tags"].append(episode_tags(ep.turns))
            attempts.append(
                [
                    [
                        t.response,
                        t.answer,
                        t.reward,
                        line_diff(ep.turns[i - 1].response, t.response) if i else [],
                        t.feedback,
                    ]
                    for i, t in enumerate(ep.turns)
                ]
            )
        index["models"][label] = entry | {"blob": f"model-{m}"}
        blobs[f"model-{m}"] = pack(attempts)
    index["ids"] = list(ids)
    blobs["problems"] = pack(questions)
    return index, blobs
