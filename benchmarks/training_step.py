"""Where a training step's time goes: the toy model's SFT step under each variant, profiled.

Each variant trains a fresh toy-shaped model (`rise toy-model`'s shape, random weights: the
time of a step does not depend on the weights) on the same batches `rise toy-model` makes
(step 0.. of its data, padded per batch), with its optimiser (fused AdamW) and clipping:

- float32 / bf16: the products in float32, or in bf16 under CPU autocast (float32 weights);
- attention: transformers' `sdpa` (the default) or `eager`;
- no mask: the batch without its attention mask. Right padding under a causal mask never lets
  a real token see a pad, so the mask only tells sdpa it cannot take its causal fast path;
- compiled: `model.compile(dynamic=True)`; its warm-up (the compilation) is timed apart.

A discarded round of the first variant warms the process up (its first steps ran 30-50%
slower). Per variant: warm-up seconds (2 steps; for a compiled model the compilation, faster
when inductor's cache in /tmp already holds it), then real tokens/s over the timed steps, and
for the float32 and bf16 sdpa variants a `torch.profiler` table of the ops that took the most time.

    python benchmarks/training_step.py                  # every variant
    python benchmarks/training_step.py --variants float32 bf16 --steps 6
"""

from __future__ import annotations

import time

import harness
import torch
from torch.profiler import ProfilerActivity, profile

from rise_llm.precision import cpu_autocast, cpu_has_native_bf16
from rise_llm.tasks.arith import ArithTask
from rise_llm.toy_model import ToyModelConfig, build_model, build_tokenizer, make_batch

# name -> (bf16, attention, keep the mask, compile)
VARIANTS = {
    "float32": (False, "sdpa", True, False),
    "bf16": (True, "sdpa", True, False),
    "float32 eager": (False, "eager", True, False),
    "bf16 eager": (True, "eager", True, False),
    "float32 no mask": (False, "sdpa", False, False),
    "bf16 no mask": (True, "sdpa", False, False),
    "float32 compiled": (False, "sdpa", True, True),
    "bf16 compiled": (True, "sdpa", True, True),
}
PROFILED = ("float32", "bf16")
WARMUP = 2


def time_variant(name: str, batches: list[dict], profile_steps: int) -> dict:
    bf16, attention, mask, compiled = VARIANTS[name]
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(ToyModelConfig(out=""), tokenizer)
    model.set_attn_implementation(attention)
    model.train()
    if compiled:
        model.compile(dynamic=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step(batch: dict) -> None:
        inputs = batch if mask else {k: v for k, v in batch.items() if k != "attention_mask"}
        with cpu_autocast(bf16):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for batch in batches[:WARMUP]:
        step(batch)
    warmup = time.perf_counter() - start
    timed = batches[WARMUP:]
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    seconds = time.perf_counter() - start
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    result = {
        "warmup_seconds": round(warmup, 2),
        "seconds_per_step": round(seconds / len(timed), 4),
        "real_tokens_per_s": round(tokens / seconds, 1),
    }
    if name in PROFILED and profile_steps:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in timed[:profile_steps]:
                step(batch)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        result["profile_self_share"] = {e.key: round(e.self_cpu_time_total / total, 4) for e in top}
    return result


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--profile-steps", type=int, default=4, help="0: no profile")
    args = p.parse_args()
    harness.setup(args)
    config = ToyModelConfig(out="", batch_size=args.batch_size)
    task = ArithTask(seed=config.seed)
    pool = task.problems("train", 20_000)
    tokenizer = build_tokenizer()
    batches = [make_batch(config, task, pool, tokenizer, s) for s in range(WARMUP + args.steps)]
    # the process's first steps run slower (allocator, page faults, thread pool): a discarded
    # round of the first variant keeps that out of its figures
    time_variant(args.variants[0], batches, profile_steps=0)
    results = {}
    for name in args.variants:
        results[name] = time_variant(name, batches, args.profile_steps)
        harness.stdout.print(f"{name}: {results[name]['real_tokens_per_s']:,.0f} tok/s")
    first = results[args.variants[0]]["real_tokens_per_s"]
    for r in results.values():
        r["speed_vs_first"] = round(r["real_tokens_per_s"] / first, 3)
    harness.print_table(
        f"Toy SFT step, batch {args.batch_size}, {args.steps} timed steps "
        f"(native bf16: {cpu_has_native_bf16()})",
        ["variant", "warm-up s", "s/step", "real tok/s", "vs first"],
        [
            [
                n,
                r["warmup_seconds"],
                r["seconds_per_step"],
                r["real_tokens_per_s"],
                r["speed_vs_first"],
            ]
            for n, r in results.items()
        ],
    )
    for name, r in results.items():
        if "profile_self_share" in r:
            harness.print_table(
                f"{name}: ops by self CPU time",
                ["op", "share"],
                [[op, f"{100 * s:.1f}%"] for op, s in r["profile_self_share"].items()],
            )
    harness.write_result(
        "training_step",
        args,
        {
            "batch_size": args.batch_size,
            "steps": args.steps,
            "cpu_has_native_bf16": cpu_has_native_bf16(),
            "variants": results,
        },
    )


if __name__ == "__main__":
    main()
