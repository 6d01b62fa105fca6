"""Rollout speed: `rise collect` on the toy model against the reference's way of sampling.

Ours: `collect.collect_chunk` (the code `rise collect` runs) over the same problems at several
engine batch sizes; turn t of all episodes is one batched `HFEngine.generate` call.

Reference approach, measured in the same process on the same model: the authors' FastChat
worker is driven one request at a time, so every sample is its own `model.generate` call on a
single prompt and problems follow one another. It runs through the same `collect_chunk` (same
prompts, verifier and episode logic) with an engine that makes one call per sample, with the
same sampling settings: temperature 1.0, top_p 1, no top-k, same max_new_tokens, KV cache on,
stop at end of turn. It is measured on fewer problems (`--reference-problems`); rates are per
token and per episode, so the ratio compares like with like.

    python benchmarks/rollout.py                  # batch sizes 16 64 128 256 512, 256 problems
    python benchmarks/rollout.py --cache preallocated --compact-at 0   # the engine before
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import harness
import torch
from transformers import GenerationConfig

from rise_llm.chat import prompt_ids
from rise_llm.collect import collect_chunk
from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.engines.hf import HFEngine
from rise_llm.records import Message


class OneAtATimeEngine:
    """The reference's sampling: one `model.generate` call per sample, batch of one."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.eos = {tokenizer.eos_token_id}
        eos = model.generation_config.eos_token_id
        self.eos |= set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())

    @torch.inference_mode()
    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        params: SamplingParams,
        desc: str = "generate",
        keys: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        config = GenerationConfig(
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos),
            use_cache=True,
        )
        torch.manual_seed(params.seed)
        results = []
        for conv in conversations:
            completions = []
            for _ in range(n):
                ids = torch.tensor([prompt_ids(self.tokenizer, conv)])
                out = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
                )
                row = out[0, ids.shape[1] :].tolist()
                end = next((i + 1 for i, t in enumerate(row) if t in self.eos), None)
                finish, cut = ("stop", end) if end else ("length", len(row))
                text = self.tokenizer.decode(row[:cut], skip_special_tokens=True)
                completions.append(Completion(text=text, num_tokens=cut, finish_reason=finish))
            results.append(completions)
        return results


def measure(engine, task, problems, config, params) -> dict[str, float]:
    start = time.perf_counter()
    episodes = collect_chunk(engine, engine, task, problems, config, params)
    seconds = time.perf_counter() - start
    tokens, samples = harness.generated(episodes)
    return {
        "problems": len(problems),
        "samples": samples,
        "generated_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "episodes_per_s": round(len(problems) / seconds, 3),
    }


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="16,64,128,256,512")
    p.add_argument("--problems", type=int, default=256, help="problems per batch-size run")
    p.add_argument("--reference-problems", type=int, default=16)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache", default="auto", help="HFEngine cache: auto, shared, preallocated, ..."
    )
    p.add_argument(
        "--compact-at", type=float, default=0.5, help="HFEngine compact_at (0: never compact)"
    )
    args = p.parse_args()
    harness.setup(args)
    collection = harness.toy_collection(args, args.turns)
    model_dir, model, tokenizer, task, problems, config, params = collection
    # warm-up: first calls pay one-off costs (lazy initialisation, allocator growth)
    HFEngine(model, tokenizer, batch_size=8).generate(
        [task.prompt.first_messages(p) for p in problems[:8]], 1, params
    )

    reference = measure(
        OneAtATimeEngine(model, tokenizer),
        task,
        problems[: args.reference_problems],
        config,
        params,
    )
    ours = {}
    for b in (int(x) for x in args.batch_sizes.split(",")):
        engine = HFEngine(
            model, tokenizer, batch_size=b, cache=args.cache, compact_at=args.compact_at
        )
        ours[b] = measure(engine, task, problems, config, params)
        ours[b]["tokens_ratio"] = round(ours[b]["tokens_per_s"] / reference["tokens_per_s"], 1)
        ours[b]["episodes_ratio"] = round(
            ours[b]["episodes_per_s"] / reference["episodes_per_s"], 1
        )

    columns = ["sampling", "problems", "samples", "tokens", "s", "tok/s", "episodes/s", "x ref"]
    rows = [
        ["reference, 1 call per sample"]
        + [reference[k] for k in ("problems", "samples", "generated_tokens", "seconds")]
        + [reference["tokens_per_s"], reference["episodes_per_s"], 1.0]
    ]
    for b, r in ours.items():
        rows.append(
            [f"rise collect, batch {b}"]
            + [r[k] for k in ("problems", "samples", "generated_tokens", "seconds")]
            + [r["tokens_per_s"], r["episodes_per_s"], r["tokens_ratio"]]
        )
    harness.print_table(
        f"Collection (T={args.turns}, N={args.samples}, temperature 1.0, "
        f"max_new_tokens {params.max_new_tokens}) on {model_dir}",
        columns,
        rows,
    )
    harness.write_result(
        "rollout",
        args,
        {
            "model": model_dir,
            "parameters": harness.parameters(model),
            "settings": {
                "turns": args.turns,
                "samples": args.samples,
                "temperature": 1.0,
                "top_p": 1.0,
                "max_new_tokens": params.max_new_tokens,
                "seed": args.seed,
                "cache": args.cache,
                "compact_at": args.compact_at,
            },
            "reference": reference,
            "ours": {str(b): r for b, r in ours.items()},
        },
    )


if __name__ == "__main__":
    main()
