"""The CUDA paths on one GPU (issue 18, item 6): bf16 training, the shared-prompt attention, and
generation speed against the GPU's memory bandwidth, on the toy and on a toy 10x larger.

Written for the H200 (`--device auto` takes CUDA when there is one); `--tiny` runs the same code
on the CPU at a tiny size, which is how `tests/test_benchmarks.py` keeps it working. Nothing in
the tests or CI needs a GPU. Models are toy-shaped with random weights (a step's time does not
depend on the weights): "toy" is `rise toy-model`'s default shape (4 layers, hidden 128, ~0.8M
parameters), "toy x10" 10 layers of hidden 256 (~8M, 10x).

1. **Training**: the step `rise train --bf16 true` takes: the RWR loss (`train.weighted_nll`)
   on `train.ExampleDataset` batches padded by `train.PadCollator` (here arith SFT
   conversations as the toy is built from, weight 1), AdamW, clipping to 1. On CUDA the weights
   are bf16 and the step runs under bf16 autocast, as the Trainer does with bf16 weights
   (`train._weights_dtype`); on the CPU bf16 is mixed precision (float32 weights, autocast).
   Per model: s/step and real tokens/s over the timed steps after 2 warm-up steps, peak CUDA
   memory, and the losses, which must be finite and fall (lr 1e-3: the default 1e-5 is below
   a bf16 weight's rounding step for these weights, the coarser updates README "Training" notes).
2. **Shared-prompt attention against sdpa**, toy x10 in bf16 on the device: prompts prefilled
   once, their samples decoded over the prompt's one cached copy (`kv_cache.share_prefix`,
   `attending_shared_prefix`) or over repeated rows with transformers' sdpa (`repeat_rows`), as
   `tests/test_kv_cache.py` compares them in float64; both fed the same tokens. bf16 keeps 8
   bits of mantissa, so two paths that sum in another order differ by a few bf16 rounding
   steps of a logit (~4e-3 of its size) and no fixed tolerance fits every model: each path is
   compared with the float32 computation of the same model instead, and the shared path passes
   when its largest logit error is at most twice sdpa's own. The share of greedy (argmax)
   tokens on which the two bf16 paths agree is reported beside it.
3. **Generation**: `HFEngine` with toy x10 in bf16, greedy, at batch 64, 256 and 512 (16 samples
   per prompt, as `rise collect` draws), a fixed number of new tokens (the end-of-turn token's
   embedding is zeroed, so its logit is 0 and never the largest: no row stops early).
   tokens/s against a memory-bandwidth bound: each decoding step reads the weights once, each
   prompt's cached keys and values once (the shared cache) and each row's own generated ones;
   that many bytes over `--bandwidth-gbs` (the H200's 4,800 GB/s on CUDA; on the CPU no bound
   unless given) is the fastest a step can go, and the table says what share of it was reached.

Each part's verdict (losses finite and falling, attention within tolerance, every row run to
length) is printed and recorded under `checks`; a failed one does not stop the script, so the
other parts' figures are still recorded.

Budget at full size on an H200: well under a minute of GPU work (training 2 x 12 steps of batch
32; the attention check 8 prompts x 4 samples x 32 tokens; generation 3 x 128 tokens), plus
CUDA start-up and imports (~30 s): 2 minutes at most, far below the 10 allowed.

    .venv/bin/python benchmarks/gpu_check.py                      # on the GPU
    .venv/bin/python benchmarks/gpu_check.py --tiny --device cpu  # the tiny CPU run of the test
"""

from __future__ import annotations

import contextlib
import math
import random
import time

import harness
import torch

from rise_llm.chat import prompt_ids
from rise_llm.engines.base import SamplingParams
from rise_llm.engines.hf import HFEngine
from rise_llm.engines.kv_cache import attending_shared_prefix, cache_kwarg, preallocated_cache
from rise_llm.records import TrainingExample
from rise_llm.tasks.arith import ArithTask
from rise_llm.toy_model import ToyModelConfig, build_model, build_tokenizer, sft_conversation
from rise_llm.train import ExampleDataset, PadCollator, weighted_nll

# name -> (layers, hidden, heads)
FULL = {"toy": (4, 128, 4), "toy x10": (10, 256, 4)}
TINY = {"toy": (2, 32, 2), "toy x10": (2, 64, 2)}
H200_GBS = 4800.0
WARMUP = 2


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def toy(shape: tuple[int, int, int], tokenizer, seed: int = 0):
    layers, hidden, heads = shape
    torch.manual_seed(seed)
    return build_model(ToyModelConfig(out="", layers=layers, hidden=hidden, heads=heads), tokenizer)


def autocast(device: torch.device):
    """bf16 autocast on the device: the Trainer's `bf16=True`, and `cpu_autocast` on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def training_batches(tokenizer, batch_size: int, count: int) -> list[dict]:
    """`count` batches of RWR examples (arith SFT conversations of 1-3 problems, weight 1)."""
    task = ArithTask(seed=0)
    pool = task.problems("train", 2_000)
    rng = random.Random("gpu_check")
    examples = []
    for i in range(batch_size * count):
        messages, _ = sft_conversation(task, pool, 1 + i % 3, 0.5, rng)
        examples.append(TrainingExample(messages, reward=1, weight=1.0, turn=1, problem_id=str(i)))
    dataset = ExampleDataset(examples, tokenizer, max_length=2048)
    collate = PadCollator(tokenizer.pad_token_id)
    items = [dataset[i] for i in range(len(dataset))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def train_check(shape, tokenizer, batches: list[dict], device: torch.device) -> dict:
    """Step time, tokens/s, peak memory and losses of bf16 RWR steps on a fresh toy model."""
    model = toy(shape, tokenizer)
    # bf16 weights on a GPU, float32 under autocast on the CPU (train._weights_dtype)
    model.to(device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []

    def step(batch: dict) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            loss = weighted_nll(out.logits, batch["labels"], batch["weights"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronises, as the Trainer's logging does

    for batch in batches[:WARMUP]:
        step(batch)
    synchronize(device)
    timed = batches[WARMUP:]
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    return {
        "parameters": harness.parameters(model),
        "weights_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batch_size": len(batches[0]["weights"]),
        "timed_steps": len(timed),
        "seconds_per_step": round(seconds / len(timed), 5),
        "real_tokens_per_s": round(tokens / seconds, 1),
        "peak_memory_mib": (
            round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            if device.type == "cuda"
            else None
        ),
        "losses": [round(x, 4) for x in losses],
        "finite": all(math.isfinite(x) for x in losses),
        "decreased": losses[-1] < losses[0],
    }


def arith_prompts(tokenizer, count: int) -> list[list[int]]:
    task = ArithTask(seed=0)
    return [
        prompt_ids(tokenizer, task.prompt.first_messages(p)) for p in task.problems("test", count)
    ]


@torch.inference_mode()
def decode_logits(model, prompts, samples: int, tokens: torch.Tensor, share: bool) -> torch.Tensor:
    """Prefill each prompt once, give its `samples` rows its cache (one shared copy or repeated
    rows), then decode `tokens` [rows, steps] (the same for every path); each step's logits."""
    device = next(model.parameters()).device
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    steps = tokens.shape[1]
    cache = preallocated_cache(model.config, width + steps)
    model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        **cache_kwarg(model, cache),
        use_cache=True,
    )
    counts = torch.full((len(prompts),), samples, device=device)
    mask = mask.repeat_interleave(samples, dim=0)
    logits = []
    with attending_shared_prefix(model, cache) if share else contextlib.nullcontext():
        for layer in cache.layers:
            (layer.share_prefix if share else layer.repeat_rows)(counts)
        for step in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=tokens[:, step : step + 1].to(device),
                attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                **cache_kwarg(model, cache),
                use_cache=True,
            )
            logits.append(out.logits[:, -1].float())
    return torch.stack(logits, dim=1)


def attention_check(shape, tokenizer, device, prompts: int, samples: int, steps: int) -> dict:
    """The shared-prompt path against sdpa over repeated rows, both in bf16, each measured
    against the float32 computation of the same model."""
    model = toy(shape, tokenizer).to(device).eval()
    ids = arith_prompts(tokenizer, prompts)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(len(tokenizer), (prompts * samples, steps), generator=generator)
    reference = decode_logits(model, ids, samples, tokens, share=False)  # float32, sdpa
    model.to(torch.bfloat16)
    shared = decode_logits(model, ids, samples, tokens, share=True)
    sdpa = decode_logits(model, ids, samples, tokens, share=False)
    shared_error = (shared - reference).abs().max().item()
    sdpa_error = (sdpa - reference).abs().max().item()
    return {
        "prompts": prompts,
        "samples_per_prompt": samples,
        "decoding_steps": steps,
        "logit_scale": round(reference.abs().max().item(), 4),
        "max_logit_difference_shared_vs_sdpa": round((shared - sdpa).abs().max().item(), 6),
        "max_logit_error_shared_vs_float32": round(shared_error, 6),
        "max_logit_error_sdpa_vs_float32": round(sdpa_error, 6),
        "greedy_tokens_identical": round(
            (shared.argmax(-1) == sdpa.argmax(-1)).float().mean().item(), 4
        ),
        "within_tolerance": shared_error <= 2 * sdpa_error + 1e-6,
    }


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token holds in the cache, over all layers."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    element = next(model.parameters()).element_size()
    return c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * element


def bytes_read(model, prompt_width: int, prompts: int, rows: int, new_tokens: int) -> int:
    """Bytes a generation must read at least: per decoding step the weights once, each prompt's
    cached keys and values once (the shared cache) and each row's generated ones so far."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = kv_bytes_per_token(model)
    return sum(
        weights + kv * (prompts * prompt_width + rows * step) for step in range(1, new_tokens + 1)
    )


def generation_check(
    model, tokenizer, batch: int, samples: int, new_tokens: int, bandwidth_gbs: float | None
) -> dict:
    task = ArithTask(seed=0)
    problems = task.problems("test", max(1, batch // samples))
    conversations = [task.prompt.first_messages(p) for p in problems]
    n = batch // len(problems)
    engine = HFEngine(model, tokenizer, batch_size=batch)
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    device = engine.device
    synchronize(device)
    start = time.perf_counter()
    out = engine.generate(conversations, n=n, params=params, desc=f"batch {batch}")
    synchronize(device)
    seconds = time.perf_counter() - start
    generated = sum(c.num_tokens for samples_ in out for c in samples_)
    width = max(len(prompt_ids(tokenizer, c)) for c in conversations)
    need = bytes_read(model, width, len(problems), len(problems) * n, new_tokens)
    bound = None if bandwidth_gbs is None else need / (bandwidth_gbs * 1e9)
    return {
        "rows": len(problems) * n,
        "prompts": len(problems),
        "prompt_width": width,
        "new_tokens": new_tokens,
        "generated_tokens": generated,
        "all_ran_to_length": all(c.num_tokens == new_tokens for s in out for c in s),
        "seconds": round(seconds, 4),
        "tokens_per_s": round(generated / seconds, 1),
        "bytes_read_at_least": need,
        "bound_tokens_per_s": None if bound is None else round(generated / bound, 1),
        "share_of_bound": None if bound is None else round(bound / seconds, 5),
    }


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda, cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, for the CPU and the tests")
    p.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help=f"the device's memory bandwidth, GB/s (default on CUDA: {H200_GBS:,.0f}, the "
        "H200's; on the CPU no bound unless given)",
    )
    args = p.parse_args()
    harness.setup(args)
    device = device_of(args.device)
    bandwidth = args.bandwidth_gbs or (H200_GBS if device.type == "cuda" else None)
    shapes = TINY if args.tiny else FULL
    tokenizer = build_tokenizer()
    begin = time.perf_counter()

    batch_size, steps = (4, 4) if args.tiny else (32, 10)
    batches = training_batches(tokenizer, batch_size, WARMUP + steps)
    training = {name: train_check(s, tokenizer, batches, device) for name, s in shapes.items()}
    harness.print_table(
        f"bf16 training step on {device}, batch {batch_size}, {steps} timed steps",
        ["model", "params", "weights", "s/step", "real tok/s", "peak MiB", "first loss", "last"],
        [
            [
                n,
                r["parameters"],
                r["weights_dtype"],
                r["seconds_per_step"],
                r["real_tokens_per_s"],
                r["peak_memory_mib"],
                r["losses"][0],
                r["losses"][-1],
            ]
            for n, r in training.items()
        ],
    )

    prompts, samples, decode = (2, 2, 4) if args.tiny else (8, 4, 32)
    attention = attention_check(shapes["toy x10"], tokenizer, device, prompts, samples, decode)
    harness.print_table(
        f"shared-prompt attention against sdpa, bf16 on {device} (logit scale "
        f"{attention['logit_scale']})",
        ["max |shared - sdpa|", "shared vs float32", "sdpa vs float32", "argmax equal", "ok"],
        [
            [
                attention["max_logit_difference_shared_vs_sdpa"],
                attention["max_logit_error_shared_vs_float32"],
                attention["max_logit_error_sdpa_vs_float32"],
                attention["greedy_tokens_identical"],
                str(attention["within_tolerance"]),
            ]
        ],
    )

    sizes, per_prompt, new_tokens = ([4, 8], 2, 8) if args.tiny else ([64, 256, 512], 16, 128)
    model = toy(shapes["toy x10"], tokenizer).to(device, dtype=torch.bfloat16).eval()
    with torch.no_grad():  # end of turn never the largest logit: every row runs to length
        model.get_input_embeddings().weight[tokenizer.eos_token_id] = 0
    generation_check(model, tokenizer, sizes[0], per_prompt, 4, None)  # warm-up
    generation = {
        str(b): generation_check(model, tokenizer, b, per_prompt, new_tokens, bandwidth)
        for b in sizes
    }
    harness.print_table(
        f"HFEngine generation, toy x10 bf16 on {device}, {new_tokens} new tokens, greedy "
        f"(bound: {bandwidth or '-'} GB/s)",
        ["batch", "tokens", "s", "tok/s", "bound tok/s", "share of bound"],
        [
            [
                int(b),
                r["generated_tokens"],
                r["seconds"],
                r["tokens_per_s"],
                r["bound_tokens_per_s"],
                r["share_of_bound"],
            ]
            for b, r in generation.items()
        ],
    )
    checks = {
        "training losses finite and falling": all(
            r["finite"] and r["decreased"] for r in training.values()
        ),
        "shared-prompt attention within bf16 tolerance": attention["within_tolerance"],
        "every row generated to length": all(r["all_ran_to_length"] for r in generation.values()),
    }
    for name, ok in checks.items():
        harness.stdout.print(f"{'[green]ok' if ok else '[red]FAILED'}[/]: {name}")
    harness.write_result(
        "gpu_check",
        args,
        {
            "checks": checks,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "tiny": args.tiny,
            "bandwidth_gbs": bandwidth,
            "seconds": round(time.perf_counter() - begin, 1),
            "training": training,
            "attention": attention,
            "generation": generation,
        },
    )


if __name__ == "__main__":
    main()
