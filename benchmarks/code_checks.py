"""Code checks: HumanEval responses judged per second through the rollout's pool of verify calls.

Each response is judged as a collection or an evaluation judges it (`judging.judge_all` over
`HumanEvalTask.verify`): two sandboxed programs, the visible tests (the feedback) and the hidden
ones (the reward). The responses are the 164 reference solutions and as many broken ones (the
function redefined to return None), each --repeat times; every --workers pool size runs the same
list, and the verdicts must agree with the first. The last column extrapolates the figure to a
collection of 16 samples x 1000 problems.

    python benchmarks/code_checks.py                     # 328 x 2 responses, pools 1, 2, cores
    python benchmarks/code_checks.py --problems 3 --repeat 1 --workers 1,2   # a quick check
"""

from __future__ import annotations

import os
import time

import harness

from rise_llm.judging import judge_all
from rise_llm.tasks import get_task


def responses(task, problems: int | None, repeat: int) -> list[tuple]:
    """(problem, response) pairs: each reference solution and a broken one, `repeat` times."""
    pairs = []
    for problem in task.problems("test", problems):
        right = problem.answer  # the prompt and the canonical solution
        broken = (
            f"{right}\n\ndef {problem.meta['entry_point']}(*args, **kwargs):\n    return None\n"
        )
        pairs += [(problem, f"```python\n{right}\n```"), (problem, f"```python\n{broken}\n```")]
    return pairs * repeat


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=None, help="the first N (default: all 164)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", default=None, help="comma-separated pool sizes")
    args = p.parse_args()
    args.load_at_start = round(os.getloadavg()[0], 2)
    levels = (
        [int(w) for w in args.workers.split(",")]
        if args.workers
        else sorted({1, 2, os.cpu_count() or 1})
    )
    rows, result, first = [], {}, None
    for workers in levels:
        task = get_task("humaneval", concurrency=workers)
        pairs = responses(task, args.problems, args.repeat)
        task.ready()
        start = time.perf_counter()
        verdicts = judge_all(task.verify, pairs, workers, f"{workers} at a time")
        seconds = time.perf_counter() - start
        rewards = [v.reward for v in verdicts]
        first = first or rewards
        assert rewards == first, "the verdicts depend on the pool size"
        per_s = len(pairs) / seconds
        record = {
            "workers": workers,
            "responses": len(pairs),
            "passed": sum(r == 1 for r in rewards),
            "seconds": round(seconds, 2),
            "checks_per_s": round(per_s, 2),
            "hours_for_16k": round(16_000 / per_s / 3600, 2),
        }
        result[f"workers {workers}"] = record
        rows.append(
            (workers, len(pairs), record["passed"], record["seconds"], record["checks_per_s"])
        )
        rows[-1] += (record["hours_for_16k"],)
    harness.print_table(
        "HumanEval responses judged (2 sandboxed programs each)",
        ["workers", "responses", "passed", "seconds", "per s", "h for 16 x 1000"],
        rows,
    )
    harness.write_result("code_checks", args, {"results": result})


if __name__ == "__main__":
    main()
