"""The paper's four claims for a trained model against its base, with paired bootstrap intervals.

METHOD.md ("Metrics") and the "RISE loop" issue: each claim is a per-problem difference between
two evaluations on the same problems (`metrics.outcomes`), its mean and a bootstrap 95%
interval over the problems, against a threshold:

1. with an oracle it solves more within K turns: p1@tK gain >= ORACLE_GAIN;
2. sequential beats parallel at equal compute: m1@tK - mK@t1 >= SEQUENTIAL_OVER_PARALLEL;
3. it gains more from extra turns than the base: (m1@tK - m1@t1) gain >= TURN_GAIN;
4. it keeps its first-turn ability: acc@1 change >= FIRST_TURN_CHANGE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rise_llm.metrics import MetricNames, Outcome, outcomes
from rise_llm.records import Episode

ORACLE_GAIN = 0.05
SEQUENTIAL_OVER_PARALLEL = 0.0
TURN_GAIN = 0.03
FIRST_TURN_CHANGE = -0.02


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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of the proportion successes/n: unlike mean +- 1.96 sd it
    stays inside [0, 1] and is not empty at 0 or n successes (Wilson 1927).

    >>> [round(x, 3) for x in wilson_interval(5, 10)]
    [0.237, 0.763]
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rise_claims(
    base: Sequence[Episode], trained: Sequence[Episode], turns: int, seed: int = 0
) -> list[Claim]:
    """The four claims (module docstring), in that order, for `trained` against `base`; with
    one turn only the two that one turn can show (p1@t1 gain, acc@1 change).

    Problems are paired across the two evaluations, so both must hold the same problems.
    """
    b, r = outcomes(base, turns), outcomes(trained, turns)
    ids = sorted(b)
    if sorted(r) != ids:
        raise ValueError("the two runs were not evaluated on the same problems")
    names = MetricNames(turns, turns)
    m, p, par = names.majority, names.oracle, names.parallel_majority

    def diff(fn) -> list[float]:
        return [fn(r[i], b[i]) for i in ids]

    def turn_gain(o: Outcome) -> float:
        return o.majority - o.first

    specs = [
        (f"{p} gain over base", lambda t, s: t.oracle - s.oracle, ORACLE_GAIN),
        (
            f"{m} - {par} (sequential vs parallel)",
            lambda t, s: t.majority - t.parallel_majority,
            SEQUENTIAL_OVER_PARALLEL,
        ),
        (
            f"({m} - {names.first_turn_majority}) gain over base",
            lambda t, s: turn_gain(t) - turn_gain(s),
            TURN_GAIN,
        ),
        ("acc@1 change from base", lambda t, s: t.first - s.first, FIRST_TURN_CHANGE),
    ]
    if turns < 2:  # one turn: no parallel samples (they are turn 1), no turn gain to claim
        specs = [specs[0], specs[3]]
    claims = []
    for name, per_problem, threshold in specs:
        estimate, low, high = paired_bootstrap(diff(per_problem), seed=seed)
        claims.append(Claim(name, estimate, low, high, threshold, len(ids)))
    return claims
