"""Where a decoding step's time goes: `rise collect` on the toy model, split by what runs.

The same collection as `rollout.py` (T=2, N=16, temperature 1.0, the engine's default cache and
compaction) at each batch size, after a discarded warm-up round. Two views:

- **Stages**, wall time: the functions that make up sampling are wrapped with timers that
  charge each moment to the innermost running stage (exclusive time): the prefill, the decoding
  forward split into attention, mask building, cache writes and the rest of the model (matrix
  products, norms, rotary, MLP, LM head), `generate`'s own loop (input preparation, logits
  processors, sampling, stopping criteria, bookkeeping), compaction, detokenising, and the
  episode logic around it (prompts, verifier). The wrappers cost about a microsecond a call, a
  few percent of the total, so the run with them is reported beside the unwrapped run's rate.
- **Operators**: a `torch.profiler` table of one collection's ops by self CPU time.

    python benchmarks/decoding_step.py                      # batch 64 and 512
    python benchmarks/decoding_step.py --batch-sizes 512 --problems 128
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable

import harness
from torch.profiler import ProfilerActivity, profile
from transformers import AttentionInterface, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.utils import GenerationMixin

from rise_llm import collect
from rise_llm.engines import kv_cache
from rise_llm.engines.batch_sampler import BatchSampler
from rise_llm.engines.hf import HFEngine


class StageClock:
    """Exclusive wall time per stage: time goes to the innermost stage running."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list] = []  # [stage, start of its current stretch]
        self.absorbing = False

    def wrap(self, stage: str, fn: Callable, absorbs: bool = False) -> Callable:
        """`fn` timed as `stage`; with `absorbs`, the stages it calls are charged to it too."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.absorbing:
                return fn(*args, **kwargs)
            self.absorbing = absorbs
            now = self.now()
            if self.stack:
                outer = self.stack[-1]
                self.seconds[outer[0]] += now - outer[1]
            self.stack.append([stage, now])
            self.calls[stage] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                end = self.now()
                self.absorbing = False
                self.seconds[stage] += end - self.stack.pop()[1]
                if self.stack:
                    self.stack[-1][1] = end

        return timed


def patch_stages(clock: StageClock, model) -> list[Callable[[], None]]:
    """Wrap the stages' functions with `clock`; returns the undo steps."""
    undo = []

    def patch(owner, name: str, stage: str, absorbs: bool = False) -> None:
        original = getattr(owner, name)
        setattr(owner, name, clock.wrap(stage, original, absorbs))
        undo.append(lambda: setattr(owner, name, original))

    patch(collect, "collect_chunk", "episode logic (prompts, verifier, records)")
    patch(HFEngine, "generate", "engine: batching, progress")
    patch(BatchSampler, "_prefill", "prefill (prompts, once each)", absorbs=True)
    patch(BatchSampler, "_decode", "detokenise")
    patch(GenerationMixin, "generate", "generate: set-up per call")
    patch(GenerationMixin, "_sample", "generate loop: sampling, bookkeeping")
    patch(GenerationMixin, "prepare_inputs_for_generation", "generate loop: input preparation")
    patch(
        GenerationMixin, "_update_model_kwargs_for_generation", "generate loop: input preparation"
    )
    patch(LogitsProcessorList, "__call__", "logits processors (temperature, top-p)")
    patch(StoppingCriteriaList, "__call__", "stopping criteria")
    patch(type(model), "forward", "model: matmuls, norms, rotary, MLP, head")
    llama = __import__("transformers.models.llama.modeling_llama", fromlist=["x"])
    patch(llama, "create_causal_mask", "model: attention mask")
    patch(kv_cache.PreallocatedLayer, "update", "model: KV cache writes")
    patch(kv_cache.PreallocatedLayer, "keep_rows", "compaction (drop finished rows)")
    shared = AttentionInterface._global_mapping[kv_cache.SHARED_PREFIX]
    AttentionInterface.register(kv_cache.SHARED_PREFIX, clock.wrap("model: attention", shared))
    undo.append(lambda: AttentionInterface.register(kv_cache.SHARED_PREFIX, shared))
    return undo


def collect_once(
    model, tokenizer, task, problems, batch_size: int, config, params
) -> tuple[int, float]:
    engine = HFEngine(model, tokenizer, batch_size=batch_size)
    start = time.perf_counter()
    episodes = collect.collect_chunk(engine, engine, task, problems, config, params)
    seconds = time.perf_counter() - start
    return harness.generated(episodes)[0], seconds


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="64,512")
    p.add_argument("--problems", type=int, default=256)
    p.add_argument("--profile-problems", type=int, default=64, help="0: no operator table")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    harness.setup(args)
    collection = harness.toy_collection(args, turns=2)
    model_dir, model, tokenizer, task, problems, config, params = collection
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    collect_once(model, tokenizer, task, problems[:64], sizes[0], config, params)  # warm-up

    results = {}
    for b in sizes:
        tokens, plain = collect_once(model, tokenizer, task, problems, b, config, params)
        clock = StageClock()
        undo = patch_stages(clock, model)
        try:
            _, wrapped = collect_once(model, tokenizer, task, problems, b, config, params)
        finally:
            for step in reversed(undo):
                step()
        stages = dict(sorted(clock.seconds.items(), key=lambda kv: -kv[1]))
        results[b] = {
            "generated_tokens": tokens,
            "seconds": round(plain, 2),
            "tokens_per_s": round(tokens / plain, 1),
            "seconds_with_timers": round(wrapped, 2),
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
            "stage_calls": dict(clock.calls),
            "decoding_steps": clock.calls["model: matmuls, norms, rotary, MLP, head"],
        }
        steps = results[b]["decoding_steps"]
        harness.print_table(
            f"batch {b}: {tokens:,} tokens in {plain:.1f} s ({tokens / plain:,.0f} tok/s; "
            f"{wrapped:.1f} s with the timers), {steps} decoding steps",
            ["stage", "s", "share", "ms per step", "calls"],
            [
                [k, round(v, 2), f"{100 * v / wrapped:.1f}%", 1000 * v / steps, clock.calls[k]]
                for k, v in stages.items()
            ],
        )
        if args.profile_problems:
            subset = problems[: args.profile_problems]
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                collect_once(model, tokenizer, task, subset, b, config, params)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
            results[b]["ops_self_share"] = {
                e.key: round(e.self_cpu_time_total / total, 4) for e in top
            }
            results[b]["ops_calls"] = {e.key: e.count for e in top}
            harness.print_table(
                f"batch {b}: ops by self CPU time ({args.profile_problems} problems)",
                ["op", "share", "calls"],
                [[e.key, f"{100 * e.self_cpu_time_total / total:.1f}%", e.count] for e in top],
            )
    harness.write_result(
        "decoding_step",
        args,
        {
            "model": model_dir,
            "settings": {
                "turns": 2,
                "samples": args.samples,
                "temperature": 1.0,
                "max_new_tokens": params.max_new_tokens,
                "seed": args.seed,
            },
            "batches": {str(b): r for b, r in results.items()},
        },
    )


if __name__ == "__main__":
    main()
