"""Judging many responses at once: the verifier calls of one turn, in a pool when they wait.

Most verifiers are quick pure functions and run one after another in the calling thread
(math-verify bounds its work with SIGALRM, which only the main thread may use). A task whose
checks run programs (the code tasks' sandboxed tests) says how many may run together through
its `parallel_checks` attribute; its verify calls then run in that many threads, each waiting
on its own sandboxed process, with a progress bar giving checks per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from rise_llm.progress import progress_bar
from rise_llm.records import Problem

J = TypeVar("J")


def check_ready(task: Any) -> None:
    """Raise now, before a model is loaded, when `task` cannot judge responses here (a code
    task without its sandbox: `CodeTask.ready`); tasks without a `ready` method always can."""
    ready = getattr(task, "ready", None)
    if ready is not None:
        ready()


def parallel_checks(task: Any) -> int:
    """How many of `task`'s verify calls may run at once (1 unless the task says more)."""
    return max(1, int(getattr(task, "parallel_checks", 1) or 1))


def judge_all(
    judge: Callable[[Problem, str], J],
    pairs: Sequence[tuple[Problem, str]],
    workers: int = 1,
    desc: str = "checks",
) -> list[J]:
    """`judge(problem, response)` of every pair, in order; `workers` at a time when above 1.

    >>> judge_all(lambda p, r: len(r), [(Problem("a", "q", "1"), "xyz")] * 2, workers=2)
    [3, 3]
    """
    if workers <= 1 or len(pairs) <= 1:
        return [judge(problem, response) for problem, response in pairs]
    results: list[Any] = [None] * len(pairs)
    start = time.perf_counter()
    with progress_bar() as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(desc, total=len(pairs), rate="")
        futures = {pool.submit(judge, p, r): k for k, (p, r) in enumerate(pairs)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.1f} checks/s")
    return results
