"""Results as tables for people: the per-turn metrics of one or more evaluated models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rise_llm.claims import Claim
from rise_llm.edits import is_edit
from rise_llm.metrics import FAILURE_MODES, TRANSITIONS, MetricNames
from rise_llm.records import KEEP, CollectedEpisode, CollectedTurn

stdout = Console()


def metric_columns(metrics: Mapping[str, Any]) -> list[str]:
    """The metric keys of a stored metrics dict, in reading order (`MetricNames.columns`)."""
    return [c for c in MetricNames.of(metrics).columns() if c in metrics]


def metrics_table(rows: Mapping[str, Mapping[str, Any]], title: str = "Evaluation") -> Table:
    """A table with one row per metric and one column per model label (narrow terminals fit)."""
    first = next(iter(rows.values()))
    table = Table(title=title)
    table.add_column("metric")
    for label in rows:
        table.add_column(label, justify="right")
    table.add_row("n", *(str(m["n"]) for m in rows.values()))
    for c in metric_columns(first):
        table.add_row(c, *(f"{m[c]:.3f}" if c in m else "-" for m in rows.values()))
    return table


def transitions_table(metrics: Mapping[str, Any]) -> Table:
    """Correct/wrong transitions between consecutive turns of the no-oracle run."""
    table = Table(title="Turn transitions (no oracle)")
    table.add_column("turns")
    keys = TRANSITIONS + FAILURE_MODES
    for k in keys:
        table.add_column(k, justify="right")
    for step, counts in metrics.get("transitions", {}).items():
        table.add_row(step, *(str(counts[k]) if k in counts else "-" for k in keys))
    return table


def print_metrics(rows: Mapping[str, Mapping[str, Any]]) -> None:
    """Print the metrics table (and, for a single model, its transitions) to stdout."""
    stdout.print(metrics_table(rows))
    if len(rows) == 1:
        only = next(iter(rows.values()))
        if only.get("transitions"):
            stdout.print(transitions_table(only))
        stdout.print(only["majority_rule"])


@dataclass
class CollectionRow:
    """One collection turn and source: states reached, samples drawn, their mean reward, states
    solved (best-of-N success), degenerate samples; `demoted` of `plain_correct`: the samples
    the task's verifier calls correct and a collection verifier does not (0/0 when none judged);
    `edits` of `repairs`: solved later states whose chosen response keeps the previous
    attempt's first line (`edits.is_edit`) rather than starting afresh."""

    turn: int
    source: str
    states: int
    samples: int
    mean_reward: float
    solved: int
    degenerate: int
    demoted: int
    plain_correct: int
    edits: int
    repairs: int


def collection_rows(episodes: Sequence[CollectedEpisode]) -> list[CollectionRow]:
    """The `CollectionRow` of every (turn, source) of a collection, in turn order."""
    rows: dict[tuple[int, str], list[tuple[CollectedTurn, str | None]]] = {}
    for ep in episodes:
        previous = None
        for turn in ep.turns:
            rows.setdefault((turn.index, turn.source), []).append((turn, previous))
            if turn.chosen_attempt is not None:
                previous = turn.chosen_attempt.response
    found = []
    for (t, source), entries in sorted(rows.items()):
        turns = [turn for turn, _ in entries]
        attempts = [a for turn in turns for a in turn.attempts]
        solved = [(turn.chosen_attempt, prev) for turn, prev in entries if _solved(turn)]
        judged = [a for a in attempts if a.plain_reward is not None]
        repairs = [(a, prev) for a, prev in solved if prev is not None and source != KEEP]
        found.append(
            CollectionRow(
                turn=t,
                source=source,
                states=len(turns),
                samples=len(attempts),
                mean_reward=sum(a.reward for a in attempts) / len(attempts),
                solved=len(solved),
                degenerate=sum(a.degenerate for a in attempts),
                demoted=sum(a.plain_reward == 1 and a.reward != 1 for a in judged),
                plain_correct=sum(a.plain_reward == 1 for a in judged),
                edits=sum(is_edit(prev, a.response) for a, prev in repairs),
                repairs=len(repairs),
            )
        )
    return found


def collection_table(episodes: Sequence[CollectedEpisode]) -> Table:
    """The `collection_rows` of a collection as a table."""
    table = Table(title=f"Collection ({len(episodes)} problems)")
    names = ("turn", "source", "states", "samples", "mean reward", "solved", "degenerate")
    for name in (*names, "demoted", "edits"):
        table.add_column(name, justify="left" if name == "source" else "right")
    for r in collection_rows(episodes):
        table.add_row(
            str(r.turn),
            r.source,
            str(r.states),
            str(r.samples),
            f"{r.mean_reward:+.3f}",
            f"{r.solved} ({r.solved / r.states:.0%})",
            str(r.degenerate),
            f"{r.demoted}/{r.plain_correct} ({r.demoted / r.plain_correct:.0%})"
            if r.plain_correct
            else "-",
            f"{r.edits}/{r.repairs} ({r.edits / r.repairs:.0%})" if r.repairs else "-",
        )
    return table


def _solved(turn: CollectedTurn) -> bool:
    return turn.chosen_attempt is not None and turn.chosen_attempt.correct


def claims_table(claims: Sequence[Claim], title: str) -> Table:
    """Each claim's estimate, bootstrap 95% interval, threshold and verdict."""
    table = Table(title=title)
    for name in ("claim", "estimate", "95% interval", "needs", "holds"):
        table.add_column(name, justify="left" if name == "claim" else "right")
    for c in claims:
        verdict = "yes" if c.holds else "no"
        if c.holds and not c.significant:
            verdict += " (within noise)"
        table.add_row(
            c.name,
            f"{c.estimate:+.3f}",
            f"[{c.low:+.3f}, {c.high:+.3f}]",
            f">= {c.threshold:+.2f}",
            verdict,
        )
    return table


def plot_accuracy_by_turn(rows: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """PNG: acc@t by turn per model (no oracle), with m1@tK, p1@tK and the parallel baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, m in rows.items():
        k, names = m["turns"], MetricNames.of(m)
        left.plot(
            range(1, k + 1), [m[names.acc(t)] for t in range(1, k + 1)], marker="o", label=label
        )
    left.set_xlabel("turn (no oracle)")
    left.set_ylabel("accuracy")
    left.set_title("Accuracy by turn")
    left.set_xticks(range(1, k + 1))
    left.grid(alpha=0.3)
    left.legend()
    first = next(iter(rows.values()))
    accs = {MetricNames.of(first).acc(t) for t in range(1, first["turns"] + 1)}
    cols = [c for c in metric_columns(first) if c not in accs]
    width = 0.8 / len(rows)
    for j, (label, m) in enumerate(rows.items()):
        right.bar(
            [i + j * width for i in range(len(cols))],
            [m.get(c, 0) for c in cols],
            width,
            label=label,
        )
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(cols))], cols)
    right.set_title("Majority, oracle and parallel baselines")
    right.set_ylim(0, 1)
    right.grid(axis="y", alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
