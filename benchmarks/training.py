"""Training speed: `rise train` (RWRTrainer on Hugging Face Trainer) against a raw PyTorch loop,
in float32 and in bf16 mixed precision (float32 weights, bf16 products under CPU autocast).

1. Padding: the batches the Trainer's data loader makes from the data, one epoch with length
   grouping (the default) and one without; the share of pad tokens in them.
2. `rise train` (`train.run`, the real command's function) on the data; the batches it trains
   on are recorded as its collator makes them. Time is the Trainer's `train()` wall time
   (train.json "seconds"), so loading and saving the model are left out of both sides.
3. A raw loop over exactly those batches: forward, the same weighted loss, backward, gradient
   clipping at 1.0, fused AdamW and the cosine schedule (what the Trainer does by default),
   on a fresh copy of the same model. The difference is the framework's overhead.
4. Steps 2-3 once per precision (`--precisions`), on the same data and batches.

tokens/s counts real (non-pad) tokens only. Without `--data`, the data are collected first
with the model itself (`rise collect` + `rise build-data` on `--collect-problems` problems).

    python benchmarks/training.py --data runs/demo/reference/iter1/data  # the demo's iteration 1
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import harness
import torch
from transformers import get_cosine_schedule_with_warmup

from rise_llm import collect, data, train
from rise_llm.models import load_causal_lm, load_tokenizer
from rise_llm.precision import cpu_autocast, cpu_has_native_bf16
from rise_llm.train import (
    ExampleDataset,
    PadCollator,
    RWRTrainer,
    TrainConfig,
    load_examples,
    training_arguments,
    weighted_nll,
)


class RecordingCollator(PadCollator):
    """PadCollator that keeps every batch it makes, for the raw loop to replay."""

    batches: ClassVar[list[dict[str, torch.Tensor]]] = []

    def __call__(self, items):
        batch = super().__call__(items)
        RecordingCollator.batches.append({k: v.clone() for k, v in batch.items()})
        return batch


def padding_share(batches) -> dict[str, float]:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return {
        "batches": len(batches),
        "real_tokens": real,
        "padded_tokens": total - real,
        "pad_share": round((total - real) / total, 4),
    }


def loader_padding(config: TrainConfig, model, tokenizer) -> dict[str, float]:
    """Padding in one epoch of the batches the Trainer's own data loader makes for `config`."""
    dataset = ExampleDataset(load_examples(config.data), tokenizer, config.max_length)
    trainer = RWRTrainer(
        model=model,
        args=training_arguments(config, bf16=False),
        train_dataset=dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
    )
    return padding_share(list(trainer.get_train_dataloader()))


def raw_loop(config: TrainConfig, batches) -> float:
    """Seconds of a plain loop over `batches`: forward, loss, backward, clip, AdamW, schedule;
    the forward under CPU bf16 autocast when `config.bf16` is True."""
    model = load_causal_lm(config.model)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    warmup = math.ceil(config.warmup_ratio * len(batches))
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, len(batches))
    start = time.perf_counter()
    for batch in batches:
        with cpu_autocast(config.bf16 is True):
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logits = model(**inputs).logits
        loss = weighted_nll(logits, batch["labels"], batch["weights"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def collect_data(model: str, work: Path, problems: int) -> str:
    episodes = work / "collect"
    collect.run(
        collect.CollectConfig(
            model=model, out=str(episodes), limit=problems, device="cpu", dtype="float32"
        )
    )
    out = work / "data"
    data.build(data.BuildDataConfig(episodes=[str(episodes)], out=str(out)))
    return str(out)


PRECISIONS = {"float32": False, "bf16": True}


def timed_precision(config: TrainConfig) -> tuple[dict, list]:
    """`rise train` and the raw loop over its batches at `config`'s precision."""
    RecordingCollator.batches = []
    train.PadCollator = RecordingCollator  # train.run builds its collator by this name
    try:
        train.run(config)
    finally:
        train.PadCollator = PadCollator
    record = json.loads((Path(config.out) / train.TRAIN_RECORD).read_text())
    batches = RecordingCollator.batches
    raw_seconds = round(raw_loop(config, batches), 3)
    tokens = padding_share(batches)["real_tokens"]
    rise_seconds = record["seconds"]
    result = {
        "examples": record["examples"],
        "rise_train": {
            "seconds": rise_seconds,
            "tokens_per_s": round(tokens / rise_seconds, 1),
            "trainer_train_runtime": record["log"][-1].get("train_runtime"),
            "final_loss": record["train_loss"],
        },
        "raw_loop": {"seconds": raw_seconds, "tokens_per_s": round(tokens / raw_seconds, 1)},
        "overhead": round(rise_seconds / raw_seconds - 1, 4),
    }
    return result, batches


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="*", default=None, help="data folders from rise build-data")
    p.add_argument("--collect-problems", type=int, default=300)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=list(PRECISIONS))
    args = p.parse_args()
    harness.setup(args)
    model_dir = harness.ensure_toy_model(args.model)
    timed: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources = args.data or [collect_data(model_dir, work, args.collect_problems)]
        config = TrainConfig(
            model=model_dir,
            data=sources,
            out="",
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            save_steps=10**9,  # no checkpoint inside the timed loop
            device="cpu",
        )
        tokenizer = load_tokenizer(model_dir)
        model = load_causal_lm(model_dir)
        padding = {
            "grouped": loader_padding(config, model, tokenizer),
            "random": loader_padding(
                TrainConfig(**{**vars(config), "group_by_length": False}), model, tokenizer
            ),
        }
        for name in args.precisions:
            out = str(work / f"train-{name}")
            settings = {**vars(config), "out": out, "bf16": PRECISIONS[name]}
            timed[name], batches = timed_precision(TrainConfig(**settings))
    seen = padding_share(batches)
    tokens = seen["real_tokens"]
    first = timed[args.precisions[0]]["rise_train"]["seconds"]
    for r in timed.values():
        r["speedup_over_first"] = round(first / r["rise_train"]["seconds"], 3)
    result = {
        "model": model_dir,
        "parameters": harness.parameters(model),
        "data": sources,
        "examples": timed[args.precisions[0]]["examples"],
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
        "cpu_has_native_bf16": cpu_has_native_bf16(),
        "steps": len(batches),
        "real_tokens": tokens,
        "precisions": timed,
        "padding": {**padding, "trained_batches": seen},
    }
    harness.print_table(
        f"Training ({len(batches)} steps of batch {args.batch_size}, {result['examples']} "
        f"examples) on {model_dir}; native bf16: {result['cpu_has_native_bf16']}",
        ["precision", "loop", "s", "real tok/s", "overhead", "final loss"],
        [
            row
            for name, r in timed.items()
            for row in (
                [
                    name,
                    "raw forward+backward+AdamW",
                    r["raw_loop"]["seconds"],
                    r["raw_loop"]["tokens_per_s"],
                    None,
                    None,
                ],
                [
                    name,
                    "rise train (RWRTrainer)",
                    r["rise_train"]["seconds"],
                    r["rise_train"]["tokens_per_s"],
                    r["overhead"],
                    r["rise_train"]["final_loss"],
                ],
            )
        ],
    )
    harness.print_table(
        "Padding (one epoch of the Trainer's batches)",
        ["batching", "batches", "real tokens", "pad tokens", "pad share"],
        [
            [name, r["batches"], r["real_tokens"], r["padded_tokens"], r["pad_share"]]
            for name, r in [*padding.items(), ("trained (grouped)", seen)]
        ],
    )
    harness.write_result("training", args, result)


if __name__ == "__main__":
    main()
