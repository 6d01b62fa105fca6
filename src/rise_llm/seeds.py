"""How every derived seed is made from a run's seed: one function per derivation.

The episode loops (evaluation, collection, serving) seed turn t with `turn_seed`; the Hugging
Face engine seeds its b-th batch with `batch_seed`; the OpenAI engine seeds each request with
`request_seed`. Distinct primes keep the streams of different turns, batches, conversations and
fallback rounds apart. Changing any of these changes every sampled token of every run.
"""

from __future__ import annotations

TURN_PRIME = 7919
BATCH_PRIME = 1_000_003
ROUND_PRIME = 104_729


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of turn `turn` (1-based) of an episode loop seeded with `seed`."""
    return seed + TURN_PRIME * turn


def batch_seed(seed: int, batch: int) -> int:
    """The torch seed of the `batch`-th batch of one engine call with sampling seed `seed`.

    Reduced modulo 2**64: torch takes seeds in [-2**63, 2**64) and wraps negative ones modulo
    2**64, so this is the same generator state wherever torch accepted the product, and any
    integer seed (a server request's, say) works.

    >>> batch_seed(-1, 0) == 2**64 - BATCH_PRIME
    True
    """
    return (seed * BATCH_PRIME + batch) % 2**64


def request_seed(seed: int, conversation: int, round_: int, modulus: int) -> int:
    """The seed of one server request: distinct per conversation and per fallback round, so
    samples asked again after a short answer are new draws, and a retried request draws the
    same; reduced modulo what the server accepts."""
    return (seed * BATCH_PRIME + conversation * TURN_PRIME + round_ * ROUND_PRIME) % modulus
