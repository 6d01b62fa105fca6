"""`rise serve` under load: many concurrent clients for a fixed time, on loopback only.

Starts `rise serve` over the toy model on 127.0.0.1 (a free port), then N clients (the openai
package's async client, as users' code would send them) each send small chat requests (arith
questions, max_tokens 16, temperature 1.0) back to back until the time is up; requests in
flight then finish, and the server is stopped. Reports requests/s, p50/p99 latency and errors
by kind (target: none). The server generates one request at a time, so latency grows with the
number of clients: the point is that every request is answered, none fails or hangs.

    python benchmarks/serve_load.py                          # 64 clients for 60 s
    python benchmarks/serve_load.py --clients 4 --seconds 3  # a quick check
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import harness


def percentile(values: list[float], share: float) -> float | None:
    """The `share` quantile of `values` (nearest rank); None for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))  # ceil(n * share), at least the first
    return ordered[int(rank) - 1]


def error_kind(error: Exception) -> str:
    """How a request failed: its HTTP status, a timeout, a lost connection, or another error."""
    import openai

    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}"
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    return type(error).__name__


async def drive(base_url: str, model: str, args) -> dict:
    """Run the clients until `args.seconds` have passed; every request's outcome and latency."""
    import openai

    from rise_llm.tasks import get_task

    task = get_task("arith")
    prompts = [task.prompt.first_messages(p) for p in task.problems("test", 200)]
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="none", max_retries=0, timeout=args.timeout
    )
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    tokens = 0
    start = time.perf_counter()
    deadline = start + args.seconds

    async def one_client(c: int) -> None:
        nonlocal tokens
        k = 0
        while k == 0 or time.perf_counter() < deadline:  # at least one request each
            messages = prompts[(c * 7919 + k) % len(prompts)]
            sent = time.perf_counter()
            try:
                response = await client.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=args.max_tokens,
                    temperature=1.0,
                    seed=c * 100_003 + k,
                )
            except Exception as e:  # every failure is counted by kind, none stops the run
                errors[error_kind(e)] += 1
            else:
                latencies.append(time.perf_counter() - sent)
                tokens += response.usage.completion_tokens
            k += 1

    await asyncio.gather(*(one_client(c) for c in range(args.clients)))
    wall = time.perf_counter() - start
    await client.close()
    return {"latencies": latencies, "errors": errors, "tokens": tokens, "wall": wall}


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64, help="concurrent clients")
    p.add_argument("--seconds", type=float, default=60.0, help="how long clients send requests")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each request")
    p.add_argument("--timeout", type=float, default=300.0, help="client timeout per request (s)")
    args = p.parse_args()
    harness.setup(args)
    if args.threads:  # the server's torch threads: it inherits the environment
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    model = harness.ensure_toy_model(args.model)

    from rise_llm.engines.served import ServedModel

    rise = f"{sys.executable} -m rise_llm serve"
    command = f"{rise} {{model}} --port {{port}} --device cpu --dtype float32"
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        with ServedModel(command, model, log, startup_timeout=300) as served:
            served.start()  # on 127.0.0.1 only: ServedModel picks a free loopback port
            base_url, name = served.engine.base_url, served.engine.model
            warm = asyncio.run(drive(base_url, name, _warmup(args)))
            if warm["errors"]:
                raise SystemExit(f"warm-up request failed: {dict(warm['errors'])}")
            found = asyncio.run(drive(base_url, name, args))

    latencies, errors = found["latencies"], found["errors"]
    answered, wall = len(latencies), found["wall"]
    result = {
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "max_tokens": args.max_tokens,
            "timeout": args.timeout,
            "host": "127.0.0.1",
            "model": model,
        },
        "requests": answered + sum(errors.values()),
        "answered": answered,
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "wall_seconds": round(wall, 2),
        "requests_per_s": round(answered / wall, 2),
        "completion_tokens_per_s": round(found["tokens"] / wall, 1),
        "latency_p50_s": _rounded(percentile(latencies, 0.5)),
        "latency_p99_s": _rounded(percentile(latencies, 0.99)),
        "latency_mean_s": _rounded(statistics.fmean(latencies) if latencies else None),
        "latency_max_s": _rounded(max(latencies, default=None)),
    }
    harness.print_table(
        f"rise serve under load: {args.clients} clients for {args.seconds:g} s (loopback)",
        ["answered", "requests/s", "p50 (s)", "p99 (s)", "max (s)", "errors"],
        [
            [
                answered,
                result["requests_per_s"],
                result["latency_p50_s"],
                result["latency_p99_s"],
                result["latency_max_s"],
                ", ".join(f"{n} x {k}" for k, n in errors.items()) or 0,
            ]
        ],
    )
    harness.write_result("serve_load", args, result)


def _warmup(args):
    """One client sending one request: the first one loads kernels and is not timed."""
    import argparse

    return argparse.Namespace(**{**vars(args), "clients": 1, "seconds": 0.0})


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


if __name__ == "__main__":
    main()
