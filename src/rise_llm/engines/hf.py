"""Sampling with Hugging Face transformers, batched.

All conversations and all their samples of one call share batches: prompts are rendered by the
chat template (`rise_llm.chat`), repeated n times, sorted by length, left-padded and generated
together with the KV cache. Never one sample at a time.

Models load through `rise_llm.models` (a folder, a Hub id or a GGUF file), as training does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from transformers import (
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.cache_utils import DynamicCache

from rise_llm.chat import prompt_ids
from rise_llm.engines.base import BATCH_SIZE, Completion, SamplingParams
from rise_llm.engines.kv_cache import Arena, attending_shared_prefix, preallocated_cache
from rise_llm.errors import RiseError
from rise_llm.models import load_model_and_tokenizer
from rise_llm.progress import progress_bar
from rise_llm.records import Message
from rise_llm.seeds import batch_seed

CACHES = ("auto", "shared", "preallocated", "static", "dynamic")
PREFILL_TOKENS = 4096  # prompt tokens per slice of the prefill (see HFEngine._prefill)


class RowsFinished(StoppingCriteria):
    """Ends a `generate` call for all rows once `share` of them have produced an EOS token,
    so that `HFEngine` can go on with the others in a smaller batch."""

    def __init__(self, eos: set[int], share: float):
        self.eos = torch.tensor(sorted(eos), dtype=torch.long)
        self.share = share
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        ended = torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))
        self.done = ended if self.done is None else self.done | ended
        stop = self.done.float().mean().item() >= self.share
        return torch.full_like(ended, stop)


class HFEngine:
    """The engine protocol over a transformers model.

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer (with a chat template).
        batch_size: most sequences generated together (512 was fastest for the toy on CPU,
            with compaction; `max_batch_tokens` makes batches of long prompts smaller).
        max_batch_tokens: cap on batch_size x (longest prompt + max_new_tokens), which bounds
            the KV cache; batches of long prompts are made smaller to fit.
        cache: "preallocated" (`kv_cache.PreallocatedLayer`) allocates each layer's KV cache
            once for prompt + max_new_tokens, writes new tokens in place and attends over the
            filled part only; "shared" is preallocated with one copy of each prompt's keys
            and values for all its samples, read once per step by
            `kv_cache.shared_prefix_attention` (models on sdpa; others get preallocated);
            "static" is transformers' StaticCache (in place, but attention over the whole
            length from the first step); "dynamic" is its DynamicCache (the whole cache
            copied by concatenation at every step). "auto" is shared, or for models with
            other layer kinds (sliding windows) static when the prompts are longer than
            max_new_tokens and dynamic otherwise. All compute the same attention; "shared"
            sums in another order, so its tokens can differ by float rounding.
        compact_at: with a preallocated or shared cache, once this share of a batch's rows
            have finished (end of turn), decoding stops and goes on with the unfinished rows
            only, their cache compacted: finished rows are not computed until the longest
            sample ends. 0 never compacts (one `generate` call per batch, as with the other
            caches). Sampling goes on from the same random stream, so samples differ from an
            uncompacted run but are as reproducible from the seed.

    One `generate` call at a time per model: a call seeds torch's global generator and, for
    the shared cache, switches the model's attention function until it returns.
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
        if not 0 <= compact_at <= 1:
            raise RiseError(f"compact_at is a share of rows between 0 and 1, got {compact_at}")
        if cache not in CACHES:
            raise RiseError(f"cache must be one of {', '.join(CACHES)}, got {cache!r}")
        self.cache = cache
        self.compact_at = compact_at
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.arena = Arena()

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
    ) -> list[list[Completion]]:
        if n < 1:
            raise RiseError(f"n must be at least 1, got {n}")
        prompts = [prompt_ids(self.tokenizer, c) for c in conversations]
        jobs = [(c, k) for c in range(len(prompts)) for k in range(n)]
        lengths = [len(prompts[c]) for c, _ in jobs]
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        config = self._generation_config(params)
        eos = self._eos_ids()
        done_tokens, start = 0, time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task(desc, total=len(jobs), rate="")
            for b, batch in enumerate(self._batches(lengths, params.max_new_tokens)):
                torch.manual_seed(batch_seed(params.seed, b))
                out = self._generate_batch([prompts[jobs[j][0]] for j in batch], config, params)
                for j, completion in zip(batch, self._decode(out, eos, params.stop), strict=True):
                    c, k = jobs[j]
                    results[c][k] = completion
                    done_tokens += completion.num_tokens
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=len(batch), rate=f"{done_tokens / elapsed:,.0f} tok/s")
        return results  # type: ignore[return-value]

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids) if isinstance(ids, list) else ({ids} if ids is not None else set())
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        sample = params.temperature > 0
        return GenerationConfig(
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=0 if sample else None,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self._eos_ids()),
            stop_strings=list(params.stop) or None,
        )

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], config: GenerationConfig, params: SamplingParams
    ) -> list[list[int]]:
        """The new tokens of each prompt's row (EOS and what follows included)."""
        width = max(len(p) for p in prompts)
        cache = None
        if self.cache in ("auto", "shared", "preallocated"):
            cache = preallocated_cache(self.model.config, width + config.max_new_tokens, self.arena)
        static = self.cache == "static" or (
            self.cache == "auto" and cache is None and width > config.max_new_tokens
        )
        config = copy.copy(config)
        config.cache_implementation = "static" if static else None
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts]).to(self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        mask = mask.to(self.device)
        counts = None if cache is None else self._prefill(input_ids, mask, prompts, cache)
        share = counts is not None and self.cache != "preallocated"
        with attending_shared_prefix(self.model, cache) if share else nullcontext(False) as shared:
            for layer in cache.layers if counts is not None else ():
                (layer.share_prefix if shared else layer.repeat_rows)(counts)
            if cache is None or not self.compact_at:
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    generation_config=config,
                    past_key_values=cache,
                    tokenizer=self.tokenizer if params.stop else None,
                )
                return out[:, width:].tolist()
            return self._generate_compacting(input_ids, mask, cache, config, params)

    def _generate_compacting(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        cache: DynamicCache,
        config: GenerationConfig,
        params: SamplingParams,
    ) -> list[list[int]]:
        """`generate` in rounds that drop finished rows: each round ends once `compact_at` of
        its rows have finished; the others go on from the cache, compacted to their rows."""
        rows = list(range(input_ids.shape[0]))  # this round's rows → the batch's rows
        tokens: list[list[int]] = [[] for _ in rows]
        left, eos = config.max_new_tokens, self._eos_ids()
        while True:
            round_config = copy.copy(config)
            round_config.max_new_tokens = left
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=round_config,
                past_key_values=cache,
                stopping_criteria=StoppingCriteriaList([RowsFinished(eos, self.compact_at)]),
                tokenizer=self.tokenizer if params.stop else None,
            )
            new = out[:, input_ids.shape[1] :]
            left -= new.shape[1]
            going = []
            for i, row in enumerate(new.tolist()):
                tokens[rows[i]].extend(row)
                if not self._finished(tokens[rows[i]], eos, params.stop):
                    going.append(i)
            if left <= 0 or not going:
                return tokens
            keep = torch.tensor(going, device=input_ids.device)
            input_ids = out[keep]
            mask = torch.cat([mask, mask.new_ones(new.shape)], dim=1)[keep]
            for layer in cache.layers:
                layer.keep_rows(keep)
            rows = [rows[i] for i in going]

    def _finished(self, tokens: list[int], eos: set[int], stop: tuple[str, ...]) -> bool:
        if any(t in eos for t in tokens):
            return True
        return bool(stop) and any(s in self.tokenizer.decode(tokens) for s in stop)

    def _prefill(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        prompts: list[list[int]],
        cache: DynamicCache,
    ) -> torch.Tensor | None:
        """Fill `cache` with the prompts but their last token, once per distinct prompt, a
        few rows at a time; `generate` goes on from the last prompt token.

        The n samples of a conversation are adjacent rows with the same prompt: their prefill
        (most of the work for multi-turn prompts) is done once. Rows go through the model in
        slices of about `PREFILL_TOKENS` tokens: the element-wise work of a whole batch's
        prompts at once (norms, rotary embedding, activations over ~100k positions) ran at
        memory speed, slices that stay in the CPU's caches run 2.2x faster on the toy. Returns
        how many rows each cached prompt stands for, to share or repeat its cache rows; None
        when every prompt is distinct (the cache rows are the batch's rows).
        """
        if input_ids.shape[1] < 2:
            return None
        starts = [i for i in range(len(prompts)) if i == 0 or prompts[i] != prompts[i - 1]]
        ids, keep = input_ids[starts, :-1], mask[starts, :-1]
        positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
        step = max(1, PREFILL_TOKENS // ids.shape[1])
        for start in range(0, len(starts), step):
            rows = slice(start, start + step)
            for layer in cache.layers:
                layer.fill_rows(rows, len(starts))
            self.model(
                input_ids=ids[rows],
                attention_mask=keep[rows],
                position_ids=positions[rows],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        for layer in cache.layers:
            layer.filled_rows(ids.shape[1])
        if len(starts) == len(prompts):
            return None
        counts = torch.tensor([*starts[1:], len(prompts)]) - torch.tensor(starts)
        return counts.to(self.device)

    def _decode(
        self, new_tokens: list[list[int]], eos: set[int], stop: tuple[str, ...]
    ) -> list[Completion]:
        completions = []
        for row in new_tokens:
            finish, cut = "length", len(row)
            for i, token in enumerate(row):
                if token in eos:
                    finish, cut = "stop", i + 1
                    break
            text = self.tokenizer.decode(row[:cut], skip_special_tokens=True)
            for s in stop:
                if s in text:
                    text, finish = text[: text.index(s)], "stop"
            completions.append(Completion(text=text, num_tokens=cut, finish_reason=finish))
        return completions
