"""The Hugging Face engine: batching, padding, seeds and limits, on a tiny model built here."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from rise_llm.engines.base import SamplingParams
from rise_llm.engines.hf import HFEngine
from rise_llm.engines.kv_cache import PreallocatedLayer, preallocated_cache
from rise_llm.errors import RiseError
from rise_llm.models import model_source

CONVS = [
    [{"role": "user", "content": "What is 1 + 2?"}],
    [{"role": "user", "content": "What is 12 + 7 - 5 + 9 - 3?"}],
    [
        {"role": "user", "content": "What is 3 + 3?"},
        {"role": "assistant", "content": "3 + 3 = 7\nAnswer: \\boxed{7}"},
        {"role": "user", "content": "Try again: What is 3 + 3?"},
    ],
]


def test_n_samples_per_conversation_in_order(tiny_engine):
    params = SamplingParams(max_new_tokens=12, seed=1)
    out = tiny_engine.generate(CONVS, n=3, params=params)
    assert [len(samples) for samples in out] == [3, 3, 3]
    for samples in out:
        for c in samples:
            assert 1 <= c.num_tokens <= 12
            assert c.finish_reason in ("stop", "length")
            assert c.finish_reason == "stop" or c.num_tokens == 12


def test_batched_greedy_equals_one_at_a_time(exact_engine):
    """Left padding and the KV cache must not change what a prompt generates."""
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    together = exact_engine.generate(CONVS, n=1, params=params)
    alone = [exact_engine.generate([c], n=1, params=params)[0] for c in CONVS]
    assert [s[0].text for s in together] == [s[0].text for s in alone]


def test_same_seed_same_samples_other_seed_differs(tiny_engine):
    a = tiny_engine.generate(CONVS, n=4, params=SamplingParams(max_new_tokens=16, seed=3))
    b = tiny_engine.generate(CONVS, n=4, params=SamplingParams(max_new_tokens=16, seed=3))
    c = tiny_engine.generate(CONVS, n=4, params=SamplingParams(max_new_tokens=16, seed=4))
    texts = lambda out: [s.text for samples in out for s in samples]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)


def test_stop_strings_cut_the_text(exact_engine):
    """Greedy text with a stop string is the text without it, cut before the string's first
    occurrence; an empty or unchanged output fails."""
    free = exact_engine.generate(CONVS, n=1, params=SamplingParams(temperature=0.0))
    stopped = exact_engine.generate(CONVS, n=1, params=SamplingParams(temperature=0.0, stop=(" ",)))
    full = [samples[0].text for samples in free]
    assert any(" " in text for text in full)  # the stop string occurs, so something is cut
    assert [samples[0].text for samples in stopped] == [text.split(" ")[0] for text in full]
    for samples, text in zip(stopped, full, strict=True):
        if " " in text:
            assert samples[0].finish_reason == "stop"


def test_batches_respect_both_caps(tiny_engine):
    engine = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=3, max_batch_tokens=100)
    lengths = [10, 40, 5, 30, 20, 25, 15]
    batches = engine._batches(lengths, max_new_tokens=10)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 10) <= 100
    # longest first, so similar lengths share a batch
    assert batches[0][0] == 1


def test_bad_requests_are_rejected(tiny_engine):
    with pytest.raises(RiseError, match="n must be at least 1"):
        tiny_engine.generate(CONVS, n=0, params=SamplingParams())
    with pytest.raises(RiseError, match=r"sampling: top_p must be in \(0, 1\]"):
        SamplingParams(top_p=0)
    with pytest.raises(RiseError, match=r"sampling: temperature must be 0 \(greedy\) or more"):
        SamplingParams(temperature=-0.5)
    with pytest.raises(RiseError, match="sampling: max_new_tokens must be at least 1"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(RiseError, match="does not exist"):
        HFEngine.load("./no/such/model")


def test_bfloat16_weights_generate(tiny_model_dir):
    engine = HFEngine.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    out = engine.generate(CONVS, n=2, params=SamplingParams(max_new_tokens=8, seed=0))
    assert [len(s) for s in out] == [2, 2, 2]
    with pytest.raises(RiseError, match="unknown dtype"):
        HFEngine.load(str(tiny_model_dir), device="cpu", dtype="fp8")


def _without_chat_template(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "no-template"
    shutil.copytree(model_dir, copy)
    (copy / "chat_template.jinja").unlink()
    return copy


def test_a_model_without_chat_template_needs_one_configured(tiny_model_dir, tmp_path):
    bare = _without_chat_template(tiny_model_dir, tmp_path)
    with pytest.raises(RiseError, match=r"has no chat template; .* set chat_template"):
        HFEngine.load(str(bare), device="cpu")
    template = tiny_model_dir / "chat_template.jinja"
    for given in (str(template), template.read_text()):  # a file, or the text itself
        engine = HFEngine.load(str(bare), device="cpu", chat_template=given)
        assert engine.tokenizer.chat_template == template.read_text()
        out = engine.generate(CONVS[:1], n=1, params=SamplingParams(max_new_tokens=4))
        assert out[0][0].num_tokens >= 1


def test_gguf_sources_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(RiseError, match=r"GGUF file .* does not exist"):
        HFEngine.load(str(tmp_path / "missing.gguf"))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_text("not a model")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)  # header cut short
    for broken in (garbage, truncated):
        with pytest.raises(RiseError, match=r"is not a readable GGUF file .* download it again"):
            HFEngine.load(str(broken))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a),
    )
    with pytest.raises(RiseError, match=r"needs the gguf package: pip install 'rise-llm\[gguf\]'"):
        HFEngine.load(str(garbage))


def test_gguf_file_is_read_from_its_folder(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"")
    with pytest.raises(RiseError, match="not a readable GGUF"):
        model_source(str(path))
    assert model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        {},
    )


def test_preallocated_cache_gives_the_same_tokens(exact_engine):
    """The in-place KV cache (the default) generates exactly what transformers' caches do."""
    model, tokenizer = exact_engine.model, exact_engine.tokenizer
    assert all(
        isinstance(layer, PreallocatedLayer) for layer in preallocated_cache(model.config, 8).layers
    )

    def texts(cache: str, params: SamplingParams) -> list[str]:
        engine = HFEngine(model, tokenizer, cache=cache, compact_at=0)  # one call, as the others
        out = engine.generate(CONVS, n=3, params=params)
        return [s.text for samples in out for s in samples]

    sampled = SamplingParams(max_new_tokens=16, seed=5)
    assert texts("preallocated", sampled) == texts("dynamic", sampled)
    assert texts("shared", sampled) == texts("dynamic", sampled)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    assert texts("preallocated", greedy) == texts("static", greedy)


def test_a_sample_is_the_same_whatever_shares_its_batch(exact_engine):
    """Sample k of a conversation is drawn from the stream of (seed, key, k) alone: the same in
    batches of any size, compacted or not, beside other conversations or alone, in any order."""
    model, tokenizer = exact_engine.model, exact_engine.tokenizer
    keys = [101, 202, 303]
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=24, seed=7)

    def texts(engine: HFEngine, convs, keys) -> list[list[str]]:
        return [[c.text for c in s] for s in engine.generate(convs, 4, params, keys=keys)]

    reference = texts(HFEngine(model, tokenizer, batch_size=512), CONVS, keys)
    assert all(len(set(samples)) > 1 for samples in reference)  # k draws from stream k
    for batch_size, compact_at in [(1, 0.5), (3, 0.5), (5, 0.0), (512, 0.0)]:
        engine = HFEngine(model, tokenizer, batch_size=batch_size, compact_at=compact_at)
        assert texts(engine, CONVS, keys) == reference, (batch_size, compact_at)
    engine = HFEngine(model, tokenizer)
    assert texts(engine, CONVS[::-1], keys[::-1]) == reference[::-1]
    for conv, key, samples in zip(CONVS, keys, reference, strict=True):
        assert texts(engine, [conv], [key]) == [samples]
    # another key, seed or turn is another stream
    assert texts(engine, CONVS, [1, 2, 3]) != reference
    other = engine.generate(CONVS, 4, params.with_seed(8), keys=keys)
    assert [[c.text for c in s] for s in other] != reference


def test_stream_keys_must_match_the_conversations(tiny_engine):
    with pytest.raises(RiseError, match="3 conversations but 2 stream keys"):
        tiny_engine.generate(CONVS, 1, SamplingParams(max_new_tokens=4), keys=[1, 2])
