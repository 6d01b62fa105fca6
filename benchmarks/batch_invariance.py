"""Batch invariance: one collection sampled at engine batch 64, at batch 512, and as 3 shards.

Every sample draws from its own random stream (`seeds.stream_seed` of seed, problem, turn and
sample index), so the three must agree; what can still differ is the float rounding of the
logits between batch shapes, which changes a draw only when its uniform falls within that
rounding of a boundary of the cumulative distribution. This counts, against batch 512: the
samples whose context was the same but whose response differs (a flip; what follows a flip in
its episode is not counted again), per million generated tokens. The toy in float32, as
`rise collect` runs it (`collect.collect_chunk`, T=2, N=16, temperature 1.0). Last, what the
draw itself costs per decoding step against transformers' multinomial.

    python benchmarks/batch_invariance.py             # 256 problems
    python benchmarks/batch_invariance.py --first-turn --model MODEL.gguf --problems 48 --samples 4

`--first-turn` compares `HFEngine.generate` alone on the problems' first prompts (batch 64
against 512, and every other conversation alone against all), for models too slow to collect
with, and counts every token after a sample's first difference as differing.
"""

from __future__ import annotations

import time

import harness
import torch

from rise_llm.collect import collect_chunk, shard_problems
from rise_llm.engines.hf import HFEngine
from rise_llm.engines.row_streams import row_stream_processors, stream_uniforms


def collect(model, tokenizer, batch_size, collection, problems):
    engine = HFEngine(model, tokenizer, batch_size=batch_size)
    _, _, _, task, _, config, params = collection
    return collect_chunk(engine, engine, task, problems, config, params)


def tokens_after_difference(tokenizer, a: str, b: str) -> int:
    """Tokens of the longer of two texts from their first differing token on."""
    x, y = tokenizer(a)["input_ids"], tokenizer(b)["input_ids"]
    same = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), None)
    return max(len(x), len(y)) - (min(len(x), len(y)) if same is None else same)


def compare(reference, other, tokenizer) -> dict[str, int]:
    """Samples and tokens of `reference`; samples of `other` that differ at an equal context."""
    by_id = {ep.problem_id: ep for ep in other}
    counts = {"samples": 0, "tokens": 0, "compared": 0, "flips": 0, "flipped_tokens": 0}
    for ep in reference:
        theirs = {t.index: t for t in by_id[ep.problem_id].turns}
        for turn in ep.turns:
            counts["samples"] += len(turn.attempts)
            counts["tokens"] += sum(a.num_tokens for a in turn.attempts)
            twin = theirs.get(turn.index)
            if twin is None or twin.messages != turn.messages:
                continue  # downstream of a flip at an earlier turn
            for a, b in zip(turn.attempts, twin.attempts, strict=True):
                counts["compared"] += 1
                if a.response != b.response:
                    counts["flips"] += 1
                    counts["flipped_tokens"] += tokens_after_difference(
                        tokenizer, a.response, b.response
                    )
    return counts


def sampling_cost(rows: int, vocab: int, steps: int, repeats: int = 300) -> dict[str, float]:
    """Microseconds per decoding step of the token draw alone, on (rows, vocab) float32 scores:
    transformers' softmax + multinomial on the global generator against the row streams'
    processor + greedy argmax, timed in alternation in this process; and the milliseconds to
    draw a batch's uniforms (`stream_uniforms`, once per batch of `steps` new tokens)."""
    scores = torch.randn(rows, vocab)
    uniforms = stream_uniforms(list(range(rows)), repeats + 1, torch.device("cpu"))
    processors = row_stream_processors(1.0, 1.0, uniforms, torch.arange(rows), 0)
    ids = torch.zeros(rows, 1, dtype=torch.long)
    ours = theirs = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
        theirs += time.perf_counter() - start
        start = time.perf_counter()
        processors(ids, scores.clone()).argmax(-1)
        ours += time.perf_counter() - start
    start = time.perf_counter()
    stream_uniforms(list(range(rows)), steps, torch.device("cpu"))
    return {
        "multinomial_us_per_step": round(1e6 * theirs / repeats, 1),
        "row_streams_us_per_step": round(1e6 * ours / repeats, 1),
        "uniforms_ms_per_batch": round(1e3 * (time.perf_counter() - start), 2),
    }


def first_turn(collection, samples: int) -> dict[str, dict[str, int]]:
    """Turn-1 samples at batch 64 and 512, and every other conversation without the rest."""
    from rise_llm.seeds import problem_key

    _, model, tokenizer, task, problems, _, params = collection
    convs = [task.prompt.first_messages(p) for p in problems]
    keys = [problem_key(p.id) for p in problems]

    def sample(batch_size, which):
        engine = HFEngine(model, tokenizer, batch_size=batch_size)
        return engine.generate(convs[which], samples, params, keys=keys[which])

    every = slice(None)
    reference = sample(512, every)
    runs = {
        "batch 64": (sample(64, every), reference),
        "every other alone": (sample(512, slice(None, None, 2)), reference[::2]),
    }
    results = {}
    for name, (ours, theirs) in runs.items():
        c = {"samples": 0, "tokens": 0, "compared": 0, "flips": 0, "flipped_tokens": 0}
        for a_samples, b_samples in zip(theirs, ours, strict=True):
            for a, b in zip(a_samples, b_samples, strict=True):
                c["samples"] += 1
                c["compared"] += 1
                c["tokens"] += a.num_tokens
                if a.text != b.text:
                    c["flips"] += 1
                    c["flipped_tokens"] += tokens_after_difference(tokenizer, a.text, b.text)
        results[name] = c
    return results


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=256)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-turn", action="store_true", help="engine calls on turn-1 prompts only")
    args = p.parse_args()
    harness.setup(args)
    collection = harness.toy_collection(args, args.turns)
    model, tokenizer, problems = collection.model, collection.tokenizer, collection.problems

    start = time.perf_counter()
    if args.first_turn:
        results = first_turn(collection, args.samples)
        seconds = {"all": round(time.perf_counter() - start, 1)}
    else:
        reference = collect(model, tokenizer, 512, collection, problems)
        seconds = {"batch 512": round(time.perf_counter() - start, 1)}
        runs = {}
        start = time.perf_counter()
        runs["batch 64"] = collect(model, tokenizer, 64, collection, problems)
        seconds["batch 64"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        sharded = []
        for i in range(args.shards):
            part = shard_problems(problems, f"{i}/{args.shards}")
            sharded += collect(model, tokenizer, 512, collection, part)
        runs[f"{args.shards} shards, batch 512"] = sharded
        seconds[f"{args.shards} shards"] = round(time.perf_counter() - start, 1)
        results = {name: compare(reference, episodes, tokenizer) for name, episodes in runs.items()}
    rows = []
    for name, c in results.items():
        c["flips_per_million_tokens"] = round(1e6 * c["flips"] / c["tokens"], 1)
        c["differing_tokens_per_million"] = round(1e6 * c["flipped_tokens"] / c["tokens"], 1)
        rows.append(
            [f"{name} vs batch 512"]
            + [c[k] for k in ("samples", "tokens", "compared", "flips")]
            + [c["flips_per_million_tokens"]]
        )
    harness.print_table(
        f"Batch invariance ({'turn 1 only' if args.first_turn else f'T={args.turns}'}, "
        f"N={args.samples}, {args.problems} problems, float32) on {collection.model_dir}",
        ["collection", "samples", "tokens", "compared", "differing", "flips per M tokens"],
        rows,
    )
    vocab = model.get_output_embeddings().weight.shape[0]
    steps = collection.params.max_new_tokens
    cost = {rows: sampling_cost(rows, vocab, steps) for rows in (64, 512)}
    harness.print_table(
        f"The token draw alone, per decoding step (vocabulary {vocab}, {steps} new tokens)",
        ["rows", "multinomial us", "row streams us", "uniforms ms per batch"],
        [[rows, *c.values()] for rows, c in cost.items()],
    )
    harness.write_result(
        "batch_invariance",
        args,
        {
            "model": collection.model_dir,
            "settings": {
                "turns": args.turns,
                "samples": args.samples,
                "problems": args.problems,
                "max_new_tokens": collection.params.max_new_tokens,
                "seed": args.seed,
                "dtype": "float32",
                "first_turn": args.first_turn,
            },
            "seconds": seconds,
            "against_batch_512": results,
            "draw_cost": {str(rows): c for rows, c in cost.items()},
        },
    )


if __name__ == "__main__":
    main()
