"""bf16: the "auto" rule, and training on the CPU in mixed precision."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file
from test_train import _train

from rise_llm import precision, train
from rise_llm.toy_model import ToyModelConfig, build


@pytest.mark.parametrize(
    ("setting", "on_cpu", "expected"),
    [
        ("auto", True, False),  # measured: faster, but a worse toy (BENCHMARKS.md)
        (True, True, True),  # asked for: mixed precision on the CPU
        (False, True, False),
        (False, False, False),
        ("auto", False, torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    ],
)
def test_auto_is_bf16_on_a_gpu_and_float32_on_the_cpu(setting, on_cpu, expected):
    assert precision.use_bf16(setting, on_cpu) is expected


class _ProductDtypes:
    """Records the dtype of every linear layer's output during training."""

    def __init__(self):
        self.seen: set[torch.dtype] = set()
        self.load_model = train.load_causal_lm

    def load(self, *args, **kwargs):
        model = self.load_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda m, i, out: self.seen.add(out.dtype))
        return model


@pytest.mark.parametrize(("bf16", "products"), [(True, torch.bfloat16), (False, torch.float32)])
def test_cpu_training_in_bf16_is_mixed_precision(
    tmp_path, tiny_model_dir, monkeypatch, bf16, products
):
    """bf16 on the CPU: products in bf16 under autocast, float32 weights trained and saved."""
    dtypes = _ProductDtypes()
    monkeypatch.setattr(train, "load_causal_lm", dtypes.load)
    out = _train(tmp_path, tiny_model_dir, weight=12.18, bf16=bf16)
    assert dtypes.seen == {products}
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert {t.dtype for t in after.values()} == {torch.float32}
    assert all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(("bf16", "recorded"), [(True, "bf16 mixed"), (False, "float32")])
def test_toy_build_records_its_precision(tmp_path, bf16, recorded):
    settings = {**TINY, "steps": 4, "eval_problems": 2}
    record = build(ToyModelConfig(out=str(tmp_path / "toy"), bf16=bf16, **settings))
    assert record["precision"] == recorded
    weights = load_file(tmp_path / "toy" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
