"""`rise train`: reward-weighted regression on RISE examples with Hugging Face `Trainer`.

Loss = mean over the batch of weight x (mean token NLL of the example's trained turn); earlier
turns are context with zero loss (METHOD.md, "Training"). Labels come from
`chat.encode_conversation`, the same template code that renders sampling prompts. Full
fine-tuning or LoRA (PEFT); gradient accumulation, bf16, gradient checkpointing, `report_to`,
DeepSpeed, FSDP and distributed launch are the Trainer's own, passed through. Checkpoints are
saved as training goes, so rerunning the same command resumes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SchedulerType
from transformers.training_args import OptimizerNames

from rise_llm.chat import IGNORE_INDEX, EncodedConversation, encode_conversation, right_pad
from rise_llm.data import DATA
from rise_llm.errors import RiseError
from rise_llm.models import load_causal_lm, load_tokenizer
from rise_llm.precision import Bf16, use_bf16
from rise_llm.progress import console
from rise_llm.provenance import check_out, check_settings, machine, versions
from rise_llm.records import TrainingExample, read_stage_outputs, write_atomic

MODEL_DIR = "model"
TRAIN_RECORD = "train.json"
SCHEDULERS = tuple(s.value for s in SchedulerType)
OPTIMIZERS = tuple(o.value for o in OptimizerNames)
DEVICES = ("auto", "cpu")


@dataclass
class TrainConfig:
    """Settings of `rise train`. Defaults are the reference hyper-parameters for 7B models.

    Args:
        model: the model to start from (folder, Hub id or .gguf file).
        data: data folders (or data.jsonl files) from `rise build-data`; concatenated.
        out: output folder; the trained model goes to out/model.
        lr: peak learning rate (reference: 1e-5).
        scheduler: the Trainer's learning-rate schedule (reference: cosine).
        warmup_ratio: warmup as a fraction of the steps (reference: 4%).
        weight_decay: AdamW weight decay (reference: 0).
        warmup_steps: warmup as a number of steps; overrides warmup_ratio when above 0 (a
            schedule that does not depend on the run's length).
        optim: the Trainer's optimiser (reference: AdamW); e.g. "adamw_bnb_8bit" or
            "adafactor" to save memory on a large model.
        optim_args: the optimiser's options as the Trainer takes them, e.g. "momentum=0.9"
            for optim "sgd".
        max_grad_norm: gradients are clipped to this global norm; 0 turns clipping off.
        epochs: passes over the data.
        max_steps: optimiser steps; above 0 it overrides epochs.
        batch_size: examples per device and micro-batch (reference: 16 per device on 4 GPUs).
        grad_accum: micro-batches accumulated per optimiser step.
        max_length: longer examples are dropped, with a count (reference: 2048).
        lora: train LoRA adapters (PEFT) instead of all weights; the saved model has the
            adapters merged in.
        lora_r: rank of the LoRA adapters.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the LoRA adapters' input.
        lora_targets: modules that get adapters: "all-linear" or a list of module names.
        normalize_weights: divide weights by their mean over the data (off in the reference).
        group_by_length: batch examples of similar length (less padding).
        bf16: bfloat16 compute; "auto" uses it on a GPU that supports it (`precision.py`). On a
            GPU without DeepSpeed the optimiser updates the bfloat16 weights directly (no
            float32 master copy: half the memory, coarser updates); DeepSpeed keeps float32
            master weights. On the CPU, true is mixed precision: float32 weights, bf16 products
            under autocast.
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        deepspeed: a DeepSpeed JSON config, e.g. configs/deepspeed/zero3.json (ZeRO-3, the
            reference's); needs `pip install deepspeed`, and `accelerate launch` or `deepspeed`
            to start one process per GPU.
        fsdp_config: FSDP settings (a dict or a JSON file, TrainingArguments.fsdp_config);
            enables FSDP, started like DeepSpeed.
        chat_template: a Jinja file or text replacing the model's chat template; it is saved
            with the trained model, so later stages sample with the same template.
        logging_steps: steps between the Trainer's loss logs.
        report_to: Trainer loggers, e.g. ["tensorboard"] or ["wandb"]; ["none"] for none.
        save_steps: steps between resumable checkpoints.
        seed: data order and initialisation of new weights.
        device: "auto", or "cpu" to train on the CPU even with a GPU present.
        trainer_args: any other field of transformers' `TrainingArguments`, passed to the
            Trainer as given, e.g. {"lr_scheduler_kwargs": {"min_lr": 1e-6}, "adam_beta2": 0.95,
            "torch_compile": true} (`rise train --trainer-arg adam_beta2=0.95`, YAML
            `train.trainer_args`). The fields this config sets itself are refused with the
            name to use instead (learning_rate: lr).
    """

    model: str
    data: list[str]
    out: str
    lr: float = 1e-5
    scheduler: str = "cosine"
    warmup_ratio: float = 0.04
    warmup_steps: int = 0
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    optim_args: str | None = None
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 2048
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str | list[str] = "all-linear"
    normalize_weights: bool = False
    group_by_length: bool = True
    bf16: Bf16 = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    fsdp_config: str | dict[str, Any] | None = None
    chat_template: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["none"])
    logging_steps: int = 10
    save_steps: int = 200
    seed: int = 0
    device: str = "auto"
    trainer_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise RiseError(f"train: lr must be positive, got {self.lr}")
        for name in ("batch_size", "grad_accum", "max_length", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise RiseError(f"train: {name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise RiseError(
                f"train: warmup_ratio is a fraction of the steps in [0, 1), got {self.warmup_ratio}"
            )
        if self.warmup_steps < 0:
            raise RiseError(f"train: warmup_steps must be 0 or more, got {self.warmup_steps}")
        if self.max_grad_norm < 0:
            raise RiseError(
                f"train: max_grad_norm must be 0 (no clipping) or more, got {self.max_grad_norm}"
            )
        if self.optim not in OPTIMIZERS:
            raise RiseError(
                f"train: unknown optim {self.optim!r}; choose one of the Trainer's: "
                f"{', '.join(OPTIMIZERS)}"
            )
        if self.scheduler not in SCHEDULERS:
            raise RiseError(
                f"train: unknown scheduler {self.scheduler!r}; choose {', '.join(SCHEDULERS)}"
            )
        if self.deepspeed and self.fsdp_config:
            raise RiseError("train: give deepspeed or fsdp_config, not both")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise RiseError("train: give epochs > 0 or max_steps > 0")
        if not self.data:
            raise RiseError("train: give at least one data folder from `rise build-data`")
        if self.weight_decay < 0:
            raise RiseError(f"train: weight_decay must be 0 or more, got {self.weight_decay}")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise RiseError(
                f"train: lora_r must be at least 1 and lora_alpha positive (the update is scaled "
                f"by alpha / r), got lora_r={self.lora_r}, lora_alpha={self.lora_alpha}"
            )
        if not 0 <= self.lora_dropout < 1:
            raise RiseError(f"train: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.device not in DEVICES:
            raise RiseError(
                f"train: device must be {' or '.join(DEVICES)} (the Trainer places the model "
                f"on the GPUs itself), got {self.device!r}"
            )
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        check_trainer_args(self)


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of weight x mean token NLL of each example's labelled tokens.

    logits: [B, T, V] for inputs; labels: [B, T] with IGNORE_INDEX where no loss is taken
    (position t's logits predict labels[t + 1]); weights: [B]. An example with no labelled
    token contributes zero.
    """
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    nll = F.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    mask = (targets != IGNORE_INDEX).float()
    per_example = (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return (weights.to(per_example.dtype) * per_example).mean()


class ExampleDataset(Dataset):
    """Tokenised RISE examples: input_ids, labels (last turn only) and the RWR weight."""

    def __init__(
        self,
        examples: Sequence[TrainingExample],
        tokenizer,
        max_length: int,
        normalize_weights: bool = False,
    ):
        self.items: list[dict[str, Any]] = []
        self.dropped = 0
        mean_weight = sum(ex.weight for ex in examples) / max(len(examples), 1)
        for ex in examples:
            enc = encode_conversation(tokenizer, ex.messages)
            if len(enc.input_ids) > max_length:
                self.dropped += 1
                continue
            weight = ex.weight / mean_weight if normalize_weights else ex.weight
            self.items.append({"input_ids": enc.input_ids, "labels": enc.labels, "weight": weight})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class PadCollator:
    """Right-pads a batch (`chat.right_pad`) and stacks the examples' weights."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [EncodedConversation(it["input_ids"], it["labels"]) for it in items]
        batch = right_pad(encoded, self.pad)
        batch["weights"] = torch.tensor([it["weight"] for it in items], dtype=torch.float32)
        return batch


class RWRTrainer(Trainer):
    """`Trainer` whose loss is `weighted_nll`; everything else is the Trainer's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # our loss is a per-micro-batch mean

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("weights")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = weighted_nll(outputs.logits, labels, weights)
        return (loss, outputs) if return_outputs else loss


def load_examples(sources: Sequence[str]) -> list[TrainingExample]:
    return read_stage_outputs(sources, DATA, TrainingExample, "run `rise build-data` first")


def _on_cpu(config: TrainConfig) -> bool:
    """Training runs on the CPU: asked for, or no GPU (CUDA or Apple's MPS) to run on."""
    return config.device == "cpu" or not (
        torch.cuda.is_available() or torch.backends.mps.is_available()
    )


def _use_bf16(config: TrainConfig) -> bool:
    return use_bf16(config.bf16, _on_cpu(config))


def _weights_dtype(config: TrainConfig, bf16: bool) -> torch.dtype:
    """bf16 weights on a GPU; on the CPU bf16 is mixed precision over float32 weights."""
    return torch.bfloat16 if bf16 and not _on_cpu(config) else torch.float32


def train_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings train.json records and a rerun must match (all but the out folder)."""
    return {k: v for k, v in asdict(config).items() if k != "out"}


def training_arguments(config: TrainConfig, bf16: bool) -> TrainingArguments:
    """The Trainer's arguments for `config` (checkpoints under out/checkpoints)."""
    if config.deepspeed:
        if not Path(config.deepspeed).is_file():
            raise RiseError(f"train: deepspeed config {config.deepspeed!r} does not exist")
        if importlib.util.find_spec("deepspeed") is None:
            raise RiseError("train: deepspeed is set but not installed; pip install deepspeed")
    if isinstance(config.fsdp_config, str) and not Path(config.fsdp_config).is_file():
        raise RiseError(f"train: fsdp_config file {config.fsdp_config!r} does not exist")
    return TrainingArguments(**trainer_kwargs(config, bf16), **config.trainer_args)


# TrainingArguments fields that TrainConfig sets under its own names
OWN_NAMES = {
    "learning_rate": "lr",
    "lr_scheduler_type": "scheduler",
    "warmup_steps": "warmup_steps or warmup_ratio",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "train_sampling_strategy": "group_by_length",
    "activation_checkpointing": "gradient_checkpointing",
    "fsdp": "fsdp_config",
    "use_cpu": "device",
    "output_dir": "out",
    "data_seed": "seed",
}


def trainer_kwargs(config: TrainConfig, bf16: bool) -> dict[str, Any]:
    """The TrainingArguments fields `config` sets itself (checkpoints under out/checkpoints)."""
    return dict(
        output_dir=str(Path(config.out) / "checkpoints"),
        learning_rate=config.lr,
        lr_scheduler_type=config.scheduler,
        # a float in [0, 1) is a ratio of the total steps, an int >= 1 a number of steps
        warmup_steps=config.warmup_steps or config.warmup_ratio,
        weight_decay=config.weight_decay,
        optim=config.optim,
        optim_args=config.optim_args,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        bf16=bf16,
        activation_checkpointing=config.gradient_checkpointing,
        deepspeed=config.deepspeed,
        fsdp=bool(config.fsdp_config),
        fsdp_config=config.fsdp_config,
        report_to=config.report_to,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        use_cpu=_train_on_cpu(config, bf16),
        disable_tqdm=False,
        dataloader_pin_memory=torch.cuda.is_available() and config.device != "cpu",
    )


def check_trainer_args(config: TrainConfig) -> None:
    """`trainer_args` names only TrainingArguments fields that this config does not set."""
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    owned = trainer_kwargs(config, bf16=False)
    mine = {f.name for f in dataclasses.fields(config)}
    for name in config.trainer_args:
        if name not in known:
            raise RiseError(
                f"train: trainer_args.{name} is not a field of transformers' TrainingArguments; "
                "see its documentation for the names"
            )
        if name in owned:
            instead = OWN_NAMES.get(name, name if name in mine else None)
            how = f"use train.{instead}" if instead else "rise train needs its own value there"
            raise RiseError(f"train: trainer_args.{name} is set by rise train itself; {how}")


def _train_on_cpu(config: TrainConfig, bf16: bool) -> bool:
    """The Trainer's use_cpu: `device: cpu`; bf16 on the CPU (the Trainer refuses bf16 without
    a GPU unless told to use the CPU, then trains under CPU autocast); or several processes
    launched (`accelerate launch`, `torchrun`) on a machine without a GPU: they then join one
    gloo process group, where the Trainer would otherwise run them as unrelated single-process
    trainings, each on all the data."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return (
        config.device == "cpu"
        or (bf16 and _on_cpu(config))
        or (several and not torch.cuda.is_available())
    )


def _save_model(trainer: Trainer, config: TrainConfig, folder: Path, dtype: torch.dtype) -> None:
    """Write the trained model to `folder` as a standard model; every process must call this.

    Under DeepSpeed ZeRO-3 or FSDP each process holds a part of the weights: `save_model`
    gathers them and only the main process writes. LoRA adapters are saved the same way (to
    out/adapter), then merged into the base model by the main process.
    """
    if not config.lora:
        trainer.save_model(str(folder))
        return
    adapter = folder.parent / "adapter"
    trainer.save_model(str(adapter))
    if trainer.is_world_process_zero():
        from peft import PeftModel

        base = load_causal_lm(config.model, dtype)
        PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(folder)


def last_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint in `folder` that the Trainer finished saving, or None.

    The Trainer writes a checkpoint's trainer_state.json last (`Trainer._save_checkpoint`), so
    one without a readable state was cut short by a kill; the Trainer would fail to resume from
    it on every rerun, so it is removed and the checkpoint before it is used.
    """
    steps = {
        int(path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")): path
        for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit()
    }
    for step in sorted(steps, reverse=True):
        try:
            json.loads((steps[step] / TRAINER_STATE_NAME).read_text())
            return str(steps[step])
        except (OSError, ValueError):
            console.print(f"train: {steps[step]} was cut short (no trainer state); removed")
            shutil.rmtree(steps[step], ignore_errors=True)  # every process of a launch may try
    return None


def run(config: TrainConfig) -> Path:
    """Train and save the model to out/model; returns that folder. Resumes from checkpoints."""
    out = Path(config.out)
    check_out(out, "train")
    record_path = out / TRAIN_RECORD
    if check_settings(
        out, train_settings(config), "a trained model", name=TRAIN_RECORD, defaults=TrainConfig
    ):
        console.print(f"train: already done in {out}")
        return out / MODEL_DIR
    examples = load_examples(config.data)
    tokenizer = load_tokenizer(config.model, config.chat_template)
    dataset = ExampleDataset(examples, tokenizer, config.max_length, config.normalize_weights)
    if not len(dataset):
        raise RiseError(f"train: every example is longer than max_length={config.max_length}")
    if dataset.dropped:
        console.print(
            f"train: dropped {dataset.dropped} examples longer than {config.max_length} tokens"
        )
    bf16 = _use_bf16(config)
    dtype = _weights_dtype(config, bf16)
    # before the model: DeepSpeed ZeRO-3 partitions the weights as they load only when the
    # Trainer's arguments exist first
    args = training_arguments(config, bf16)
    model = load_causal_lm(config.model, dtype)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.lora_targets,
                task_type="CAUSAL_LM",
            ),
        )
    trainer = RWRTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
    )
    resume = last_checkpoint(out / "checkpoints")
    if resume:
        console.print(f"train: resuming from {resume}")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    _save_model(trainer, config, out / MODEL_DIR, dtype)
    if trainer.is_world_process_zero():  # one writer under `accelerate launch`
        tokenizer.save_pretrained(out / MODEL_DIR)
        record = {
            "config": train_settings(config),
            "versions": versions(),
            "machine": machine(),
            "processes": trainer.args.world_size,
            "examples": len(dataset),
            "dropped": dataset.dropped,
            "steps": result.global_step,
            "train_loss": result.training_loss,
            "seconds": round(seconds, 1),
            "log": trainer.state.log_history,
        }
        write_atomic(record_path, json.dumps(record, indent=2) + "\n")
    return out / MODEL_DIR
