"""Code execution: model-written programs run per second in the sandbox, against unsandboxed.

Runs --programs small programs (a function and five asserts on it, the shape of a HumanEval
check; each program a little different) through `Sandbox.run_many` under bubblewrap at each
--concurrency, then the same through the unsandboxed path (a plain subprocess with the same
limits, `allow_unsandboxed=True` with bwrap hidden), and, as the floor, a bare
`python -I -S main.py` per program in a thread pool (the launcher's interpreter flags, no
limits). Every execution must end "ok".

    python benchmarks/sandbox.py                                  # 200 programs, 1, 2, cores
    python benchmarks/sandbox.py --programs 20 --concurrency 1,2  # a quick check
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import harness

from rise_llm import sandbox as sandbox_module
from rise_llm.errors import RiseError
from rise_llm.sandbox import Sandbox

PROGRAM = """\
def add_digits(n):
    return sum(int(c) for c in str(abs(n)))


assert add_digits({i}) == {digits}
assert add_digits(-{i}) == {digits}
assert add_digits(0) == 0
assert add_digits(99) == 18
assert add_digits(1001) == 2
"""


def programs(count: int) -> list[str]:
    return [PROGRAM.format(i=i, digits=sum(map(int, str(i)))) for i in range(count)]


def sandboxed(sources: list[str], concurrency: int) -> tuple[float, int]:
    """Seconds for run_many under bwrap, and how many ended ok."""
    sandbox = Sandbox(concurrency=concurrency)
    start = time.perf_counter()
    executions = sandbox.run_many(sources)
    return time.perf_counter() - start, sum(e.status == "ok" for e in executions)


def unsandboxed(sources: list[str], concurrency: int) -> tuple[float, int]:
    """Seconds for run_many on the unsandboxed path (bwrap hidden), and how many ended ok."""
    with mock.patch.object(sandbox_module, "bwrap_path", lambda: None), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sandbox = Sandbox(allow_unsandboxed=True, concurrency=concurrency)
    start = time.perf_counter()
    executions = sandbox.run_many(sources)
    return time.perf_counter() - start, sum(e.status == "ok" for e in executions)


def bare(sources: list[str], concurrency: int) -> tuple[float, int]:
    """Seconds for `python -I -S main.py` per program with no limits, and how many exited 0."""
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))

    def one(source: str) -> bool:
        with tempfile.TemporaryDirectory() as work:
            Path(work, "main.py").write_text(source)
            done = subprocess.run([python, "-I", "-S", "main.py"], cwd=work, capture_output=True)
            return done.returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        ok = sum(pool.map(one, sources))
    return time.perf_counter() - start, ok


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--programs", type=int, default=200)
    p.add_argument(
        "--concurrency",
        default=None,
        help="comma-separated pool sizes (default: 1, 2 and the CPU count)",
    )
    args = p.parse_args()
    args.load_at_start = round(os.getloadavg()[0], 2)
    levels = (
        [int(c) for c in args.concurrency.split(",")]
        if args.concurrency
        else sorted({1, 2, os.cpu_count() or 1})
    )
    sources = programs(args.programs)
    ways = {"bwrap": sandboxed, "unsandboxed": unsandboxed, "bare python": bare}
    try:
        Sandbox()
    except RiseError as error:
        harness.stdout.print(f"[yellow]no sandboxed rows: {error}")
        del ways["bwrap"]
    rows, result = [], {}
    for way, measure in ways.items():
        for concurrency in levels:
            seconds, ok = measure(sources, concurrency)
            record = {
                "concurrency": concurrency,
                "programs": len(sources),
                "ok": ok,
                "seconds": round(seconds, 3),
                "executions_per_s": round(len(sources) / seconds, 1),
            }
            result[f"{way}, concurrency {concurrency}"] = record
            rows.append((way, concurrency, ok, record["seconds"], record["executions_per_s"]))
    harness.print_table(
        f"{len(sources)} programs", ["way", "concurrency", "ok", "seconds", "per s"], rows
    )
    bwrap = sandbox_module.bwrap_path() if "bwrap" in ways else None
    version = (
        subprocess.run([bwrap, "--version"], capture_output=True, text=True) if bwrap else None
    )
    harness.write_result(
        "sandbox",
        args,
        {
            "bwrap": version.stdout.strip() if version else None,
            "uid": os.geteuid(),
            "results": result,
        },
    )


if __name__ == "__main__":
    main()
