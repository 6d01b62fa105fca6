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

import numpy as np

from rise_llm.edits import is_edit
from rise_llm.records import SCHEMA_VERSION, Episode, Turn

MAJORITY_RULE = (
    "majority: attempts without an extractable answer do not vote; ties go to the most recent "
    "of the tied answers; no votes counts as wrong"
)


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

    def to_dict(self) -> dict[str, Any]:
        k, s = self.turns, self.parallel_samples
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "n": self.n, "turns": k}
        out.update({f"acc@{t}": a for t, a in enumerate(self.acc, start=1)})
        if self.acc:
            out["m1@t1"] = self.acc[0]
        named = {
            f"m1@t{k}": self.majority,
            f"p1@t{k}": self.oracle,
            f"m{s}@t1": self.parallel_majority,
            f"p{s}@t1": self.parallel_any,
        }
        out.update({key: v for key, v in named.items() if v is not None})
        out["transitions"] = self.transitions
        out["context_window"] = self.context_window
        out["seconds"] = self.seconds
        out["majority_rule"] = self.majority_rule
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        k = data["turns"]
        samples = next(
            (
                int(key[1:-3])
                for key in data
                if key.startswith("p") and key.endswith("@t1") and key != "p1@t1"
            ),
            0,
        )
        return cls(
            n=data["n"],
            turns=k,
            acc=[data[f"acc@{t}"] for t in range(1, k + 1) if f"acc@{t}" in data],
            majority=data.get(f"m1@t{k}"),
            oracle=data.get(f"p1@t{k}"),
            parallel_samples=samples,
            parallel_majority=data.get(f"m{samples}@t1") if samples else None,
            parallel_any=data.get(f"p{samples}@t1") if samples else None,
            transitions=data.get("transitions", {}),
            context_window=data.get("context_window"),
            seconds=data.get("seconds", {}),
        )


def compute_metrics(episodes: Sequence[Episode], turns: int) -> Metrics:
    """All metrics for K=`turns` from the episodes of the three modes.

    Modes whose episodes are absent leave their fields None. With K=1 the parallel baselines
    would be acc@1 and p1@t1 themselves, so they are not reported separately.
    """
    no_oracle = _by_problem(episodes, "no_oracle")
    oracle = _by_problem(episodes, "oracle")
    parallel = _by_problem(episodes, "parallel")
    metrics = Metrics(n=len(no_oracle or oracle or parallel), turns=turns)
    if no_oracle:
        eps = [group[0] for group in no_oracle.values()]
        metrics.acc = [sum(ep.turns[t].correct for ep in eps) / len(eps) for t in range(turns)]
        metrics.majority = sum(majority_correct(ep.turns[:turns]) for ep in eps) / len(eps)
        metrics.transitions = {f"{t}->{t + 1}": transition_counts(eps, t) for t in range(1, turns)}
    if oracle:
        metrics.oracle = sum(group[0].solved for group in oracle.values()) / len(oracle)
    if parallel and turns > 1:
        samples = [
            [ep.turns[0] for ep in sorted(g, key=lambda e: e.sample)] for g in parallel.values()
        ]
        metrics.parallel_samples = len(samples[0])
        metrics.parallel_majority = sum(majority_correct(x) for x in samples) / len(samples)
        metrics.parallel_any = sum(any(t.correct for t in x) for x in samples) / len(samples)
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


def per_problem(episodes: Sequence[Episode], turns: int) -> dict[str, dict[str, float]]:
    """Per-problem outcomes (0/1) behind each metric, for paired comparisons of two runs.

    Keys: "acc@1", "m1@tK", "p1@tK", "mS@t1", "pS@t1" (as present), each {problem_id: 0 or 1}.
    """
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for pid, group in _by_problem(episodes, "no_oracle").items():
        out["acc@1"][pid] = float(group[0].turns[0].correct)
        out[f"m1@t{turns}"][pid] = float(majority_correct(group[0].turns[:turns]))
    for pid, group in _by_problem(episodes, "oracle").items():
        out[f"p1@t{turns}"][pid] = float(group[0].solved)
    for pid, group in _by_problem(episodes, "parallel").items():
        samples = [ep.turns[0] for ep in sorted(group, key=lambda e: e.sample)]
        out[f"m{len(samples)}@t1"][pid] = float(majority_correct(samples))
        out[f"p{len(samples)}@t1"][pid] = float(any(t.correct for t in samples))
    return dict(out)


@dataclass
class Claim:
    """A measured difference with its paired-bootstrap 95% interval, against a threshold."""

    name: str
    estimate: float
    low: float
    high: float
    threshold: float
    n: int

    @property
    def holds(self) -> bool:
        return self.estimate >= self.threshold

    @property
    def significant(self) -> bool:
        """The whole 95% interval clears the threshold."""
        return self.low >= self.threshold


def paired_bootstrap(
    differences: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-problem differences and its bootstrap 95% interval (resampling problems)."""
    values = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def rise_claims(
    base: Sequence[Episode], trained: Sequence[Episode], turns: int, seed: int = 0
) -> list[Claim]:
    """The paper's four claims (issue "RISE loop", METHOD.md) for a trained model vs its base.

    1. with oracle it solves more within K turns: p1@tK gain >= 0.05;
    2. sequential beats parallel at equal compute: its m1@tK - mK@t1 >= 0;
    3. it gains more from extra turns than the base: (m1@tK - m1@t1) gain >= 0.03;
    4. it keeps its first-turn ability: acc@1 change >= -0.02.
    Problems are paired across the two runs, so they must be evaluated on the same problems.
    """
    b, r = per_problem(base, turns), per_problem(trained, turns)
    ids = sorted(b["acc@1"])
    if sorted(r["acc@1"]) != ids:
        raise ValueError("the two runs were not evaluated on the same problems")
    m, p, par = f"m1@t{turns}", f"p1@t{turns}", f"m{turns}@t1"

    def diff(fn) -> list[float]:
        return [fn(i) for i in ids]

    specs = [
        (f"{p} gain over base", diff(lambda i: r[p][i] - b[p][i]), 0.05),
        (f"{m} - {par} (sequential vs parallel)", diff(lambda i: r[m][i] - r[par][i]), 0.0),
        (
            f"({m} - m1@t1) gain over base",
            diff(lambda i: (r[m][i] - r["acc@1"][i]) - (b[m][i] - b["acc@1"][i])),
            0.03,
        ),
        ("acc@1 change from base", diff(lambda i: r["acc@1"][i] - b["acc@1"][i]), -0.02),
    ]
    claims = []
    for name, values, threshold in specs:
        estimate, low, high = paired_bootstrap(values, seed=seed)
        claims.append(Claim(name, estimate, low, high, threshold, len(ids)))
    return claims
