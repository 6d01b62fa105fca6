"""`rise toy-model`: build the embedded default model, a small Llama trained on `arith`.

The result is a standard Hugging Face model folder (config.json, model.safetensors, tokenizer
with a chat template) that `AutoModelForCausalLM` / `AutoTokenizer` load like any Hub model.

It starts where the paper's models start: a chat model that answers the latest question of a
multi-turn conversation but has never been taught to correct itself. Its SFT conversations hold
1-3 *different* problems; earlier ones are answered right or wrong and followed by the task's
retry message, which restates the *next* problem. It never sees a retry of the same problem
with a corrected answer, so it learns to answer the question in front of it and nothing more.
Loss is taken only on correct solutions; wrong ones are context.

With `retraction_fraction` > 0 (lever 3 of the self-correction issue), that share of the
trained solutions slip on one line and take it back inside the response, `6 + 4 = 11` then
`Wait: 6 + 4 = 10`, and go on from the right value: retry data in pretraining, as Physics of
Language Models 2.2 (arXiv 2408.16293) found lifts a small model's ability to notice its own
slips. The multi-turn retries stay untaught, so the base's turn curve stays flat.

Training is a plain PyTorch loop (this is SFT of a tiny model, not the RISE trainer), with a
checkpoint every `checkpoint_every` steps: killing the build and rerunning it resumes.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from rise_llm.chat import encode_conversation, right_pad
from rise_llm.engines.base import SamplingParams
from rise_llm.engines.hf import HFEngine
from rise_llm.errors import RiseError
from rise_llm.precision import cpu_autocast
from rise_llm.progress import console, progress_bar
from rise_llm.provenance import check_out, check_settings, machine, versions
from rise_llm.records import Message, Problem, write_atomic
from rise_llm.tasks import get_task
from rise_llm.tasks.arith import (
    ANSWER_OPENING,
    QUESTION_OPENING,
    RETRACTION,
    ArithTask,
    apply,
    format_solution,
    steps_of,
)
from rise_llm.tasks.base import REFERENCE_RETRY

SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHARACTERS = [chr(c) for c in range(32, 127)] + ["\n"]
PHRASES = (
    REFERENCE_RETRY.split("{question}")[0],
    QUESTION_OPENING,
    ANSWER_OPENING,
    RETRACTION,
    " + ",
    " - ",
    " * ",
    " = ",
)
"""The fixed phrases of `arith` conversations that `tokenizer: phrases` makes one token each:
the retry message's opening, the question's and the answer's, the retraction marker and the
operators with their spaces. Numbers stay one token per digit."""
TOKENIZERS = ("characters", "phrases")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
BUILD_RECORD = "toy_model.json"


@dataclass
class ToyModelConfig:
    """Settings of `rise toy-model`. The defaults build the calibrated default model.

    Args:
        out: folder to write the model to.
        layers: number of transformer layers of the Llama.
        hidden: hidden size (the MLP's intermediate size is 2.75 x hidden).
        heads: attention heads; hidden must be divisible by it.
        steps: SFT optimiser steps.
        batch_size: SFT conversations per step.
        lr: peak learning rate of AdamW, decayed by a cosine schedule.
        warmup: steps of linear warmup before the cosine decay.
        conversation_weights: relative frequency of SFT conversations holding 1, 2, 3... problems.
        wrong_fraction: share of earlier (context) problems answered wrongly.
        retraction_fraction: share of trained solutions that slip on one line and retract it
            (`Wait: a op b = c`) before going on right; 0 teaches only error-free solutions.
        task_options: options of the `arith` task (difficulty).
        eval_problems: held-out test problems for the single-turn accuracy check at temperature 1.
        checkpoint_every: steps between resumable checkpoints.
        seed: everything random (init, data, sampling) derives from it.
        tokenizer: "characters", one token per character (the calibrated default), or
            "phrases", the same with one token for each of `PHRASES`: the same texts in about
            a third of the tokens (217 -> 76 for a two-turn conversation of the default task),
            so every step of training and sampling has less to compute.
        bf16: train in mixed precision (float32 weights, bf16 products under autocast): 1.55x
            faster on a CPU with native bf16 (`precision.py`), but that toy answered worse
            (BENCHMARKS.md, "Training"), so the calibrated default stays float32.
    """

    out: str
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    steps: int = 500
    batch_size: int = 32
    lr: float = 4e-3
    warmup: int = 50
    conversation_weights: tuple[float, ...] = (0.6, 0.25, 0.15)
    wrong_fraction: float = 0.5
    retraction_fraction: float = 0.0
    task_options: dict[str, Any] = field(default_factory=dict)
    eval_problems: int = 200
    checkpoint_every: int = 100
    seed: int = 0
    tokenizer: str = "characters"
    bf16: bool = False

    def __post_init__(self) -> None:
        counts = ("layers", "hidden", "heads", "steps", "batch_size", "checkpoint_every")
        for name in (*counts, "eval_problems"):
            if getattr(self, name) < 1:
                raise RiseError(f"toy-model: {name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise RiseError(f"toy-model: lr must be positive, got {self.lr}")
        if self.warmup < 0:
            raise RiseError(f"toy-model: warmup must be 0 or more steps, got {self.warmup}")
        if self.hidden % self.heads:
            raise RiseError(
                f"toy-model: hidden ({self.hidden}) must be divisible by heads ({self.heads})"
            )
        if self.tokenizer not in TOKENIZERS:
            raise RiseError(
                f"toy-model: tokenizer must be one of {', '.join(TOKENIZERS)}, "
                f"got {self.tokenizer!r}"
            )
        for name in ("wrong_fraction", "retraction_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise RiseError(f"toy-model: {name} must be in [0, 1], got {getattr(self, name)}")
        weights = self.conversation_weights
        if not weights or min(weights) < 0 or not sum(weights):
            raise RiseError(
                "toy-model: conversation_weights must be non-negative, not empty and not all 0, "
                f"got {list(weights)}"
            )
        self.conversation_weights = tuple(self.conversation_weights)
        # the toy's seed is its own; the prompt is arith's default (`sft_conversation`)
        known = {f.name for f in dataclasses.fields(ArithTask) if f.init}
        known -= {"prompt", "name", "seed"}
        unknown = sorted(set(self.task_options) - known)
        if unknown:
            raise RiseError(
                f"toy-model: task_options {', '.join(unknown)} unknown; its options are: "
                f"{', '.join(sorted(known))} (the seed is --seed)"
            )
        get_task("arith", seed=self.seed, **self.task_options)  # types, min/max steps, ...


def build_tokenizer(kind: str = "characters") -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with chat special tokens; with kind
    "phrases", each of `PHRASES` is one token too (an added token, matched before the
    characters, so any text still encodes and decodes as it is)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        eos_token="<|end|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if kind == "phrases":
        tokenizer.add_tokens(list(PHRASES))
    return tokenizer


def build_model(config: ToyModelConfig, tokenizer) -> LlamaForCausalLM:
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden,
        intermediate_size=int(2.75 * config.hidden),
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(llama)


SLIPS = (-10, -2, -1, 1, 2, 10)


def wrong_solution(problem: Problem, rng: random.Random) -> str:
    """A plausible wrong solution: one step's result slips, later steps follow from the slip."""
    return _slipped_solution(problem, rng, retract=False)


def retracted_solution(problem: Problem, rng: random.Random) -> str:
    """A right solution with one slip taken back in place: `Wait: ` and the step redone."""
    return _slipped_solution(problem, rng, retract=True)


def _slipped_solution(problem: Problem, rng: random.Random, retract: bool) -> str:
    steps = steps_of(problem)
    slip_at = rng.randrange(len(steps))
    lines, value = [], problem.meta["start"]
    for i, (op, operand) in enumerate(steps):
        result = apply(value, op, operand)
        if i == slip_at:
            slipped = result + rng.choice(SLIPS)
            lines.append(f"{value} {op} {operand} = {slipped}")
            if retract:
                lines.append(f"{RETRACTION}{value} {op} {operand} = {result}")
            else:
                result = slipped  # later steps follow from the slip
        else:
            lines.append(f"{value} {op} {operand} = {result}")
        value = result
    return format_solution(lines, value)


def sft_conversation(
    task: ArithTask,
    pool: list[Problem],
    k: int,
    wrong_fraction: float,
    rng: random.Random,
    retraction_fraction: float = 0.0,
) -> tuple[list[Message], list[int]]:
    """One SFT conversation over k different problems, and the indices of its trained turns."""
    chosen = rng.sample(pool, k)
    messages = task.prompt.first_messages(chosen[0])
    trained = []
    for j, problem in enumerate(chosen):
        last = j == k - 1
        if last or rng.random() >= wrong_fraction:
            if retraction_fraction and rng.random() < retraction_fraction:
                answer = retracted_solution(problem, rng)
            else:
                answer = task.solution(problem)
            messages.append({"role": "assistant", "content": answer})
            trained.append(len(messages) - 1)
        else:
            messages.append({"role": "assistant", "content": wrong_solution(problem, rng)})
        if not last:
            messages.append(task.prompt.retry_message(chosen[j + 1]))
    return messages, trained


def make_batch(
    config: ToyModelConfig, task: ArithTask, pool: list[Problem], tokenizer, step: int
) -> dict[str, torch.Tensor]:
    """The batch of a step, a pure function of (seed, step) so a resumed run sees the same data.

    All conversations of a batch hold the same number of problems, which keeps padding low.
    """
    rng = random.Random(f"toy/{config.seed}/{step}")
    k = rng.choices(range(1, len(config.conversation_weights) + 1), config.conversation_weights)[0]
    encoded = []
    for _ in range(config.batch_size):
        messages, trained = sft_conversation(
            task, pool, k, config.wrong_fraction, rng, config.retraction_fraction
        )
        encoded.append(encode_conversation(tokenizer, messages, trained))
    return right_pad(encoded, tokenizer.pad_token_id)  # plain SFT: the model's token-mean loss


def single_turn_accuracy(model_dir: Path, task: ArithTask, n: int, seed: int) -> float:
    """Accuracy of one sample per held-out problem at temperature 1.0, loaded from disk."""
    engine = HFEngine.load(str(model_dir), device="cpu", dtype="float32")
    problems = task.problems("test", n)
    outs = engine.generate(
        [task.prompt.first_messages(p) for p in problems],
        n=1,
        params=SamplingParams(
            temperature=1.0, max_new_tokens=task.default_max_new_tokens, seed=seed
        ),
        desc="held-out check",
    )
    return sum(task.verify(p, o[0].text).correct for p, o in zip(problems, outs, strict=True)) / n


def build(config: ToyModelConfig) -> dict[str, Any]:
    """Build (or resume building) the toy model in `config.out`; returns the build record."""
    out = Path(config.out)
    check_out(out, "toy-model")
    settings = dataclasses.asdict(config)
    settings["conversation_weights"] = list(config.conversation_weights)
    record_path = out / BUILD_RECORD
    if check_settings(out, settings, "a toy model", name=BUILD_RECORD, defaults=ToyModelConfig):
        console.print(f"toy model already built in {out}; delete the folder to rebuild")
        return json.loads(record_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    task = ArithTask(seed=config.seed, **config.task_options)
    pool = task.problems("train", 20_000)
    tokenizer = build_tokenizer(config.tokenizer)
    model = build_model(config, tokenizer)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0
    )
    schedule = get_cosine_schedule_with_warmup(
        optimizer, min(config.warmup, config.steps), config.steps
    )
    checkpoint = out / "checkpoint.pt"
    start_step, elapsed = 0, 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["config"] != settings:
            raise RiseError(
                f"{checkpoint} was written with other settings; delete it or use another --out"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_step, elapsed = state["step"], state["elapsed"]
        console.print(f"resuming toy model training at step {start_step}")
    model.train()
    precision = "bf16 mixed" if config.bf16 else "float32"
    params = sum(p.numel() for p in model.parameters())
    console.print(f"toy model: {params / 1e6:.2f}M parameters, {config.steps} steps, {precision}")
    begin, tokens = time.perf_counter(), 0
    with progress_bar() as bar:
        task_id = bar.add_task("SFT", total=config.steps, completed=start_step, rate="")
        for step in range(start_step, config.steps):
            batch = make_batch(config, task, pool, tokenizer, step)
            with cpu_autocast(config.bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            rate = tokens / max(time.perf_counter() - begin, 1e-9)
            bar.update(task_id, advance=1, rate=f"loss {loss.item():.3f} {rate:,.0f} tok/s")
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                torch.save(
                    {
                        "config": settings,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "step": step + 1,
                        "elapsed": elapsed + time.perf_counter() - begin,
                    },
                    checkpoint,
                )
    train_seconds = elapsed + time.perf_counter() - begin
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    accuracy = single_turn_accuracy(out, task, config.eval_problems, config.seed)
    record = {
        "config": settings,
        "versions": versions(),
        "machine": machine(),
        "parameters": params,
        "precision": precision,
        "train_seconds": round(train_seconds, 1),
        "single_turn_accuracy": accuracy,
        "eval_problems": config.eval_problems,
    }
    write_atomic(record_path, json.dumps(record, indent=2) + "\n")
    checkpoint.unlink(missing_ok=True)
    console.print(
        f"built {out}: {params / 1e6:.2f}M parameters in {train_seconds:.0f} s; single-turn "
        f"accuracy on {config.eval_problems} held-out problems at temperature 1.0: {accuracy:.1%}"
    )
    if not 0.2 <= accuracy <= 0.6 and config.steps >= ToyModelConfig.steps:
        console.print("[yellow]warning: accuracy is outside the calibrated 20-60% band")
    return record
