"""The KV cache of batched sampling, and attention that reads a shared prompt once.

`HFEngine` samples n completions of each prompt in one batch. Its cache is a transformers
`DynamicCache` whose layers are `PreallocatedLayer`s: allocated once, written in place. After
the prompts are prefilled once each, `PreallocatedLayer.share_prefix` keeps one copy of every
prompt's keys and values for its n samples and puts the samples' own tokens in a per-row
suffix. Attention then needs the prompt part once per prompt, not once per sample:
`shared_prefix_attention` is registered with transformers' `AttentionInterface` (the
documented way to plug in an attention function) and computes, for the one new token of each
row, scores over its prompt's shared keys (one matrix product for all n samples) and over its
own suffix, then one softmax over both. Same keys, same values, same softmax as sdpa over the
repeated cache: the figures agree to float rounding. Decoding attention is bound by reading the
cache, so with multi-turn prompts of ~200 tokens and n=16 this reads ~10x less.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import accumulate

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SHARED_PREFIX = "rise_shared_prefix"
_ACTIVE: ContextVar[DynamicCache | None] = ContextVar("rise_shared_prefix_cache", default=None)
# keyword arguments some models pass to attention that the shared path does not implement; a
# call with any of them set goes to sdpa over the full keys instead
_UNSUPPORTED = ("softcap", "s_aux", "sliding_window", "position_bias")


def cache_kwarg(model: torch.nn.Module, cache: DynamicCache | None) -> dict[str, object]:
    """`cache` as the keyword argument `model`'s forward and generate take it: transformers 5.25
    renamed past_key_values to cache (the old name warns, and goes in 5.40); a model whose
    forward still takes past_key_values (an older transformers, remote code) gets that."""
    takes = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in takes else "past_key_values": cache}


class Arena:
    """Flat buffers that the caches of successive batches reuse.

    A large tensor freed on CPU goes back to the operating system, so each batch's fresh
    cache paid a page fault on first touch of every page it wrote (one decoding step writes
    one position in each row and head, a new page for many of them): the cache writes took 6%
    of a decoding step of the toy model, 3.5% with the arena. The engine keeps one arena; each
    layer's keys and values are views of its buffers, which grow when a batch needs more and
    hold the largest batch's cache until the engine goes.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def take(self, key: tuple, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of `shape`, in `like`'s dtype and device, kept under `key`."""
        size = math.prod(shape)
        buffer = self.buffers.get(key)
        if (
            buffer is None
            or buffer.numel() < size
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            self.buffers.pop(key, None)  # release the old buffer before allocating its successor
            buffer = None
            self.buffers[key] = like.new_empty(size)
        return self.buffers[key][:size].view(shape)


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer allocated once for `capacity` positions, filled in place.

    transformers' DynamicLayer concatenates the whole cache with each new token, a copy that
    grows with the sequence (about 40% of a decoding step for the toy model on CPU); its
    StaticCache writes in place but attends over its full length from the first step. This
    layer writes in place and gives attention views of the filled positions only: the same
    keys and values as DynamicLayer, hence the same tokens, without the copies.

    After `share_prefix`, the filled positions are a prefix shared by groups of rows (one
    prompt, n samples) and new tokens go into a per-row suffix; `keys` and `values` are then
    the suffix only, and `full_states` rebuilds the rows' whole keys and values.
    """

    def __init__(self, capacity: int, arena: Arena | None = None, index: int = 0):
        super().__init__()
        self.capacity = capacity
        self.arena = arena or Arena()
        self.index = index
        self.length = 0
        self.rows: slice | None = None  # while a prompt slice is filled: its rows
        self.batch_rows = 0  # and the rows of the whole batch
        self.prefix_keys: torch.Tensor | None = None
        self.prefix_values: torch.Tensor | None = None
        self.row_group: torch.Tensor | None = None  # row → its prompt (group)
        self.group_first: torch.Tensor | None = None  # group → its first row
        self.group_width = 0  # rows of the largest group
        self.slots: torch.Tensor | None = None  # row → place in (groups x width); None: even

    @property
    def prefix_length(self) -> int:
        return 0 if self.prefix_keys is None else self.prefix_keys.shape[-2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        b, h, _, d = key_states.shape
        b = max(b, self.batch_rows)
        self._keys = self._take("keys", (b, h, self.capacity, d), key_states)
        self._values = self._take(
            "values", (b, h, self.capacity, value_states.shape[-1]), value_states
        )

    def _take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        # the prompt part and the shared-prefix suffix live side by side: separate buffers
        return self.arena.take((self.index, name, self.prefix_keys is not None), shape, like)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            raise RuntimeError(f"KV cache of {self.capacity} positions asked to hold more")
        if self.rows is not None:  # one slice of the prompts: its rows only, length unchanged
            self._keys[self.rows, :, self.length : end] = key_states
            self._values[self.rows, :, self.length : end] = value_states
            return self._keys[self.rows, :, :end], self._values[self.rows, :, :end]
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def fill_rows(self, rows: slice, batch_rows: int) -> None:
        """The next forward pass writes the prompts of `rows` (of `batch_rows` in all)."""
        self.rows, self.batch_rows = rows, batch_rows

    def filled_rows(self, tokens: int) -> None:
        """Every row's slice holds `tokens` more positions: back to whole-batch updates."""
        self.rows = None
        self.length += tokens
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.prefix_length + (self.length if self.is_initialized else 0)

    def repeat_rows(self, counts: torch.Tensor) -> None:
        """Repeat batch row i counts[i] times (one prefilled prompt for its n samples)."""
        self._keys = self._keys.repeat_interleave(counts, dim=0)
        self._values = self._values.repeat_interleave(counts, dim=0)
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def share_prefix(self, counts: torch.Tensor) -> None:
        """Make the filled positions of row i the shared prefix of counts[i] new rows.

        The prefix is kept once (no copy per row); the new rows get an empty suffix of the
        remaining capacity, which the following tokens fill.
        """
        self.prefix_keys = self._keys[:, :, : self.length]
        self.prefix_values = self._values[:, :, : self.length]
        self._group(
            torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        )
        rows, (_, h, _, d), dv = int(counts.sum()), self._keys.shape, self._values.shape[-1]
        room = self.capacity - self.length
        self._keys = self._take("keys", (rows, h, room, d), self._keys)
        self._values = self._take("values", (rows, h, room, dv), self._values)
        self.length = 0
        self.keys, self.values = self._keys[:, :, :0], self._values[:, :, :0]

    def _group(self, row_group: torch.Tensor) -> None:
        """Set which prompt each row attends to (non-decreasing: a group's rows are adjacent)."""
        sizes = torch.bincount(row_group, minlength=self.prefix_keys.shape[0]).tolist()
        self.row_group = row_group
        self.group_first = torch.tensor([0, *accumulate(sizes)][:-1], device=row_group.device)
        self.group_width = width = max(sizes)
        self.slots = None
        if any(size != width for size in sizes):
            self.slots = torch.tensor(
                [g * width + j for g, size in enumerate(sizes) for j in range(size)],
                device=row_group.device,
            )

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (increasing), moved to the front: finished samples leave
        the batch. Prompts left with no sample leave the shared prefix."""
        _move_rows(self._keys, rows, self.length)
        _move_rows(self._values, rows, self.length)
        self._keys, self._values = self._keys[: len(rows)], self._values[: len(rows)]
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]
        if self.prefix_keys is not None:
            groups, row_group = torch.unique_consecutive(self.row_group[rows], return_inverse=True)
            self.prefix_keys = self.prefix_keys[groups]
            self.prefix_values = self.prefix_values[groups]
            self._group(row_group)

    def full_states(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's keys and values, prefix included (copies the prefix per row)."""
        if self.prefix_keys is None:
            return self.keys, self.values
        keys = torch.cat([self.prefix_keys[self.row_group], self.keys], dim=-2)
        values = torch.cat([self.prefix_values[self.row_group], self.values], dim=-2)
        return keys, values


def _move_rows(buffer: torch.Tensor, rows: torch.Tensor, length: int, block: int = 64) -> None:
    """buffer[i] = buffer[rows[i]] over the first `length` positions, in place.

    `rows` increases, so rows[i] >= i: a block's sources lie at or after its destinations and
    after every earlier block's, and moving block by block never overwrites a row still to be
    read, while the copy in flight stays one block (not the whole cache) in size.
    """
    for start in range(0, len(rows), block):
        chosen = rows[start : start + block]
        buffer[start : start + len(chosen), :, :length] = buffer[chosen, :, :length]


def preallocated_cache(config, capacity: int, arena: Arena | None = None) -> DynamicCache | None:
    """A DynamicCache of `PreallocatedLayer`s for a model whose layers all attend to the full
    sequence, in `arena`'s buffers (a fresh arena without one); None for other models
    (sliding-window or linear-attention layers)."""
    cache = DynamicCache(config=config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    arena = arena or Arena()
    cache.layers = [PreallocatedLayer(capacity, arena, i) for i in range(len(cache.layers))]
    return cache


@contextmanager
def attending_shared_prefix(model, cache: DynamicCache) -> Iterator[bool]:
    """Within the block, `model` attends with `shared_prefix_attention` over `cache`.

    Only a model on sdpa (transformers' default) is switched, so that sdpa is also what the
    shared path falls back to; yields whether it was switched.
    """
    before = model.config._attn_implementation
    if before != "sdpa":
        yield False
        return
    token = _ACTIVE.set(cache)
    model.set_attn_implementation(SHARED_PREFIX)
    try:
        yield True
    finally:
        model.set_attn_implementation(before)
        _ACTIVE.reset(token)


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over its prompt's shared prefix and its own suffix.

    Anything else (prefill, several new tokens, a cache without a shared prefix, model
    features such as soft-capping or sinks) is sdpa over the rows' full keys and values.
    """
    cache = _ACTIVE.get()
    layer = cache.layers[module.layer_idx] if cache is not None else None
    if not isinstance(layer, PreallocatedLayer) or layer.prefix_keys is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[2] != 1 or dropout or any(kwargs.get(k) is not None for k in _UNSUPPORTED):
        key, value = layer.full_states()
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return _attend(query[:, :, 0], layer, attention_mask, scale), None


def _attend(
    query: torch.Tensor, layer: PreallocatedLayer, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """query (rows, heads, dim) → output (rows, 1, heads, value dim).

    The work is laid out per group: (groups, kv heads, group rows x heads per kv head, ·), so
    that the prompt part, the big one, is one batched matrix product each way and never
    copied; only the small per-row tensors (queries, suffix scores, outputs) change layout.
    """
    prefix_k, prefix_v, suffix_k, suffix_v = (
        layer.prefix_keys,
        layer.prefix_values,
        layer.keys,
        layer.values,
    )
    rows, heads = query.shape[:2]
    groups, kv_heads, prefix = prefix_k.shape[:3]
    rep, width, slots = heads // kv_heads, layer.group_width, layer.slots
    query = query * scale
    q = _grouped(query.view(rows, kv_heads, rep, -1), slots, groups, width)
    pre = torch.matmul(q, prefix_k.transpose(-1, -2))  # (groups, kv_heads, width*rep, P)
    own = torch.matmul(query.view(rows, kv_heads, rep, -1), suffix_k.transpose(-1, -2))
    if mask is not None:
        # a row's prompt padding is its group's: the first row of each group stands for all
        mask = mask[:, 0, -1, -(prefix + own.shape[-1]) :].expand(rows, -1)  # (rows, P + S)
        pre = _masked(pre, mask[layer.group_first, :prefix].view(groups, 1, 1, prefix))
        own = _masked(own, mask[:, prefix:].view(rows, 1, 1, -1))
    scores = torch.cat([pre, _grouped(own, slots, groups, width)], dim=-1)
    # at least float32 (as sdpa): half-precision scores are upcast, float64 ones kept
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    probs = torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    out = torch.matmul(probs[..., :prefix], prefix_v)  # (groups, kv_heads, width*rep, dv)
    p_own = _ungrouped(probs[..., prefix:], slots, rows, width, rep)
    out = _ungrouped(out, slots, rows, width, rep)
    out = out + torch.matmul(p_own, suffix_v)  # (rows, kv_heads, rep, dv)
    return out.reshape(rows, 1, heads, -1)


def _grouped(x: torch.Tensor, slots, groups: int, width: int) -> torch.Tensor:
    """(rows, kv_heads, rep, n) → (groups, kv_heads, width * rep, n); padding rows are zero
    (a batch whose groups all have `width` rows is a reshape)."""
    if slots is not None:
        x = x.new_zeros(groups * width, *x.shape[1:]).index_copy_(0, slots, x)
    _, kv_heads, rep, n = x.shape
    x = x.view(groups, width, kv_heads, rep, n).permute(0, 2, 1, 3, 4)
    return x.reshape(groups, kv_heads, width * rep, n)


def _ungrouped(x: torch.Tensor, slots, rows: int, width: int, rep: int) -> torch.Tensor:
    """The inverse of `_grouped`: (groups, kv_heads, width * rep, n) → (rows, kv_heads, rep, n)."""
    groups, kv_heads, _, n = x.shape
    x = x.view(groups, kv_heads, width, rep, n).permute(0, 2, 1, 3, 4)
    x = x.reshape(groups * width, kv_heads, rep, n)
    return x if slots is None else x[slots]


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores with masked positions at the dtype's minimum (a bool mask: True attends) or
    plus the mask (a float mask, already additive)."""
    if mask.dtype == torch.bool:
        return scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    return scores.add_(mask)


AttentionInterface.register(SHARED_PREFIX, shared_prefix_attention)
AttentionMaskInterface.register(SHARED_PREFIX, sdpa_mask)
