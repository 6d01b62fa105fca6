"""The evaluation metrics of METHOD.md, computed from stored episodes.

With K turns:
- acc@t: fraction of problems whose turn-t attempt is correct in the no-oracle run.
- m1@tK: majority vote over the extracted answers of turns 1..K of the no-oracle run.
- p1@tK: fraction of problems solved at some turn <= K in the oracle run.
- m{K}@t1 / p{K}@t1: majority vote / any-correct over K independent turn-1 samples.
- transitions t->t+1: counts of correct->correct, correct->wrong, wrong->correct, wrong->wrong.

Majority rule (stated in every report): attempts with no extractable answer do not vote; the
answer with most votes wins; a tie goes to the tied answer given most recently (for parallel
samples, the highest-numbered sample); no votes at all counts as wrong.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from rise_llm.records import Episode, Turn

MAJORITY_RULE = (
    "majority: attempts without an extractable answer do not vote; ties go to the most recent "
    "of the tied answers; no votes counts as wrong"
)


def majority_correct(attempts: Sequence[Turn]) -> bool:
    """Whether the majority answer over `attempts` (in order) is correct, by MAJORITY_RULE.

    A canonical answer is correct exactly when some attempt giving it was rewarded 1, since the
    verifier maps equal canonical answers to equal rewards.
    """
    votes = Counter(t.answer for t in attempts if t.answer is not None)
    if not votes:
        return False
    top = max(votes.values())
    tied = {a for a, c in votes.items() if c == top}
    winner = next(t.answer for t in reversed(attempts) if t.answer in tied)
    return any(t.correct for t in attempts if t.answer == winner)


def _by_problem(episodes: Sequence[Episode], mode: str) -> dict[str, list[Episode]]:
    grouped: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        if ep.mode == mode:
            grouped[ep.problem_id].append(ep)
    return grouped


def compute_metrics(episodes: Sequence[Episode], turns: int) -> dict[str, Any]:
    """All metrics for K=`turns` from the episodes of the three modes, as a flat dict.

    Fractions are in [0, 1]; `n` and the transition counts are integers. A mode whose episodes
    are absent is left out.
    """
    metrics: dict[str, Any] = {"turns": turns}
    no_oracle = _by_problem(episodes, "no_oracle")
    oracle = _by_problem(episodes, "oracle")
    parallel = _by_problem(episodes, "parallel")
    n = len(no_oracle or oracle or parallel)
    metrics["n"] = n
    if no_oracle:
        eps = [group[0] for group in no_oracle.values()]
        for t in range(1, turns + 1):
            metrics[f"acc@{t}"] = sum(ep.turns[t - 1].correct for ep in eps) / len(eps)
        metrics["m1@t1"] = metrics["acc@1"]
        metrics[f"m1@t{turns}"] = sum(majority_correct(ep.turns[:turns]) for ep in eps) / len(eps)
        metrics["transitions"] = {
            f"{t}->{t + 1}": transition_counts(eps, t) for t in range(1, turns)
        }
    if oracle:
        eps = [group[0] for group in oracle.values()]
        metrics[f"p1@t{turns}"] = sum(ep.solved for ep in eps) / len(eps)
    if parallel and turns > 1:  # with K=1 the baselines are acc@1 and p1@t1 themselves
        samples = [
            [ep.turns[0] for ep in sorted(g, key=lambda e: e.sample)] for g in parallel.values()
        ]
        k = len(samples[0])
        metrics[f"m{k}@t1"] = sum(majority_correct(s) for s in samples) / len(samples)
        metrics[f"p{k}@t1"] = sum(any(t.correct for t in s) for s in samples) / len(samples)
    metrics["majority_rule"] = MAJORITY_RULE
    return metrics


def transition_counts(episodes: Sequence[Episode], t: int) -> dict[str, int]:
    """Counts of correctness changes from turn t to turn t+1 (1-based) over no-oracle episodes."""
    counts = Counter()
    for ep in episodes:
        before = "correct" if ep.turns[t - 1].correct else "wrong"
        after = "correct" if ep.turns[t].correct else "wrong"
        counts[f"{before}->{after}"] += 1
    keys = ("correct->correct", "correct->wrong", "wrong->correct", "wrong->wrong")
    return {k: counts[k] for k in keys}
