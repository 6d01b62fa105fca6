"""The toy model: standard HF folder, the SFT recipe's promises, and resume after a kill."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from rise_llm import toy_model
from rise_llm.chat import render
from rise_llm.tasks.arith import RETRACTION, ArithTask
from rise_llm.toy_model import (
    ToyModelConfig,
    build,
    build_tokenizer,
    retracted_solution,
    sft_conversation,
    wrong_solution,
)


def test_folder_loads_with_the_auto_classes(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.chat_template
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>What is 2 + 3?<|end|><|assistant|>"
    record = json.loads((tiny_model_dir / "toy_model.json").read_text())
    # a share of the TINY build's 16 held-out problems
    assert (record["single_turn_accuracy"] * 16) == pytest.approx(
        round(record["single_turn_accuracy"] * 16)
    )
    assert record["versions"]["transformers"]
    assert not (tiny_model_dir / "checkpoint.pt").exists()


def test_tokenizer_round_trips_text():
    tok = build_tokenizer()
    text = "What is 12 + 7?\n12 + 7 = 19\nAnswer: \\boxed{19} Here's {x}!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_phrase_tokenizer_makes_each_phrase_one_token_and_keeps_every_text():
    """`tokenizer: phrases`: each fixed phrase of an arith conversation is one token, digits and
    any other text stay characters, and every text decodes back to itself."""
    chars, phrases = build_tokenizer(), build_tokenizer("phrases")
    for phrase in toy_model.PHRASES:
        assert len(phrases(phrase, add_special_tokens=False)["input_ids"]) == 1
    text = "What is 12 + 7?\n12 + 7 = 19\nWait: 3 - -2 = 5\nAnswer: \\boxed{19} Here's {x}!"
    ids = phrases(text, add_special_tokens=False)["input_ids"]
    assert phrases.convert_ids_to_tokens(ids)[:7] == ["What is ", "1", "2", " + ", "7", "?", "\n"]
    assert phrases.decode(ids) == text
    task = ArithTask()
    for problem in task.problems("train", 20):
        conversation = [
            *task.prompt.first_messages(problem),
            {"role": "assistant", "content": task.solution(problem)},
            task.prompt.retry_message(problem),
            {"role": "assistant", "content": task.solution(problem)},
        ]
        by_chars = chars.apply_chat_template(conversation)["input_ids"]
        by_phrases = phrases.apply_chat_template(conversation)["input_ids"]
        assert phrases.decode(by_phrases) == chars.decode(by_chars)  # the same text
        assert len(by_phrases) < 0.45 * len(by_chars)  # 217 -> 76 tokens on average


def test_a_toy_with_phrase_tokens_saves_and_loads_them(tmp_path):
    from conftest import TINY

    build(ToyModelConfig(out=str(tmp_path), tokenizer="phrases", **TINY))
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "What is 2 + 3?"
    assert loaded.convert_ids_to_tokens(loaded(text)["input_ids"]) == [
        "What is ", "2", " + ", "3", "?"
    ]  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.vocab_size == len(loaded) == len(build_tokenizer()) + len(toy_model.PHRASES)
    record = json.loads((tmp_path / toy_model.BUILD_RECORD).read_text())
    assert record["config"]["tokenizer"] == "phrases"


def test_sft_conversations_never_retry_the_same_problem():
    task = ArithTask()
    pool = task.problems("train", 200)
    rng = random.Random(0)
    for _ in range(200):
        messages, trained = sft_conversation(task, pool, rng.randint(1, 3), 0.5, rng)
        questions = [m["content"].rsplit("question: ", 1)[-1] for m in messages[::2]]
        assert len(set(questions)) == len(questions)  # every user turn is another problem
        assert messages[-1]["role"] == "assistant" and len(messages) - 1 in trained
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            problem = next(p for p in pool if p.question == questions[i // 2])
            # trained turns are exactly the correct solutions; wrong ones are context only
            assert (i in trained) == task.verify(problem, m["content"]).correct
        for retry in messages[2::2]:  # the retry message restates a question, as the reference's
            assert retry["content"].startswith("The answer is incorrect. Please try again.")


def test_wrong_solutions_are_wrong_and_well_formed():
    task = ArithTask()
    rng = random.Random(1)
    for problem in task.problems("train", 100):
        verdict = task.verify(problem, wrong_solution(problem, rng))
        assert verdict.reward == 0 and verdict.answer is not None


def test_retracted_solutions_slip_once_take_it_back_and_are_right():
    task = ArithTask()
    rng = random.Random(2)
    for problem in task.problems("train", 100):
        text = retracted_solution(problem, rng)
        lines = text.splitlines()
        (at,) = [i for i, line in enumerate(lines) if line.startswith(RETRACTION)]
        assert lines[at - 1].split(" = ")[0] == lines[at].removeprefix(RETRACTION).split(" = ")[0]
        assert lines[at - 1] != lines[at].removeprefix(RETRACTION)  # the slip, then its fix
        assert task.verify_strict(problem, text).reward == 1  # the retracted line does not count
        assert len(lines) == len(problem.meta["steps"]) + 2  # one extra line and the answer


@pytest.mark.parametrize("fraction", [0.0, 0.4])
def test_retraction_fraction_of_the_trained_solutions(fraction):
    task = ArithTask()
    pool = task.problems("train", 200)
    rng = random.Random(3)
    trained = []
    for _ in range(300):
        messages, indices = sft_conversation(task, pool, 1, 0.5, rng, fraction)
        trained += [messages[i]["content"] for i in indices]
    share = sum(RETRACTION in text for text in trained) / len(trained)
    assert abs(share - fraction) < 0.08  # 300 draws: sd 0.028
    messages, indices = sft_conversation(task, pool, 3, 1.0, rng, 1.0)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":  # trained ones retract, wrong context ones do not
            assert (RETRACTION in message["content"]) == (i in indices)


def test_default_sft_data_did_not_change_with_retractions():
    """retraction_fraction 0 draws exactly the conversations it drew before the option."""
    task = ArithTask()
    pool = task.problems("train", 50)
    a, b = random.Random(5), random.Random(5)
    for _ in range(50):
        assert sft_conversation(task, pool, 2, 0.5, a) == sft_conversation(
            task, pool, 2, 0.5, b, 0.0
        )
    problem = pool[0]
    for seed in range(20):
        assert wrong_solution(problem, random.Random(seed)) == _old_wrong_solution(
            problem, random.Random(seed)
        )


def _old_wrong_solution(problem, rng):
    """wrong_solution as it was written before retractions (the default toy's data)."""
    from rise_llm.tasks.arith import format_solution

    steps = [(op, int(v)) for op, v in problem.meta["steps"]]
    slip_at = rng.randrange(len(steps))
    lines, value = [], problem.meta["start"]
    for i, (op, operand) in enumerate(steps):
        result = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
        if i == slip_at:
            result += rng.choice([-10, -2, -1, 1, 2, 10])
        lines.append(f"{value} {op} {operand} = {result}")
        value = result
    return format_solution(lines, value)


def test_killed_build_resumes_to_the_same_weights(tmp_path, monkeypatch):
    settings = dict(layers=1, hidden=16, heads=2, steps=6, batch_size=2, eval_problems=2)
    build(ToyModelConfig(out=str(tmp_path / "straight"), **settings, checkpoint_every=100))

    real_make_batch = toy_model.make_batch

    def killed_at_step_4(config, task, pool, tokenizer, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_make_batch(config, task, pool, tokenizer, step)

    resumed = tmp_path / "resumed"
    config = ToyModelConfig(out=str(resumed), **settings, checkpoint_every=3)
    monkeypatch.setattr(toy_model, "make_batch", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        build(config)
    assert torch.load(resumed / "checkpoint.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(toy_model, "make_batch", real_make_batch)
    build(config)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_rendered_conversation_matches_the_template():
    tok = build_tokenizer()
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert render(tok, messages) == "<|system|>S<|end|><|user|>Q<|end|><|assistant|>A<|end|>"


def test_the_same_seed_builds_byte_identical_weights(tmp_path):
    """Same seed, same machine: the same bytes, from this process and from the command line."""
    import subprocess
    import sys
    from pathlib import Path

    settings = dict(layers=1, hidden=16, heads=2, steps=6, batch_size=2, eval_problems=2, seed=3)
    build(ToyModelConfig(out=str(tmp_path / "here"), **settings))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    rise = str(Path(sys.executable).parent / "rise")
    subprocess.run([rise, "toy-model", "--out", str(tmp_path / "cli"), *flags], check=True)
    here, cli = ((tmp_path / d / "model.safetensors").read_bytes() for d in ("here", "cli"))
    assert here == cli
    build(ToyModelConfig(out=str(tmp_path / "other"), **{**settings, "seed": 4}))
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != here
    record = json.loads((tmp_path / "cli" / "toy_model.json").read_text())
    assert record["machine"]["cpu"] and record["machine"]["cores"] >= 1
