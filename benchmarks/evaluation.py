"""Evaluation that samples each state once against the evaluation that samples every mode.

`rise evaluate` reads the oracle episodes and one of the K parallel samples off the no-oracle
episodes (`reuse_samples`, the default). This runs both ways on the same model and problems,
and reports the time of each and, for every metric, the paired difference over problems with
its bootstrap 95% interval: a difference inside its noise is the same distribution.

    python benchmarks/evaluation.py --problems 1000          # the toy model, K=5
"""

from __future__ import annotations

import time

import harness

from rise_llm.claims import paired_bootstrap
from rise_llm.evaluate import EvaluateConfig, run
from rise_llm.metrics import OUTCOME_FIELDS, MetricNames, outcomes


def derived(episode, reuse: bool) -> bool:
    """Whether the reusing evaluation read this episode off the no-oracle ones."""
    first = episode.mode == "parallel" and episode.sample == 0
    return reuse and (episode.mode == "oracle" or first)


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=1000, help="held-out problems")
    p.add_argument("--turns", type=int, default=5, help="K")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    harness.setup(args)
    model = harness.ensure_toy_model(args.model)

    results = {}
    for reuse in (False, True):
        config = EvaluateConfig(
            model=model, limit=args.problems, turns=args.turns, seed=args.seed, reuse_samples=reuse
        )
        start = time.perf_counter()
        result = run(config)
        seconds = time.perf_counter() - start
        samples = sum(len(ep.turns) for ep in result.episodes if not derived(ep, reuse))
        results[reuse] = (result, seconds, samples)

    (old, old_s, old_n), (new, new_s, new_n) = results[False], results[True]
    by_old = outcomes(old.episodes, args.turns)
    by_new = outcomes(new.episodes, args.turns)
    ids = sorted(by_old)
    names = MetricNames(args.turns, args.turns)
    rows, metrics = [], {}
    for field in OUTCOME_FIELDS:
        name = names.outcome(field)
        before = [getattr(by_old[pid], field) for pid in ids]
        after = [getattr(by_new[pid], field) for pid in ids]
        estimate, low, high = paired_bootstrap(
            [a - b for a, b in zip(after, before, strict=True)], seed=args.seed
        )
        mean_old, mean_new = sum(before) / len(ids), sum(after) / len(ids)
        inside = low <= 0 <= high
        rows.append(
            [name, mean_old, mean_new, f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]", inside]
        )
        metrics[name] = {
            "every_mode": mean_old,
            "reused": mean_new,
            "difference": [estimate, low, high],
        }
    harness.print_table(
        f"{args.problems} problems, K={args.turns}: reused - every mode sampled (paired, 95%)",
        ["metric", "every mode sampled", "reused", "difference", "0 inside"],
        rows,
    )
    harness.print_table(
        "cost",
        ["evaluation", "seconds", "samples", "samples per problem"],
        [
            ["every mode sampled", round(old_s, 1), old_n, old_n / args.problems],
            ["reused (the default)", round(new_s, 1), new_n, new_n / args.problems],
        ],
    )
    harness.write_result(
        "evaluation",
        args,
        {
            "model": model,
            "problems": args.problems,
            "turns": args.turns,
            "metrics": metrics,
            "seconds": {"every_mode": round(old_s, 1), "reused": round(new_s, 1)},
            "samples": {"every_mode": old_n, "reused": new_n},
        },
    )


if __name__ == "__main__":
    main()
