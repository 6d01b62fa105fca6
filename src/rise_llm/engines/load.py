"""One entry point from a model spec to an engine, for every stage that samples.

`openai:MODEL[@BASE_URL[,URL...]]` samples from an OpenAI-compatible server, or several
replicas of one model (`engines/openai.py`); anything else is a model folder, file or Hub id
loaded in-process with transformers (`engines/hf.py`, loading through `models.py`).
"""

from __future__ import annotations

from typing import Any

from rise_llm.engines.base import Engine


def is_remote(spec: str) -> bool:
    """Whether `spec` names a model behind a server (`openai:...`) rather than weights."""
    from rise_llm.engines.openai import SPEC_PREFIX

    return spec.startswith(SPEC_PREFIX)


def load_engine(
    spec: str, engine_options: dict[str, Any] | None = None, **hf_options: Any
) -> Engine:
    """The engine for `spec`. `engine_options` configure the openai engine (`OpenAIOptions`);
    `hf_options` (device, dtype, batch_size, ...) go to `HFEngine.load` for local models."""
    if is_remote(spec):
        from rise_llm.engines.openai import OpenAIEngine

        return OpenAIEngine.from_spec(spec, engine_options)
    from rise_llm.engines.hf import HFEngine

    return HFEngine.load(spec, **hf_options)


def stage_engine(config: Any, spec: str | None = None, chat_template: bool = True) -> Engine:
    """The engine of a sampling stage's config (evaluate, collect): its model, or `spec`
    (e.g. a teacher), with the stage's engine options, device, dtype and batch size; the
    stage's chat template applies to its own model only."""
    return load_engine(
        spec or config.model,
        engine_options=config.engine_options,
        device=config.device,
        dtype=config.dtype,
        batch_size=config.batch_size,
        **({"chat_template": config.chat_template} if chat_template else {}),
    )
