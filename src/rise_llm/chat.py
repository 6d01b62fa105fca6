"""Rendering conversations with the tokenizer's own chat template.

This is the single place where messages become tokens: the engines render sampling prompts with
`prompt_ids`, and training examples take their input ids and loss mask from `encode_conversation`
over the same template, so a model is never trained with one format and sampled with another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rise_llm.errors import RiseError
from rise_llm.records import Message

IGNORE_INDEX = -100
"""Label value that carries no loss (the convention of PyTorch's cross-entropy and transformers)."""


def check_chat_template(tokenizer, source: str = "the model") -> None:
    """Fail clearly when the tokenizer has no chat template to render conversations with."""
    if not getattr(tokenizer, "chat_template", None):
        raise RiseError(
            f"{source} has no chat template; use a chat (instruct) model or set chat_template "
            "(--chat-template) to a Jinja template file or text"
        )


def read_chat_template(value: str) -> str:
    """The Jinja text of a configured chat template: `value` itself, or the file it names.

    >>> read_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")[:6]
    '{% for'
    """
    if "{{" in value or "{%" in value:
        return _checked_template(value, "chat_template")
    path = Path(value).expanduser()
    if not path.is_file():
        raise RiseError(
            f"chat_template {value!r} is neither a file nor a Jinja template ({{% ... %}})"
        )
    text = path.read_text()
    if "{{" not in text and "{%" not in text:
        raise RiseError(f"chat_template file {path} holds no Jinja template")
    return _checked_template(text, f"chat_template file {path}")


def _checked_template(text: str, where: str) -> str:
    """`text` if Jinja parses it, so a typo fails at load rather than at the first prompt."""
    import jinja2

    try:
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise RiseError(
            f"{where}: not a valid Jinja template (line {e.lineno}: {e.message}); fix it"
        ) from None
    return text


def render(tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly as the chat template writes it."""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def prompt_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of a prompt that asks the model for the next assistant turn."""
    text = render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class EncodedConversation:
    """Token ids of a conversation and its labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


def encode_conversation(
    tokenizer, messages: Sequence[Message], train_turns: Sequence[int] | None = None
) -> EncodedConversation:
    """Tokenise a conversation and mark the assistant turns that carry loss.

    `train_turns` lists indices into `messages` of assistant turns to train; None means only the
    last message (RISE trains the final assistant turn of each prefix, METHOD.md). A trained
    turn's span is what the template adds between the prompt for that turn and the turn itself
    (its content plus the end-of-turn marker), located by character offsets in the full render
    so that tokens merged across a boundary are never split.
    """
    if train_turns is None:
        train_turns = [len(messages) - 1]
    spans = []
    for i in train_turns:
        if messages[i]["role"] != "assistant":
            raise RiseError(
                f"message {i} is a {messages[i]['role']!r} turn; only assistant turns train"
            )
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not upto.startswith(prefix):
            raise RiseError(
                "the chat template renders a conversation differently from its own prefix; "
                "training targets cannot be located with this template"
            )
        spans.append((len(prefix), len(upto)))
    full = render(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [IGNORE_INDEX] * len(enc["input_ids"])
    for k, (token_id, (start, end)) in enumerate(
        zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ):
        if end > start and any(lo <= start and end <= hi for lo, hi in spans):
            labels[k] = token_id
    return EncodedConversation(input_ids=list(enc["input_ids"]), labels=labels)


def right_pad(conversations: Sequence[EncodedConversation], pad_token_id: int) -> dict[str, Any]:
    """A training batch of encoded conversations, right-padded to the longest: `input_ids`,
    `attention_mask` and `labels` (IGNORE_INDEX on the padding) as tensors."""
    import torch

    width = max(len(c.input_ids) for c in conversations)
    ids, labels, mask = [], [], []
    for c in conversations:
        gap = width - len(c.input_ids)
        ids.append(c.input_ids + [pad_token_id] * gap)
        labels.append(c.labels + [IGNORE_INDEX] * gap)
        mask.append([1] * len(c.input_ids) + [0] * gap)
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
    }
