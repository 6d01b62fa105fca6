"""Reward-weighted training: the loss by hand, and real (tiny) fine-tunes, full and LoRA."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rise_llm.chat import IGNORE_INDEX
from rise_llm.errors import RiseError
from rise_llm.records import TrainingExample, write_jsonl
from rise_llm.tasks.arith import ArithTask
from rise_llm.tasks.base import REFERENCE_RETRY
from rise_llm.train import (
    ExampleDataset,
    PadCollator,
    TrainConfig,
    last_checkpoint,
    run,
    training_arguments,
    weighted_nll,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

LN2, LN3 = math.log(2), math.log(3)
X = IGNORE_INDEX


def test_weighted_loss_uniform_logits():
    logits = torch.zeros(2, 3, 3)  # uniform over 3 tokens: every labelled token costs ln 3
    labels = torch.tensor([[X, 1, 2], [X, X, 0]])  # 2 trained tokens, then 1
    loss = weighted_nll(logits, labels, torch.tensor([2.0, 0.5]))
    # per-example means are ln3 and ln3; weighted 2 ln3 and 0.5 ln3; batch mean 1.25 ln3
    assert loss.item() == pytest.approx(1.25 * LN3)


def test_weighted_loss_takes_the_mean_per_example_not_per_token():
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = torch.tensor([0.0, LN2, 0.0])  # softmax (1/4, 1/2, 1/4): token 1 costs ln 2
    labels = torch.tensor([[X, 1, 2]])
    loss = weighted_nll(logits, labels, torch.tensor([1.0]))
    assert loss.item() == pytest.approx((LN2 + LN3) / 2)


def test_example_without_trained_tokens_adds_zero_but_counts_in_the_batch():
    logits = torch.zeros(2, 2, 3)
    labels = torch.tensor([[X, 0], [X, X]])
    assert weighted_nll(logits, labels, torch.tensor([1.0, 1.0])).item() == pytest.approx(LN3 / 2)


def _examples(weight: float, n: int = 6) -> list[TrainingExample]:
    task = ArithTask()
    out = []
    for i, p in enumerate(task.problems("train", n)):
        messages = [
            {"role": "user", "content": p.question},
            {"role": "assistant", "content": "1 + 1 = 3\nAnswer: \\boxed{3}"},
            {"role": "user", "content": REFERENCE_RETRY.format(question=p.question)},
            {"role": "assistant", "content": task.solution(p)},
        ]
        out.append(TrainingExample(messages, reward=1, weight=weight, turn=2, problem_id=str(i)))
    return out


def _config(tmp_path, model_dir, **overrides) -> TrainConfig:
    """Three steps on tmp_path/data into tmp_path/train."""
    return TrainConfig(
        model=str(model_dir),
        data=[str(tmp_path / "data")],
        out=str(tmp_path / "train"),
        lr=1e-2,
        max_steps=3,
        batch_size=2,
        device="cpu",
        **overrides,
    )


def _train(tmp_path, model_dir, weight: float, **overrides):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "data.jsonl", _examples(weight))
    return run(_config(tmp_path, model_dir, **overrides))


def test_full_fine_tune_changes_parameters(tmp_path, tiny_model_dir):
    out = _train(tmp_path, tiny_model_dir, weight=12.18)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)
    assert (tmp_path / "train" / "train.json").exists()


def test_zero_weight_examples_teach_nothing(tmp_path, tiny_model_dir):
    out = _train(tmp_path, tiny_model_dir, weight=0.0)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lora_saves_a_merged_standard_model(tmp_path, tiny_model_dir):
    out = _train(tmp_path, tiny_model_dir, weight=12.18, lora=True, lora_r=4, lora_alpha=8)
    model = AutoModelForCausalLM.from_pretrained(out)
    after = load_file(out / "model.safetensors")
    before = load_file(tiny_model_dir / "model.safetensors")
    assert not any("lora" in k for k in after)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only adapted layers
    assert model.config.model_type == "llama"


def test_rerun_is_a_no_op_and_other_settings_are_refused(tmp_path, tiny_model_dir):
    out = _train(tmp_path, tiny_model_dir, weight=1.0)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    config = _config(tmp_path, tiny_model_dir)
    assert run(config) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    config.lr = 2e-2
    with pytest.raises(RiseError, match="different settings"):
        run(config)


def test_the_last_checkpoint_is_the_newest_the_trainer_finished_saving(tmp_path):
    """The Trainer writes trainer_state.json last: a checkpoint without a readable one was cut
    short by a kill, and is removed rather than resumed from."""
    for step, state in [(2, '{"global_step": 2}'), (3, None), (10, '{"global_st'), (12, "")]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-notes").mkdir()  # not a checkpoint: left alone
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-notes"]
    assert last_checkpoint(tmp_path / "none") is None


def test_training_killed_while_saving_its_checkpoint_resumes(tmp_path, tiny_model_dir):
    """A rerun after a kill in the middle of saving the only checkpoint trains again from the
    start (the Trainer itself would fail to resume from it, on every rerun)."""
    out = _train(tmp_path, tiny_model_dir, weight=12.18, save_steps=2)
    trained = load_file(out / "model.safetensors")
    checkpoint = tmp_path / "train" / "checkpoints" / "checkpoint-3"
    (checkpoint / "trainer_state.json").unlink()  # killed before the Trainer wrote it
    (checkpoint / "optimizer.pt").write_bytes(b"torn")
    shutil.rmtree(out)
    (tmp_path / "train" / "train.json").unlink()
    resumed = load_file(run(_config(tmp_path, tiny_model_dir, save_steps=2)) / "model.safetensors")
    assert all(torch.equal(trained[k], resumed[k]) for k in trained)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 3


def test_dataset_marks_only_the_last_turn_and_collates(tiny_engine):
    tok = tiny_engine.tokenizer
    examples = _examples(weight=2.0, n=2)
    dataset = ExampleDataset(examples, tok, max_length=2048)
    batch = PadCollator(tok.pad_token_id)([dataset[0], dataset[1]])
    assert batch["weights"].tolist() == [2.0, 2.0]
    for row, ex in zip(range(2), examples, strict=True):
        trained = [t for t in batch["labels"][row].tolist() if t != IGNORE_INDEX]
        assert tok.decode(trained) == ex.messages[-1]["content"] + "<|end|>"
    short = ExampleDataset(examples, tok, max_length=50)
    assert len(short) == 0 and short.dropped == 2
    normalized = ExampleDataset(
        [*examples[:1], TrainingExample(examples[1].messages, 0, 1.0, 2, "x")],
        tok,
        2048,
        normalize_weights=True,
    )
    assert [it["weight"] for it in normalized.items] == pytest.approx([4 / 3, 2 / 3])


REFERENCE = dict(model="m", data=["d"], out="o")


def test_defaults_are_the_reference_hyper_parameters():
    """METHOD.md, "Training": lr 1e-5, cosine, warmup 4%, max length 2048, no weight decay."""
    config = TrainConfig(**REFERENCE)
    assert (config.lr, config.scheduler, config.warmup_ratio) == (1e-5, "cosine", 0.04)
    assert (config.max_length, config.weight_decay, config.lora) == (2048, 0.0, False)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"scheduler": "cosin"}, "unknown scheduler 'cosin'; choose linear, cosine"),
        ({"warmup_ratio": 4.0}, r"warmup_ratio is a fraction of the steps in \[0, 1\), got 4.0"),
        ({"warmup_ratio": -0.1}, "warmup_ratio"),
        ({"grad_accum": 0}, "grad_accum must be at least 1"),
        ({"deepspeed": "z.json", "fsdp_config": {"version": 2}}, "deepspeed or fsdp_config"),
        ({"optim": "adam"}, "unknown optim 'adam'; choose one of the Trainer's: adamw_torch"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be 0 \\(no clipping\\) or more"),
        ({"warmup_steps": -2}, "warmup_steps must be 0 or more"),
        ({"trainer_args": {"adam_beta": 0.9}}, "trainer_args.adam_beta is not a field of"),
        ({"trainer_args": {"learning_rate": 1e-4}}, "trainer_args.learning_rate is .*use train.lr"),
        ({"trainer_args": {"optim": "sgd"}}, "trainer_args.optim is set .*; use train.optim$"),
        ({"trainer_args": {"save_total_limit": 3}}, "rise train needs its own value there"),
    ],
)
def test_bad_settings_say_how_to_fix_them(settings, message):
    with pytest.raises(RiseError, match=message):
        TrainConfig(**REFERENCE, **settings)


def test_bf16_is_auto_or_a_boolean():
    from rise_llm.config import build

    assert build(TrainConfig, {**REFERENCE, "bf16": True}, "t").bf16 is True
    with pytest.raises(RiseError, match=r"t\.bf16"):
        build(TrainConfig, {**REFERENCE, "bf16": "sometimes"}, "t")


def test_settings_reach_the_trainer_arguments(tmp_path):
    config = TrainConfig(
        model="m",
        data=["d"],
        out=str(tmp_path),
        scheduler="linear",
        warmup_ratio=0.1,
        batch_size=1,
        grad_accum=16,
        gradient_checkpointing=True,
        weight_decay=0.01,
        device="cpu",
    )
    args = training_arguments(config, bf16=True)
    assert (args.lr_scheduler_type.value, args.warmup_steps) == ("linear", 0.1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 16)
    assert args.activation_checkpointing and args.bf16 and args.weight_decay == 0.01
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert not args.fsdp and args.deepspeed is None
    assert (args.optim.value, args.optim_args, args.max_grad_norm) == ("adamw_torch", None, 1.0)
    sgd = TrainConfig(
        **REFERENCE, optim="sgd", optim_args="momentum=0.9", max_grad_norm=0.0, warmup_steps=3
    )
    args = training_arguments(sgd, bf16=False)
    assert (args.optim.value, args.optim_args, args.max_grad_norm) == ("sgd", "momentum=0.9", 0.0)
    assert args.warmup_steps == 3  # steps, not the ratio
    fsdp = training_arguments(
        TrainConfig(**REFERENCE, fsdp_config={"reshard_after_forward": False}), bf16=False
    )
    assert fsdp.fsdp and fsdp.fsdp_config["reshard_after_forward"] is False


def test_any_other_trainer_option_passes_through(tmp_path):
    """trainer_args reach TrainingArguments as given, from YAML and from `--trainer-arg`."""
    from rise_llm.cli import build_parser, config_from_flags

    given = {"adam_beta2": 0.95, "lr_scheduler_kwargs": {"min_lr": 1e-6}, "eval_delay": 2.0}
    args = training_arguments(TrainConfig(**REFERENCE, trainer_args=given), bf16=False)
    assert (args.adam_beta2, args.lr_scheduler_kwargs, args.eval_delay) == (
        0.95,
        {"min_lr": 1e-6},
        2.0,
    )
    assert args.learning_rate == 1e-5  # the config's own fields stay
    flags = build_parser().parse_args(
        ["train", "--model", "m", "--data", "d", "--out", "o", "--trainer-arg", "adam_beta2=0.9"]
    )
    assert config_from_flags(TrainConfig, flags, "train").trainer_args == {"adam_beta2": 0.9}


def test_deepspeed_and_fsdp_files_must_exist(tmp_path, monkeypatch):
    with pytest.raises(RiseError, match=r"deepspeed config 'nope\.json' does not exist"):
        training_arguments(TrainConfig(**REFERENCE, deepspeed="nope.json"), bf16=True)
    with pytest.raises(RiseError, match=r"fsdp_config file 'nope\.json' does not exist"):
        training_arguments(TrainConfig(**REFERENCE, fsdp_config="nope.json"), bf16=True)
    shipped = CONFIGS / "deepspeed" / "zero3.json"
    assert json.loads(shipped.read_text())["zero_optimization"]["stage"] == 3
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a),
    )
    with pytest.raises(RiseError, match="pip install deepspeed"):
        training_arguments(TrainConfig(**REFERENCE, deepspeed=str(shipped)), bf16=True)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_trains(tmp_path, tiny_model_dir, lora):
    out = _train(tmp_path, tiny_model_dir, weight=12.18, gradient_checkpointing=True, lora=lora)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_configured_chat_template_is_used_and_saved(tmp_path, tiny_model_dir):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    template = (bare / "chat_template.jinja").read_text()
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(RiseError, match="has no chat template"):
        _train(tmp_path, bare, weight=1.0)
    shutil.rmtree(tmp_path / "data")
    out = _train(tmp_path, bare, weight=1.0, chat_template=template)
    assert AutoTokenizer.from_pretrained(out).chat_template == template
