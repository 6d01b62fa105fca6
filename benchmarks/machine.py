"""The machine's limit: fp32 matmul throughput of this CPU through torch, and the model FLOPs
utilisation (MFU) of the rollout and training figures against it.

Peak: the best of `--reps` timed n x n x n float32 matmuls (2 n^3 FLOPs each), with torch's
threads (all cores) and with one thread. MFU uses the usual dense-model counts, read from
benchmarks/results/rollout.json and training.json (run those first; missing ones are skipped),
against the peak at the thread count each was measured with:
training 6 x N x tokens (forward + backward), generation 2 x N x tokens. Both leave out
attention over the context (4 x layers x hidden x context per token, forward), which for the
toy's short contexts adds a few tens of percent, and count real tokens only (padding and the
prompt prefill are work the count does not credit).

    python benchmarks/machine.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import harness
import torch


def matmul_gflops(n: int, reps: int, threads: int) -> dict[str, float]:
    """Best and median GFLOP/s of n x n x n fp32 matmuls on `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    times.sort()
    flops = 2 * n**3
    return {
        "threads": threads,
        "best_gflops": round(flops / times[0] / 1e9, 2),
        "median_gflops": round(flops / times[len(times) // 2] / 1e9, 2),
    }


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--results", default=str(harness.RESULTS), help="folder of the other results")
    args = p.parse_args()
    harness.setup(args)
    all_threads = matmul_gflops(args.size, args.reps, torch.get_num_threads())
    one_thread = matmul_gflops(args.size, args.reps, 1)
    peak = all_threads["best_gflops"] * 1e9
    rows = [
        [
            f"fp32 matmul {args.size}^3, {all_threads['threads']} threads",
            all_threads["best_gflops"],
            all_threads["median_gflops"],
            None,
        ],
        [
            f"fp32 matmul {args.size}^3, 1 thread",
            one_thread["best_gflops"],
            one_thread["median_gflops"],
            None,
        ],
    ]
    mfu: dict[str, dict[str, float]] = {}
    results = Path(args.results)
    peaks = {all_threads["threads"]: peak, 1: one_thread["best_gflops"] * 1e9}

    def peak_of(result: dict) -> float:
        """The peak at the thread count the result was measured with."""
        return peaks.get(result.get("machine", {}).get("torch_threads"), peak)

    rollout = read(results / "rollout.json")
    if rollout:
        n, top = rollout["parameters"], peak_of(rollout)
        for b, r in rollout["ours"].items():
            mfu[f"generation, batch {b}"] = flops_record(2 * n, r["tokens_per_s"], top)
        reference = rollout["reference"]["tokens_per_s"]
        mfu["generation, reference"] = flops_record(2 * n, reference, top)
    training = read(results / "training.json")
    if training:
        n, top = training["parameters"], peak_of(training)
        for precision, timed in training["precisions"].items():
            for name, key in (("rise train", "rise_train"), ("raw loop", "raw_loop")):
                rate = timed[key]["tokens_per_s"]
                mfu[f"training {precision}, {name}"] = flops_record(6 * n, rate, top)
    for name, r in mfu.items():
        rows.append([name, r["gflops"], None, f"{100 * r['mfu']:.3g}%"])
    harness.print_table(
        "Machine limit and model FLOPs utilisation", ["", "GFLOP/s", "median", "MFU"], rows
    )
    harness.write_result(
        "machine",
        args,
        {
            "matmul": {
                "size": args.size,
                "reps": args.reps,
                "all_threads": all_threads,
                "one_thread": one_thread,
            },
            "mfu": mfu,
            "mfu_flops_per_token": "training 6N, generation 2N (no attention term)",
        },
    )


def flops_record(flops_per_token: float, tokens_per_s: float, peak: float) -> dict[str, float]:
    achieved = flops_per_token * tokens_per_s
    return {
        "tokens_per_s": tokens_per_s,
        "peak_gflops": round(peak / 1e9, 2),
        "gflops": float(f"{achieved / 1e9:.4g}"),
        "mfu": float(f"{achieved / peak:.4g}"),
    }


if __name__ == "__main__":
    main()
