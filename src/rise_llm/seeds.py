"""How every derived seed is made from a run's seed: one function per derivation.

The episode loops (evaluation, collection, serving) seed turn t with `turn_seed`. Within a
turn, every conversation is named by a key (`problem_key`: its problem, whatever batch, chunk
or shard it lands in), and the Hugging Face engine draws the k-th sample of conversation `key`
from its own random stream, seeded `stream_seed(seed, key, k)`: a sample depends on (seed,
problem, turn, sample index) alone, not on which samples share its batch. The OpenAI engine
seeds each request with `request_seed`. Changing any of these changes every sampled token of
every run.
"""

from __future__ import annotations

import hashlib

TURN_PRIME = 7919
BATCH_PRIME = 1_000_003
ROUND_PRIME = 104_729


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of turn `turn` (1-based) of an episode loop seeded with `seed`."""
    return seed + TURN_PRIME * turn


def problem_key(problem_id: str) -> int:
    """A problem's stream key: 63 bits of a hash of its id, the same in every process (unlike
    Python's `hash`), shard and chunk."""
    digest = hashlib.blake2b(problem_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def stream_seed(seed: int, key: int, sample: int) -> int:
    """The torch seed of sample `sample` of the conversation keyed `key`, sampled with `seed`.

    A hash of the three integers (any size or sign), so nearby seeds, keys and samples give
    unrelated streams; 64 bits, what torch's generators take.

    >>> stream_seed(0, 1, 2) == stream_seed(0, 1, 2) != stream_seed(0, 2, 1)
    True
    """
    text = f"{seed}/{key}/{sample}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def request_seed(seed: int, conversation: int, round_: int, modulus: int) -> int:
    """The seed of one server request: distinct per conversation (its key) and per fallback
    round, so samples asked again after a short answer are new draws, and a retried request
    draws the same; reduced modulo what the server accepts."""
    return (seed * BATCH_PRIME + conversation * TURN_PRIME + round_ * ROUND_PRIME) % modulus
