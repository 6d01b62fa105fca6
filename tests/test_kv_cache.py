"""The sampling KV cache: one copy of a shared prompt, attention that reads it once, and
buffers reused across batches, against transformers' own sdpa over a repeated cache."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from rise_llm.engines.base import SamplingParams
from rise_llm.engines.hf import HFEngine
from rise_llm.engines.kv_cache import (
    SHARED_PREFIX,
    Arena,
    attending_shared_prefix,
    cache_kwarg,
    preallocated_cache,
)
from rise_llm.errors import RiseError

# three prompts of different lengths (left-padded), standing for 3, 1 and 2 samples
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]
COUNTS = torch.tensor([3, 1, 2])
EXACT = 1e-10  # float64 rounding of these logits (~1, 2 layers) is ~1e-15; a bug is ~1e-1
# the shape of every random model below
SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
# other architectures the shared-prompt attention must serve; Qwen2 adds biases to q, k, v
FAMILIES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
}
# and ones it must leave to transformers: sliding-window layers (Mistral's default window,
# Gemma2's alternate layers), eager-only attention with logit soft-capping (Gemma2)
SLIDING = {
    "mistral, sliding window": (MistralConfig, MistralForCausalLM, {"sliding_window": 4}),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, {}),
}


def family_model(family, vocab_size: int = 50, **extra):
    config_cls, model_cls, options = family
    torch.manual_seed(0)
    config = config_cls(vocab_size=vocab_size, **SHAPE, **options, **extra)
    return model_cls(config).double().eval()


@pytest.fixture(scope="module")
def gqa_model():
    """A random Llama with grouped-query attention (4 query heads over 2 key-value heads), in
    float64: the paths compared below add the same terms in another order, which in float32
    differs by rounding whose size depends on the CPU's kernels; in float64 it is ~1e-16."""
    return family_model((LlamaConfig, LlamaForCausalLM, {}))


@torch.no_grad()
def decode_logits(model, share: bool, steps: int = 4, keep=None, keep_at: int = 2) -> torch.Tensor:
    """Prefill each prompt once, give its rows the prompt's cache (shared or repeated), then
    decode `steps` greedy tokens for the 6 rows; the logits of every step. With `keep`, only
    those rows go on after step `keep_at` (the cache compacted) and only theirs are returned."""
    width = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    cache = preallocated_cache(model.config, width + steps)
    model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        **cache_kwarg(model, cache),
        use_cache=True,
    )
    mask = mask.repeat_interleave(COUNTS, dim=0)
    token = torch.arange(1, 7).view(6, 1)  # a different first token in every row
    logits = []
    with attending_shared_prefix(model, cache) if share else torch.no_grad():
        for layer in cache.layers:
            (layer.share_prefix if share else layer.repeat_rows)(COUNTS)
        for step in range(steps):
            if keep is not None and step == keep_at:
                for layer in cache.layers:
                    layer.keep_rows(keep)
                mask, token, logits = mask[keep], token[keep], [x[keep] for x in logits]
            mask = torch.cat([mask, torch.ones(len(token), 1, dtype=mask.dtype)], dim=1)
            out = model(
                input_ids=token,
                attention_mask=mask,
                position_ids=mask.sum(-1, keepdim=True) - 1,
                **cache_kwarg(model, cache),
                use_cache=True,
            )
            logits.append(out.logits[:, -1])
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(logits, dim=1)


def test_shared_prefix_attention_equals_sdpa_over_repeated_rows(gqa_model):
    """Grouped-query heads, groups of unequal size and left padding: the same logits."""
    repeated = decode_logits(gqa_model, share=False)
    shared = decode_logits(gqa_model, share=True)
    assert torch.allclose(shared, repeated, atol=EXACT, rtol=EXACT)
    assert gqa_model.config._attn_implementation == "sdpa"  # switched back after the block


@pytest.mark.parametrize("family", ["llama", *FAMILIES])
def test_shared_prefix_attention_equals_sdpa_on_each_family(family, gqa_model, monkeypatch):
    """Built in-process from its config class, each family gives the same logits through the
    shared-prompt attention as through sdpa over repeated rows, and really takes that path
    (every layer at every decoding step)."""
    model = gqa_model if family == "llama" else family_model(FAMILIES[family])
    calls = []
    shared = ALL_ATTENTION_FUNCTIONS[SHARED_PREFIX]
    monkeypatch.setitem(
        ALL_ATTENTION_FUNCTIONS,
        SHARED_PREFIX,
        lambda *args, **kwargs: calls.append(1) or shared(*args, **kwargs),
    )
    repeated = decode_logits(model, share=False)
    assert calls == []
    assert torch.allclose(decode_logits(model, share=True), repeated, atol=EXACT, rtol=EXACT)
    assert len(calls) == model.config.num_hidden_layers * 4
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", list(SLIDING))
def test_sliding_window_models_sample_through_transformers_own_cache(family, exact_engine):
    """No preallocated cache for them; asked for the shared one, the engine samples what
    transformers' DynamicCache gives, greedy and seeded."""
    tokenizer = exact_engine.tokenizer
    model = family_model(
        SLIDING[family],
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).float()  # both paths are the same code here; Gemma2's eager attention gives NaN
    # probabilities in float64 with left padding (transformers 5.24), not in float32
    assert preallocated_cache(model.config, 8) is None
    convs = [
        [{"role": "user", "content": "What is 1 + 2?"}],
        [{"role": "user", "content": "What is 12 + 7 - 5 + 9 - 3?"}],
    ]

    def texts(cache: str, params: SamplingParams) -> list[str]:
        out = HFEngine(model, tokenizer, cache=cache).generate(convs, n=3, params=params)
        return [s.text for samples in out for s in samples]

    for params in (
        SamplingParams(temperature=0.0, max_new_tokens=12),
        SamplingParams(max_new_tokens=12, seed=5),
    ):
        got = texts("shared", params)
        assert got == texts("dynamic", params)
        assert any(got)  # not all empty: the comparison says something


@torch.no_grad()
def prompts_cache(model):
    """A preallocated cache holding the three PROMPTS (one row each) and room for 4 more."""
    width = max(map(len, PROMPTS))
    cache = preallocated_cache(model.config, width + 4)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    model(input_ids=ids, **cache_kwarg(model, cache), use_cache=True)
    return cache, width


def test_shared_cache_keeps_one_copy_of_each_prompt(gqa_model):
    cache, width = prompts_cache(gqa_model)
    layer = cache.layers[0]
    prompt_keys = layer.keys.clone()
    layer.share_prefix(COUNTS)
    assert layer.prefix_keys.shape[0] == 3  # prompts, not samples
    assert layer.keys.shape[0] == 6 and layer.keys.shape[-2] == 0
    assert cache.get_seq_length() == width
    full_keys, _ = layer.full_states()
    assert torch.equal(full_keys, prompt_keys.repeat_interleave(COUNTS, dim=0))


def test_engine_shared_cache_generates_what_the_repeated_cache_does(exact_engine):
    model, tokenizer = exact_engine.model, exact_engine.tokenizer
    convs = [
        [{"role": "user", "content": "What is 1 + 2?"}],
        [
            {"role": "user", "content": "What is 3 + 3?"},
            {"role": "assistant", "content": "3 + 3 = 7\nAnswer: \\boxed{7}"},
            {"role": "user", "content": "Try again: What is 3 + 3?"},
        ],
    ]

    def texts(cache: str, params: SamplingParams, batch_size: int = 128) -> list[str]:
        engine = HFEngine(model, tokenizer, cache=cache, batch_size=batch_size)
        out = engine.generate(convs, n=4, params=params)
        return [s.text for samples in out for s in samples]

    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    assert texts("shared", greedy) == texts("preallocated", greedy)
    # batches of 3 split the 4 samples of a prompt: groups of 3 and 1, then 2 and 2
    assert texts("shared", greedy, batch_size=3) == texts("preallocated", greedy)
    sampled = SamplingParams(max_new_tokens=16, seed=2)
    # the sums run in another order, so equal up to rounding: the samples drawn are the same
    assert texts("shared", sampled) == texts("preallocated", sampled)
    assert model.config._attn_implementation == "sdpa"


def test_models_not_on_sdpa_keep_the_repeated_cache(exact_engine):
    model, tokenizer = exact_engine.model, exact_engine.tokenizer
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    convs = [[{"role": "user", "content": "What is 4 + 5?"}]]
    on_sdpa = HFEngine(model, tokenizer, cache="shared").generate(convs, n=3, params=greedy)
    model.set_attn_implementation("eager")
    try:
        cache = preallocated_cache(model.config, 4)
        with attending_shared_prefix(model, cache) as switched:
            assert switched is False
            assert model.config._attn_implementation == "eager"
        on_eager = HFEngine(model, tokenizer, cache="shared").generate(convs, n=3, params=greedy)
    finally:
        model.set_attn_implementation("sdpa")
    assert [c.text for c in on_eager[0]] == [c.text for c in on_sdpa[0]]


def test_attention_is_switched_back_when_generation_fails(gqa_model):
    cache = preallocated_cache(gqa_model.config, 4)
    with pytest.raises(RuntimeError, match="boom"), attending_shared_prefix(gqa_model, cache):
        raise RuntimeError("boom")
    assert gqa_model.config._attn_implementation == "sdpa"


def test_arena_reuses_its_buffers_across_batches(tiny_engine):
    arena = Arena()
    like = torch.empty(0)
    first = arena.take(("k",), (4, 2, 8, 16), like)
    smaller = arena.take(("k",), (2, 2, 8, 16), like)
    assert smaller.data_ptr() == first.data_ptr()
    bigger = arena.take(("k",), (8, 2, 8, 16), like)
    assert bigger.shape == (8, 2, 8, 16)
    assert arena.take(("k",), (4, 2, 8, 16), like).data_ptr() == bigger.data_ptr()
    assert arena.take(("v",), (4, 2, 8, 16), like).data_ptr() != bigger.data_ptr()

    engine = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=4)
    convs = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(6)]
    params = SamplingParams(max_new_tokens=10, seed=7)
    once = engine.generate(convs, n=2, params=params)
    pointers = {k: b.data_ptr() for k, b in engine.sampler.arena.buffers.items()}
    again = engine.generate(convs, n=2, params=params)  # reuses buffers holding old values
    assert {k: b.data_ptr() for k, b in engine.sampler.arena.buffers.items()} == pointers
    fresh = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=4)
    assert [[c.text for c in s] for s in again] == [[c.text for c in s] for s in once]
    assert [[c.text for c in s] for s in fresh.generate(convs, n=2, params=params)] == [
        [c.text for c in s] for s in once
    ]


def test_keep_rows_drops_finished_rows_and_their_empty_prompts(gqa_model):
    cache, width = prompts_cache(gqa_model)
    with torch.no_grad():
        for layer in cache.layers:  # rows 0-2: prompt 0, row 3: prompt 1, rows 4-5: prompt 2
            layer.share_prefix(COUNTS)
        layer = cache.layers[0]
        gqa_model(
            input_ids=torch.arange(1, 7).view(6, 1), **cache_kwarg(gqa_model, cache), use_cache=True
        )
    before_k, before_v = layer.full_states()
    keep = torch.tensor([1, 2, 5])  # prompt 1 has no row left
    layer.keep_rows(keep)
    assert layer.prefix_keys.shape[0] == 2
    assert layer.row_group.tolist() == [0, 0, 1]
    after_k, after_v = layer.full_states()
    assert torch.equal(after_k, before_k[keep]) and torch.equal(after_v, before_v[keep])
    assert cache.get_seq_length() == width + 1


@pytest.mark.parametrize("share", [True, False])
def test_decoding_goes_on_exactly_after_finished_rows_leave(gqa_model, share):
    """Rows 0, 3 and 4 leave after two steps (prompt 1 loses its only row): the rows kept
    get the logits they get when every row stays."""
    keep = torch.tensor([1, 2, 5])
    every_row = decode_logits(gqa_model, share=share, steps=5)[keep]
    compacted = decode_logits(gqa_model, share=share, steps=5, keep=keep)
    assert torch.allclose(compacted, every_row, atol=EXACT, rtol=EXACT)


def count_generate_calls(monkeypatch, model) -> list[int]:
    """Record the batch size of every `model.generate` call (the real one runs)."""
    calls: list[int] = []
    real = model.generate

    def recording(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording)
    return calls


def test_engine_leaves_finished_rows_behind(tiny_engine, monkeypatch):
    model, tokenizer = tiny_engine.model, tiny_engine.tokenizer
    convs = [[{"role": "user", "content": f"What is {i} + {2 * i} - 1?"}] for i in range(8)]
    params = SamplingParams(max_new_tokens=40, seed=3)
    engine = HFEngine(model, tokenizer, compact_at=0.25, batch_size=16)
    calls = count_generate_calls(monkeypatch, model)
    out = engine.generate(convs, 4, params)
    # two batches of 16, each continued in smaller batches as samples end
    assert calls.count(16) == 2 and len(calls) > 2 and min(calls) < 16
    ended = [c for s in out for c in s if c.finish_reason == "stop"]
    assert ended and all(c.num_tokens < 40 for c in ended)
    assert all(c.num_tokens == 40 for s in out for c in s if c.finish_reason == "length")
    again = HFEngine(model, tokenizer, compact_at=0.25, batch_size=16).generate(convs, 4, params)
    assert [[c.text for c in s] for s in again] == [[c.text for c in s] for s in out]


def test_compacted_sampling_is_reproducible_and_stops_at_stop_strings(exact_engine):
    model, tokenizer = exact_engine.model, exact_engine.tokenizer
    convs = [[{"role": "user", "content": f"What is {i} + 4?"}] for i in range(4)]
    params = SamplingParams(max_new_tokens=30, seed=11, stop=("\n",))
    engine = HFEngine(model, tokenizer, compact_at=0.25)
    a, b = engine.generate(convs, 4, params), engine.generate(convs, 4, params)
    assert [[c.text for c in s] for s in a] == [[c.text for c in s] for s in b]
    for c in (c for s in a for c in s):
        assert "\n" not in c.text
        assert c.finish_reason == "stop" or c.num_tokens == 30
    greedy = SamplingParams(temperature=0.0, max_new_tokens=30, stop=("\n",))
    once = HFEngine(model, tokenizer, compact_at=0).generate(convs, 2, greedy)
    assert [[c.text for c in s] for s in engine.generate(convs, 2, greedy)] == [
        [c.text for c in s] for s in once
    ]


def test_compact_at_must_be_a_share(tiny_engine):
    with pytest.raises(RiseError, match="compact_at"):
        HFEngine(tiny_engine.model, tiny_engine.tokenizer, compact_at=1.5)


def test_rows_move_in_place_block_by_block():
    from rise_llm.engines.kv_cache import _move_rows

    buffer = torch.arange(10 * 2 * 5 * 3, dtype=torch.float32).view(10, 2, 5, 3)
    before = buffer.clone()
    rows = torch.tensor([1, 3, 4, 7, 8, 9])
    _move_rows(buffer, rows, length=4, block=2)  # blocks cross the rows being read
    assert torch.equal(buffer[:6, :, :4], before[rows, :, :4])
    assert torch.equal(buffer[:, :, 4:], before[:, :, 4:])  # positions past `length` untouched


@pytest.mark.parametrize("cache", ["shared", "preallocated"])
def test_prefill_in_slices_of_rows_gives_the_same_tokens(exact_engine, monkeypatch, cache):
    """Prompts prefilled a few rows at a time generate what transformers' own prefill does."""
    from rise_llm.engines import batch_sampler

    model, tokenizer = exact_engine.model, exact_engine.tokenizer
    convs = [[{"role": "user", "content": f"What is {i} + {3 * i} - 2?"}] for i in range(7)]
    convs.append(
        [
            {"role": "user", "content": "What is 3 + 3?"},
            {"role": "assistant", "content": "3 + 3 = 7\nAnswer: \\boxed{7}"},
            {"role": "user", "content": "Try again: What is 3 + 3?"},
        ]
    )

    def texts(cache: str, n: int, params: SamplingParams) -> list[str]:
        engine = HFEngine(model, tokenizer, cache=cache, compact_at=0)
        return [c.text for s in engine.generate(convs, n, params) for c in s]

    sampled = SamplingParams(max_new_tokens=12, seed=4)
    whole = {n: texts("dynamic", n, sampled) for n in (1, 3)}
    monkeypatch.setattr(batch_sampler, "PREFILL_TOKENS", 40)  # slices of one to three rows
    for n in (1, 3):
        assert texts(cache, n, sampled) == whole[n]


def test_the_cache_goes_by_the_keyword_the_model_takes():
    """transformers 5.25 renamed forward's past_key_values to cache; a model (an older
    transformers, remote code) whose forward takes the old name still gets it."""

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None): ...

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None): ...

    cache = preallocated_cache(LlamaConfig(num_hidden_layers=1), 4)
    assert cache_kwarg(Old(), cache) == {"past_key_values": cache}
    assert cache_kwarg(New(), cache) == {"cache": cache}
