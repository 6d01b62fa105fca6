"""Sampling with Hugging Face transformers, batched.

All conversations and all their samples of one call share batches: prompts are rendered by the
chat template (`rise_llm.chat`), repeated n times, sorted by length and cut into batches, each
sampled by `batch_sampler.BatchSampler` (prefill, KV cache, compaction, decoding). Never one
sample at a time.

Models load through `rise_llm.models` (a folder, a Hub id or a GGUF file), as training does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from rise_llm.chat import prompt_ids
from rise_llm.engines.base import BATCH_SIZE, Completion, SamplingParams, stream_keys
from rise_llm.engines.batch_sampler import BatchSampler
from rise_llm.errors import RiseError
from rise_llm.models import load_model_and_tokenizer
from rise_llm.progress import progress_bar
from rise_llm.records import Message
from rise_llm.seeds import stream_seed


class HFEngine:
    """The engine protocol over a transformers model.

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer (with a chat template).
        batch_size: most sequences generated together (512 was fastest for the toy on CPU,
            with compaction; `max_batch_tokens` makes batches of long prompts smaller).
        max_batch_tokens: cap on batch_size x (longest prompt + max_new_tokens), which bounds
            the KV cache; batches of long prompts are made smaller to fit.
        cache, compact_at: how each batch is sampled (`BatchSampler`: the KV cache kind, and
            the share of finished rows after which decoding goes on without them).

    Sample k of conversation i is drawn from the random stream `seeds.stream_seed(params.seed,
    keys[i], k)`, so it is the same whichever conversations share the call and however they
    are batched (see `row_streams` for the float caveat). One `generate` call at a time per
    model: for the shared cache, a call switches the model's attention function until it
    returns.
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = BATCH_SIZE,
        max_batch_tokens: int = 1 << 18,
        cache: str = "auto",
        compact_at: float = 0.5,
    ):
        if batch_size < 1 or max_batch_tokens < 1:
            raise RiseError("batch_size and max_batch_tokens must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.sampler = BatchSampler(model, tokenizer, cache, compact_at)

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        chat_template: str | None = None,
        **kwargs,
    ) -> HFEngine:
        lm, tokenizer = load_model_and_tokenizer(model, device, dtype, chat_template)
        return cls(lm, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _batches(self, lengths: list[int], max_new_tokens: int) -> list[list[int]]:
        """Indices grouped into batches, longest prompts first, within both size caps."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            longest = lengths[current[0]] if current else lengths[i]
            fits = (len(current) + 1) * (longest + max_new_tokens) <= self.max_batch_tokens
            if current and (len(current) >= self.batch_size or not fits):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        params: SamplingParams,
        desc: str = "generate",
        keys: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        if n < 1:
            raise RiseError(f"n must be at least 1, got {n}")
        keys = stream_keys(conversations, keys)
        prompts = [prompt_ids(self.tokenizer, c) for c in conversations]
        jobs = [(c, k) for c in range(len(prompts)) for k in range(n)]
        lengths = [len(prompts[c]) for c, _ in jobs]
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        done_tokens, start = 0, time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task(desc, total=len(jobs), rate="")
            for batch in self._batches(lengths, params.max_new_tokens):
                streams = [stream_seed(params.seed, keys[jobs[j][0]], jobs[j][1]) for j in batch]
                completions = self.sampler.sample(
                    [prompts[jobs[j][0]] for j in batch], params, streams
                )
                for j, completion in zip(batch, completions, strict=True):
                    c, k = jobs[j]
                    results[c][k] = completion
                    done_tokens += completion.num_tokens
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=len(batch), rate=f"{done_tokens / elapsed:,.0f} tok/s")
        return results  # type: ignore[return-value]
