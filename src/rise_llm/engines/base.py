"""The engine protocol: many conversations in, n sampled responses for each out.

Every sampler (the Hugging Face engine here, a remote server later) implements `generate`, so the
toy model, a 7B model and a server all go through the same rollout code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from rise_llm.errors import RiseError, check_sampling
from rise_llm.records import Message

BATCH_SIZE = 512
"""Default engine batch of every sampling stage (`rise collect`, `rise evaluate`, `rise run`)
and of `HFEngine`: the fastest for the toy on CPU once finished rows leave the batch."""
RESUME_FREE = ("batch_size",)
"""Settings that a resumed collection, evaluation or run may change: every sample has its own
random stream, so the engine's batch size changes the speed and the memory, not the samples."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling("sampling", self.temperature, self.top_p, self.max_new_tokens)

    def with_seed(self, seed: int) -> SamplingParams:
        return replace(self, seed=seed)


def stream_keys(conversations: Sequence, keys: Sequence[int] | None) -> Sequence[int]:
    """The stream key of each conversation of a `generate` call: `keys`, or 0, 1, ... without."""
    keys = range(len(conversations)) if keys is None else keys
    if len(keys) != len(conversations):
        raise RiseError(f"{len(conversations)} conversations but {len(keys)} stream keys")
    return keys


@dataclass
class Completion:
    """One sampled response. finish_reason is "stop" (end of turn or stop string) or "length"."""

    text: str
    num_tokens: int
    finish_reason: str


class Engine(Protocol):
    """Samples assistant turns for conversations."""

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        params: SamplingParams,
        desc: str = "generate",
        keys: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """For each conversation, `n` sampled responses to its next assistant turn.

        `keys` name the conversations' random streams (`seeds.problem_key` of their problems;
        0, 1, ... without): sample k of conversation i is drawn from the stream of
        (params.seed, keys[i], k), whatever else the call holds, where the engine can.
        """
        ...
