"""Sampling from each row's own stream: the right distribution, and only the nucleus."""

from __future__ import annotations

import pytest
import torch

from rise_llm.engines.row_streams import RowStreamSampler, row_stream_processors, stream_uniforms

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def _draw(processors, rows: int, scores: torch.Tensor) -> torch.Tensor:
    out = processors(torch.zeros(rows, 1, dtype=torch.long), scores.clone())
    assert torch.isinf(out).sum(-1).eq(out.shape[1] - 1).all()  # one token left per row
    return out.argmax(-1)


def test_draws_follow_the_distribution_at_every_temperature():
    rows = 20_000
    uniforms = stream_uniforms(list(range(rows)), 2, torch.device("cpu"))
    scores = PROBS.log().expand(rows, -1)
    for temperature in (1.0, 0.5):
        processors = row_stream_processors(temperature, 1.0, uniforms, torch.arange(rows), 0)
        tokens = _draw(processors, rows, scores)
        expected = torch.softmax(PROBS.log() / temperature, -1)
        freq = torch.bincount(tokens, minlength=4) / rows
        # 4.5 standard errors of a frequency of 20,000 draws: a wrong distribution fails
        assert torch.allclose(freq, expected, atol=4.5 * (0.25 / rows) ** 0.5), temperature


def test_top_p_keeps_only_the_nucleus_and_renormalises():
    rows = 20_000
    uniforms = stream_uniforms(list(range(rows)), 1, torch.device("cpu"))
    processors = row_stream_processors(1.0, 0.7, uniforms, torch.arange(rows), 0)
    tokens = _draw(processors, rows, PROBS.log().expand(rows, -1))
    freq = torch.bincount(tokens, minlength=4) / rows
    assert freq[2:].sum() == 0  # 0.5 + 0.3 reach 0.7: the tail is never drawn
    assert freq[0] == pytest.approx(0.5 / 0.8, abs=0.02)


def test_each_row_reads_its_own_uniform_at_its_step():
    uniforms = torch.tensor([[0.1, 0.9], [0.6, 0.2]])
    sampler = RowStreamSampler(uniforms, rows=torch.tensor([1, 0]), step=0)
    scores = PROBS.log().expand(2, -1)
    first = sampler(None, scores.clone()).argmax(-1)
    second = sampler(None, scores.clone()).argmax(-1)
    # cumulative 0.5, 0.8, 0.95, 1: u=0.6 → token 1, 0.1 → 0; then 0.2 → 0, 0.9 → 2
    assert first.tolist() == [1, 0] and second.tolist() == [0, 2]


def test_a_uniform_at_the_top_never_draws_an_impossible_token():
    scores = torch.tensor([[0.0, 0.0, -float("inf")]])
    sampler = RowStreamSampler(torch.tensor([[1.0]]), rows=torch.tensor([0]), step=0)
    assert sampler(None, scores.clone()).argmax(-1).item() in (0, 1)


def test_streams_are_the_same_on_every_call():
    a = stream_uniforms([5, 6], 8, torch.device("cpu"))
    assert torch.equal(a, stream_uniforms([5, 6], 8, torch.device("cpu")))
    assert torch.equal(a[1], stream_uniforms([6], 8, torch.device("cpu"))[0])
    assert not torch.equal(a[0], a[1])
