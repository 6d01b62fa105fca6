"""Shared fixtures: a tiny toy model built in-process (no downloads), once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers

from rise_llm.toy_model import ToyModelConfig, build

transformers.logging.set_verbosity_error()

TINY = dict(layers=2, hidden=32, heads=2, steps=40, batch_size=8, eval_problems=16, lr=3e-3)
"""A model small enough to build in seconds; it answers nonsense but exercises every path."""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-toy")
    build(ToyModelConfig(out=str(out), **TINY))
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from rise_llm.engines.hf import HFEngine

    return HFEngine.load(str(tiny_model_dir), device="cpu", dtype="float32", batch_size=16)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark files in ../shared/data (beside the repository; never copied into it)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"benchmark data not found at {path} (see ../shared/data/README.md)")
    return path
