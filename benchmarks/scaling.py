"""Scaling of collection: wall time and peak memory of `rise collect` against the number of
problems (1x, 2x, 4x).

Each size runs `collect.run` (the function behind `rise collect`, writing its folder in
chunks of `--chunk-size` problems) in a fresh Python process, so each peak resident set size
(ru_maxrss) is that size's own. Time is collection only; loading the model is reported apart.
Time should grow linearly with the problems and memory stay flat: a chunk's episodes are
written and only small records are kept.

    python benchmarks/scaling.py                     # 512, 1024, 2048 problems, T=2, N=16

The smallest size fills one chunk, so that every size samples in the same batch shapes and
holds the same engine buffers (sized by the engine batch, not by the problems).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import harness


def one_size(model: str, problems: int, samples: int, chunk_size: int, out: str) -> dict:
    """Collect `problems` problems in this process; its time and peak memory."""
    from rise_llm import collect
    from rise_llm.engines.hf import HFEngine

    config = collect.CollectConfig(
        model=model,
        out=out,
        limit=problems,
        samples=samples,
        chunk_size=chunk_size,
        device="cpu",
        dtype="float32",
    )
    start = time.perf_counter()
    engine = HFEngine.load(model, device="cpu", dtype="float32", batch_size=config.batch_size)
    loaded = time.perf_counter()
    episodes = collect.run(config, learner=engine)
    seconds = time.perf_counter() - loaded
    attempts = [a for ep in episodes for turn in ep.turns for a in turn.attempts]
    return {
        "problems": problems,
        "seconds": round(seconds, 2),
        "load_seconds": round(loaded - start, 2),
        "samples": len(attempts),
        "generated_tokens": sum(a.num_tokens for a in attempts),
        "peak_rss_mib": harness.peak_rss_mib(),
    }


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="512,1024,2048", help="the smallest fills one chunk")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=512, help="as rise collect's default")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    harness.setup(args)
    model_dir = harness.ensure_toy_model(args.model)
    if args.one is not None:  # a child process: one size, a JSON line on stdout
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one_size(model_dir, args.one, args.samples, args.chunk_size, tmp)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, __file__, "--model", model_dir, "--one", str(size)]
        command += ["--samples", str(args.samples), "--chunk-size", str(args.chunk_size)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"scaling: {size} problems failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first = rows[0]
    for r in rows:
        r["seconds_per_problem"] = round(r["seconds"] / r["problems"], 4)
        r["time_ratio"] = round(r["seconds"] / first["seconds"], 2)
        r["size_ratio"] = round(r["problems"] / first["problems"], 2)
    harness.print_table(
        f"Collection against problems (T=2, N={args.samples}, chunks of {args.chunk_size})",
        ["problems", "x size", "s", "x time", "s/problem", "tokens", "peak RSS MiB"],
        [
            [r[k] for k in ("problems", "size_ratio", "seconds", "time_ratio")]
            + [r[k] for k in ("seconds_per_problem", "generated_tokens", "peak_rss_mib")]
            for r in rows
        ],
    )
    harness.write_result(
        "scaling",
        args,
        {"model": model_dir, "samples": args.samples, "chunk_size": args.chunk_size, "sizes": rows},
    )


if __name__ == "__main__":
    main()
