"""Engines sample assistant turns; all implement `rise_llm.engines.base.Engine`."""

from rise_llm.engines.base import Completion, Engine, SamplingParams
from rise_llm.engines.hf import HFEngine

__all__ = ["Completion", "Engine", "HFEngine", "SamplingParams"]
