"""`rise build-data`: turn collected episodes into weighted training examples (METHOD.md,
"Training data").

Every prefix of an episode that ends in an assistant turn is one example; only that last turn
is trained. Which examples are kept is the criterion:
- all: every turn;
- better: turns whose reward is higher than the previous turn's;
- best: turns no earlier turn of the episode beat;
- success: turns with reward 1.
The first attempt is kept under every criterion except `success`. Exact duplicates can be
removed. Each example's weight is exp(reward / tau), tau = 0.4 by default (r=1 -> 12.18,
r=0 -> 1.0, r=-1 -> 0.082): reward-weighted regression.

Two opt-in extras (issue "self-correction"; the defaults are the reference):
- keep states (collected with `rise collect --keep-states`: the retry message after a correct
  first attempt, targeting that same answer) are examples like any turn, at most `keep_ratio`
  of them per repair example (a later turn that is not a keep state), so that "never change
  anything" cannot dominate the data (SCoRe, arXiv 2409.12917, names that collapse);
- `progress_bonus` alpha shapes the reward of a later turn as SCoRe does,
  r_t + alpha * (r_t - r_(t-1)), before the weight exp(r / tau): a repair (0 -> 1) weighs more
  than a kept right answer (1 -> 1), and breaking a right answer (1 -> 0) less than a repeated
  wrong one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from rise_llm.errors import RiseError
from rise_llm.merge import read_collections
from rise_llm.progress import console
from rise_llm.provenance import check_out, read_run_config, write_run_record
from rise_llm.records import KEEP, CollectedEpisode, TrainingExample, jsonl_text, write_atomic
from rise_llm.report import stdout

CRITERIA = ("all", "better", "best", "success")
DATA = "data.jsonl"


@dataclass
class BuildDataConfig:
    """Settings of `rise build-data`.

    Args:
        episodes: collection folders (or their episodes.jsonl files); several are concatenated,
            e.g. the collections of all iterations so far.
        out: output folder for data.jsonl.
        criteria: which turns become examples: all, better, best or success.
        tau: temperature of the weights exp(reward / tau).
        dedupe: drop examples whose whole conversation is an exact duplicate of an earlier one.
        keep_ratio: the most keep-state examples per repair example (0 drops them all).
        progress_bonus: alpha of the shaped reward r_t + alpha * (r_t - r_(t-1)) of later turns
            (SCoRe uses alpha > 1); 0 is the reference.
    """

    episodes: list[str]
    out: str
    criteria: str = "all"
    tau: float = 0.4
    dedupe: bool = True
    keep_ratio: float = 1.0
    progress_bonus: float = 0.0

    def __post_init__(self) -> None:
        if self.criteria not in CRITERIA:
            raise RiseError(
                f"data: criteria must be one of {', '.join(CRITERIA)}, got {self.criteria!r}"
            )
        if self.tau <= 0:
            raise RiseError(f"data: tau must be positive, got {self.tau}")
        if not self.episodes:
            raise RiseError("build-data: give at least one collection folder or episodes file")
        if self.keep_ratio < 0:
            raise RiseError(f"data: keep_ratio must be 0 or more, got {self.keep_ratio}")
        if self.progress_bonus < 0:
            raise RiseError(f"data: progress_bonus must be 0 or more, got {self.progress_bonus}")


def rwr_weight(reward: float, tau: float = 0.4) -> float:
    """Reward-weighted regression weight exp(reward / tau).

    >>> round(rwr_weight(1), 2), rwr_weight(0), round(rwr_weight(-1), 3)
    (12.18, 1.0, 0.082)
    """
    return math.exp(reward / tau)


def keep(rewards: Sequence[int], t: int, criteria: str) -> bool:
    """Whether turn t (0-based) of an episode with these chosen-turn rewards is kept."""
    r = rewards[t]
    if criteria == "success":
        return r == 1
    if t == 0 or criteria == "all":
        return True
    if criteria == "better":
        return r > rewards[t - 1]
    return r >= max(rewards[:t])  # best


def shaped_reward(rewards: Sequence[int], t: int, bonus: float) -> float:
    """Turn t's reward plus `bonus` times its progress over turn t-1 (SCoRe's shaping).

    >>> shaped_reward([0, 1], 1, 2.0), shaped_reward([1, 1], 1, 2.0), shaped_reward([1, 0], 1, 2.0)
    (3.0, 1.0, -2.0)
    """
    if t == 0 or not bonus:
        return rewards[t]
    return rewards[t] + bonus * (rewards[t] - rewards[t - 1])


def examples_from_episode(
    ep: CollectedEpisode, criteria: str, tau: float, progress_bonus: float = 0.0
) -> list[TrainingExample]:
    """The training examples of one collected episode, along the path it took."""
    path = [turn for turn in ep.turns if turn.chosen_attempt is not None]
    rewards = [turn.chosen_attempt.reward for turn in path]
    examples = []
    for t, turn in enumerate(path):
        if not keep(rewards, t, criteria):
            continue
        attempt = turn.chosen_attempt
        examples.append(
            TrainingExample(
                messages=[*turn.messages, {"role": "assistant", "content": attempt.response}],
                reward=attempt.reward,
                weight=rwr_weight(shaped_reward(rewards, t, progress_bonus), tau),
                turn=turn.index,
                problem_id=ep.problem_id,
                source=turn.source,
            )
        )
    return examples


def cap_keep_states(examples: list[TrainingExample], ratio: float) -> list[TrainingExample]:
    """At most `ratio` keep-state examples per repair example (a later turn, not a keep state).

    Which keep states stay is decided by a hash of their problem id: the same on every rerun,
    and unrelated to the order the problems were collected in.
    """
    keeps = [ex for ex in examples if ex.source == KEEP]
    repairs = sum(1 for ex in examples if ex.turn > 1 and ex.source != KEEP)
    allowed = int(ratio * repairs)
    if len(keeps) <= allowed:
        return examples
    order = sorted(keeps, key=lambda ex: hashlib.sha256(ex.problem_id.encode()).hexdigest())
    kept = {id(ex) for ex in order[:allowed]}
    return [ex for ex in examples if ex.source != KEEP or id(ex) in kept]


def _settings(config: BuildDataConfig) -> dict:
    return {k: v for k, v in vars(config).items() if k != "out"}


def built(config: BuildDataConfig) -> bool:
    """Whether `config.out` holds data built with these settings (its config.json is written
    first, data.jsonl last and whole, so both there means finished)."""
    out = Path(config.out)
    return read_run_config(out) == _settings(config) and (out / DATA).exists()


def build(config: BuildDataConfig) -> list[TrainingExample]:
    """Build `out/data.jsonl` from the collections and print a summary.

    A folder that already holds this data from these settings is not written again, so a rerun
    leaves it (and its timestamps) as it was; other collections or settings rebuild it.
    """
    check_out(config.out, "build-data")
    episodes = read_collections(config.episodes)
    examples = [
        ex
        for ep in episodes
        for ex in examples_from_episode(ep, config.criteria, config.tau, config.progress_bonus)
    ]
    examples = cap_keep_states(examples, config.keep_ratio)
    removed = 0
    if config.dedupe:
        seen: set[str] = set()
        unique = []
        for ex in examples:
            key = json.dumps(ex.messages, sort_keys=True)
            if key not in seen:
                seen.add(key)
                unique.append(ex)
        removed = len(examples) - len(unique)
        examples = unique
    if not examples:
        raise RiseError(
            f"build-data: criteria {config.criteria!r} kept no example from {len(episodes)} "
            "episodes; try criteria 'all' or collect more problems"
        )
    out, path = Path(config.out), Path(config.out) / DATA
    text = jsonl_text(examples)
    settings = _settings(config)
    if built(config) and path.read_text("utf-8") == text:
        # a rerun (a resumed `rise run`) leaves finished data as it is, timestamps included
        console.print(f"build-data: {path} already holds this data, kept")
    else:
        write_run_record(out, settings)
        write_atomic(path, text)
    stdout.print(data_table(examples, len(episodes), removed))
    return examples


REWARDS = (1, 0, -1)


def row_label(ex: TrainingExample) -> str:
    """The data table's row of an example: its turn, keep states apart ("2 keep")."""
    return f"{ex.turn} keep" if ex.source == KEEP else str(ex.turn)


def data_summary(examples: Sequence[TrainingExample]) -> dict[str, Any]:
    """Examples per row (`row_label`) and reward, and per reward the mean weight and its share
    of the total weight (None where no example has that reward)."""
    counts = Counter((row_label(ex), ex.reward) for ex in examples)
    total_weight = sum(ex.weight for ex in examples)
    by_reward = {r: [ex.weight for ex in examples if ex.reward == r] for r in REWARDS}
    return {
        "examples": len(examples),
        "counts": {
            label: {r: counts[(label, r)] for r in REWARDS}
            for label in sorted({row_label(ex) for ex in examples})
        },
        "mean_weight": {r: sum(w) / len(w) if w else None for r, w in by_reward.items()},
        "weight_share": {r: sum(w) / total_weight for r, w in by_reward.items()},
    }


def data_table(examples: Sequence[TrainingExample], episodes: int, removed: int) -> Table:
    """Examples per turn (keep states apart) and reward, with the mean weight of each reward."""
    summary = data_summary(examples)
    table = Table(
        title=f"Training data: {len(examples)} examples from {episodes} episodes"
        f" ({removed} duplicates removed)"
    )
    table.add_column("turn", justify="right")
    for r in REWARDS:
        table.add_column(f"reward {r:+d}", justify="right")
    for label, counts in summary["counts"].items():
        table.add_row(label, *(str(counts[r]) for r in REWARDS))
    table.add_row(
        "weight",
        *(f"{w:.3f}" if w is not None else "-" for w in summary["mean_weight"].values()),
    )
    table.add_row(
        "share of weight",
        *(f"{share:.1%}" for share in summary["weight_share"].values()),
    )
    return table
