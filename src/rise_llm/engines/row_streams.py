"""Sampling where each row of a batch draws from its own random stream.

transformers' `generate` samples a whole batch with one `torch.multinomial` on the global
generator: which token a row gets depends on every other row of the batch, so the same prompt
sampled beside other prompts, in another batch size, after a resume or in another shard gives
another answer. Here row r has its own seeded generator (`seeds.stream_seed` of its
conversation and sample), which draws one uniform number per decoding step ahead of time; its
token at step s is the inverse of the cumulative distribution of its (temperature-scaled,
top-p-filtered) probabilities at uniforms[r, s]. That is an exact draw from the same
distribution as multinomial sampling, and a function of the row's stream and its logits alone.

`generate` runs greedy: `RowStreamSampler` is the last logits processor and leaves only the
drawn token, which greedy decoding then takes. The logits themselves can still differ in their
last bits between batch shapes (float sums in another order); a draw changes only when its
uniform lands within that difference of a boundary of the cumulative distribution.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper


def stream_uniforms(seeds: list[int], steps: int, device: torch.device) -> torch.Tensor:
    """(rows, steps) uniforms in [0, 1): row r is the first `steps` draws of a CPU generator
    seeded `seeds[r]`, so the table is the same on every device and for every batch."""
    generator = torch.Generator()
    rows = []
    for seed in seeds:
        generator.manual_seed(seed)
        rows.append(torch.rand(steps, generator=generator))
    return torch.stack(rows).to(device)


class RowStreamSampler(LogitsProcessor):
    """Draws each row's next token from its row of `uniforms`; every other score becomes -inf.

    Args:
        uniforms: (batch rows, max new tokens) from `stream_uniforms`.
        rows: this call's row i is batch row rows[i] (rows leave when `BatchSampler` compacts).
        step: the decoding step of the first call (tokens the rows have already).
    """

    def __init__(self, uniforms: torch.Tensor, rows: torch.Tensor, step: int):
        self.uniforms = uniforms
        self.rows = rows
        self.step = step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        u = self.uniforms[self.rows, self.step].unsqueeze(1)
        self.step += 1
        probs = torch.softmax(scores.float(), dim=-1)
        cdf = probs.cumsum(dim=-1)
        tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        # u * total can round up to the total itself: past the end, take the likeliest token
        tokens = torch.where(tokens < cdf.shape[1], tokens, probs.argmax(-1, keepdim=True))
        return torch.full_like(scores, -float("inf")).scatter_(1, tokens, 0.0)


def row_stream_processors(
    temperature: float, top_p: float, uniforms: torch.Tensor, rows: torch.Tensor, step: int
) -> LogitsProcessorList:
    """The processors of one greedy `generate` call that samples at `temperature` with nucleus
    `top_p` from the rows' streams (temperature > 0)."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(RowStreamSampler(uniforms, rows, step))
    return processors
