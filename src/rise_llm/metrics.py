"""The evaluation metrics of METHOD.md, computed from stored episodes.

With K turns:
- acc@t: fraction of problems whose turn-t attempt is correct in the no-oracle run.
- m1@tK: majority vote over the extracted answers of turns 1..K of the no-oracle run.
- p1@tK: fraction of problems solved at some turn <= K in the oracle run.
- m{K}@t1 / p{K}@t1: majority vote / any-correct over K independent turn-1 samples.
- transitions t->t+1: counts of correct->correct, correct->wrong, wrong->correct, wrong->wrong;
  and two failure-mode counts: `wrong->wrong unchanged` (the same response again: the
  minimal-edit collapse SCoRe warns of) and `wrong->correct edit` (the correction keeps the
  wrong attempt's first line: a repair rather than a fresh attempt, `edits.is_edit`).

Majority rule (stated in every report): attempts with no extractable answer do not vote; the
answer with most votes wins; a tie goes to the tied answer given most recently (for parallel
samples, the highest-numbered sample); no votes at all counts as wrong.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rise_llm.edits import is_edit
from rise_llm.records import SCHEMA_VERSION, Episode, Turn

MAJORITY_RULE = (
    "majority: attempts without an extractable answer do not vote; ties go to the most recent "
    "of the tied answers; no votes counts as wrong"
)


MAX_PARALLEL_SAMPLES = 1024  # the most parallel samples a stored metrics file is searched for


@dataclass(frozen=True)
class MetricNames:
    """The names metrics are stored and printed under, for K=`turns` and `samples` parallel
    samples: acc@t, m1@tK (majority over turns), p1@tK (oracle), mS@t1 and pS@t1 (majority and
    any-correct over S parallel turn-1 samples). Every name is formatted here and only here."""

    turns: int
    samples: int = 0

    def acc(self, t: int) -> str:
        return f"acc@{t}"

    @property
    def first_turn_majority(self) -> str:
        return "m1@t1"  # a majority over one attempt: acc@1 under the name the paper gives it

    @property
    def majority(self) -> str:
        return f"m1@t{self.turns}"

    @property
    def oracle(self) -> str:
        return f"p1@t{self.turns}"

    @property
    def parallel_majority(self) -> str:
        return f"m{self.samples}@t1"

    @property
    def parallel_any(self) -> str:
        return f"p{self.samples}@t1"

    def outcome(self, field: str) -> str:
        """The name of the metric an `Outcome` field is behind ("first" is acc@1)."""
        return self.acc(1) if field == "first" else getattr(self, field)

    def columns(self) -> list[str]:
        """Reading order: acc@1..acc@K, m1@tK, p1@tK, then the parallel baselines (if any)."""
        cols = [self.acc(t) for t in range(1, self.turns + 1)] + [self.majority, self.oracle]
        return cols + ([self.parallel_majority, self.parallel_any] if self.samples else [])

    @classmethod
    def of(cls, stored: dict[str, Any]) -> MetricNames:
        """The names of a stored metrics dict (`Metrics.to_dict`), its parallel sample count
        found by looking its baselines up under this class's own names (a baseline has at
        least 2 samples: with K=1 there is none, and p1@t1 is the oracle's p1@tK)."""
        turns = stored["turns"]
        samples = next(
            (s for s in range(2, MAX_PARALLEL_SAMPLES + 1) if cls(turns, s).parallel_any in stored),
            0,
        )
        return cls(turns, samples)


def majority_answer(attempts: Sequence[Turn]) -> str | None:
    """The winning answer over `attempts` (in order) by MAJORITY_RULE; None when none voted."""
    votes = Counter(t.answer for t in attempts if t.answer is not None)
    if not votes:
        return None
    top = max(votes.values())
    tied = {a for a, c in votes.items() if c == top}
    return next(t.answer for t in reversed(attempts) if t.answer in tied)


def majority_correct(attempts: Sequence[Turn]) -> bool:
    """Whether the majority answer over `attempts` (in order) is correct, by MAJORITY_RULE.

    A canonical answer is correct exactly when some attempt giving it was rewarded 1, since the
    verifier maps equal canonical answers to equal rewards.
    """
    winner = majority_answer(attempts)
    return winner is not None and any(t.correct for t in attempts if t.answer == winner)


def _by_problem(episodes: Sequence[Episode], mode: str) -> dict[str, list[Episode]]:
    grouped: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        if ep.mode == mode:
            grouped[ep.problem_id].append(ep)
    return grouped


@dataclass
class Metrics:
    """The metrics of one model on one problem set. Fractions are in [0, 1].

    A field is None when its mode was not run. `to_dict` gives the flat form stored in
    metrics.json (`acc@1`, `m1@t5`, `p1@t5`, `m5@t1`, ...), `from_dict` reads it back.
    """

    n: int
    turns: int
    acc: list[float] = field(default_factory=list)  # acc@1..acc@K, no oracle
    majority: float | None = None  # m1@tK, no oracle
    oracle: float | None = None  # p1@tK
    parallel_samples: int = 0
    parallel_majority: float | None = None  # m{samples}@t1
    parallel_any: float | None = None  # p{samples}@t1
    transitions: dict[str, dict[str, int]] = field(default_factory=dict)
    context_window: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    majority_rule: str = MAJORITY_RULE

    @property
    def names(self) -> MetricNames:
        return MetricNames(self.turns, self.parallel_samples)

    def to_dict(self) -> dict[str, Any]:
        names = self.names
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "n": self.n, "turns": self.turns}
        out.update({names.acc(t): a for t, a in enumerate(self.acc, start=1)})
        if self.acc:
            out[names.first_turn_majority] = self.acc[0]
        named = {
            names.majority: self.majority,
            names.oracle: self.oracle,
            names.parallel_majority: self.parallel_majority,
            names.parallel_any: self.parallel_any,
        }
        out.update({key: v for key, v in named.items() if v is not None})
        out["transitions"] = self.transitions
        out["context_window"] = self.context_window
        out["seconds"] = self.seconds
        out["majority_rule"] = self.majority_rule
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        names = MetricNames.of(data)
        return cls(
            n=data["n"],
            turns=names.turns,
            acc=[data[names.acc(t)] for t in range(1, names.turns + 1) if names.acc(t) in data],
            majority=data.get(names.majority),
            oracle=data.get(names.oracle),
            parallel_samples=names.samples,
            parallel_majority=data.get(names.parallel_majority) if names.samples else None,
            parallel_any=data.get(names.parallel_any) if names.samples else None,
            transitions=data.get("transitions", {}),
            context_window=data.get("context_window"),
            seconds=data.get("seconds", {}),
        )


def compute_metrics(episodes: Sequence[Episode], turns: int) -> Metrics:
    """All metrics for K=`turns` from the episodes of the three modes.

    Modes whose episodes are absent leave their fields None. With K=1 the parallel baselines
    would be acc@1 and p1@t1 themselves, so they are not reported separately.
    """
    by_problem = outcomes(episodes, turns)

    def mean(field: str) -> float | None:
        values = [getattr(o, field) for o in by_problem.values()]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    no_oracle = _by_problem(episodes, "no_oracle")
    parallel = _by_problem(episodes, "parallel")
    metrics = Metrics(n=len(by_problem), turns=turns, oracle=mean("oracle"))
    if no_oracle:
        eps = [group[0] for group in no_oracle.values()]
        metrics.acc = [sum(ep.turns[t].correct for ep in eps) / len(eps) for t in range(turns)]
        metrics.majority = mean("majority")
        metrics.transitions = {f"{t}->{t + 1}": transition_counts(eps, t) for t in range(1, turns)}
    if parallel and turns > 1:
        metrics.parallel_samples = len(next(iter(parallel.values())))
        metrics.parallel_majority = mean("parallel_majority")
        metrics.parallel_any = mean("parallel_any")
    return metrics


TRANSITIONS = ("correct->correct", "correct->wrong", "wrong->correct", "wrong->wrong")
FAILURE_MODES = ("wrong->wrong unchanged", "wrong->correct edit")


def transition_counts(episodes: Sequence[Episode], t: int) -> dict[str, int]:
    """Counts of correctness changes from turn t to turn t+1 (1-based) over no-oracle episodes,
    with the unchanged wrong repeats and the corrections that are edits (module docstring)."""
    counts = Counter()
    for ep in episodes:
        first, second = ep.turns[t - 1], ep.turns[t]
        before = "correct" if first.correct else "wrong"
        after = "correct" if second.correct else "wrong"
        counts[f"{before}->{after}"] += 1
        if before == "wrong" and after == "wrong" and first.response == second.response:
            counts["wrong->wrong unchanged"] += 1
        if before == "wrong" and after == "correct" and is_edit(first.response, second.response):
            counts["wrong->correct edit"] += 1
    return {k: counts[k] for k in TRANSITIONS + FAILURE_MODES}


@dataclass(frozen=True)
class Outcome:
    """One problem's 0/1 outcome behind each metric (1.0 right, 0.0 wrong), for paired
    comparisons of two evaluations; None where its mode was not run. Field names as `Metrics`:
    first is acc@1, majority m1@tK, oracle p1@tK, parallel_majority mS@t1, parallel_any pS@t1."""

    first: float | None = None
    majority: float | None = None
    oracle: float | None = None
    parallel_majority: float | None = None
    parallel_any: float | None = None


OUTCOME_FIELDS = ("first", "majority", "oracle", "parallel_majority", "parallel_any")


def outcomes(episodes: Sequence[Episode], turns: int) -> dict[str, Outcome]:
    """Each problem's `Outcome` with K=`turns`, by problem id (the metrics are their means)."""
    found: dict[str, dict[str, float]] = defaultdict(dict)
    for pid, group in _by_problem(episodes, "no_oracle").items():
        found[pid]["first"] = float(group[0].turns[0].correct)
        found[pid]["majority"] = float(majority_correct(group[0].turns[:turns]))
    for pid, group in _by_problem(episodes, "oracle").items():
        found[pid]["oracle"] = float(group[0].solved)
    for pid, group in _by_problem(episodes, "parallel").items():
        samples = [ep.turns[0] for ep in sorted(group, key=lambda e: e.sample)]
        found[pid]["parallel_majority"] = float(majority_correct(samples))
        found[pid]["parallel_any"] = float(any(t.correct for t in samples))
    return {pid: Outcome(**values) for pid, values in found.items()}
