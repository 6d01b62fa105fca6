"""Loading models and tokenizers: from a local folder, a Hub id or a single GGUF file.

Every stage that holds a model (sampling in `engines/hf.py`, `rise train`, the benchmarks)
loads it here, so all accept the same sources: a folder, a Hub id, or `model.gguf` (weights,
tokenizer and chat template in one file, as llama.cpp uses them). Device and dtype names
("auto", "cpu", "cuda", "bfloat16", ...) are resolved here too, with errors that say what to
give instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from rise_llm.chat import check_chat_template, read_chat_template
from rise_llm.errors import RiseError

MODEL_CONFIGS = ("config.json", "adapter_config.json")
"""What a model folder holds (a PEFT adapter folder loads through its base model)."""

# float64 is for exact comparisons (the tests compare two computation paths token for token)
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RiseError(
            f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu"
        )
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" is bfloat16 on a GPU that supports it and float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise RiseError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def model_source(model: str) -> tuple[str, dict[str, Any]]:
    """Where `from_pretrained` finds `model`: a folder, a Hub id, or a GGUF file.

    Returns the name to pass and extra keyword arguments: a `*.gguf` file becomes its folder plus
    `gguf_file=` (transformers reads the weights, the tokenizer and its chat template from it;
    quantised weights are de-quantised). Local paths must exist; errors say what to give instead.
    """
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        _check_gguf(path)
        return str(path.parent), {"gguf_file": path.name}
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or path.exists()
    if looks_local and not path.exists():
        raise RiseError(
            f"model path {model!r} does not exist; give a model folder, a .gguf file or a Hub id"
        )
    if path.is_file():
        raise RiseError(
            f"model path {model!r} is a file but not a .gguf; give a model folder (holding "
            "config.json), a .gguf file or a Hub id"
        )
    if path.is_dir() and not any((path / n).is_file() for n in MODEL_CONFIGS):
        raise RiseError(
            f"model folder {model!r} holds no config.json, so it is not a model; give a model "
            "folder (e.g. the out folder of `rise toy-model` or out/model of `rise train`)"
        )
    return (str(path) if looks_local else model), {}


def _check_gguf(path: Path) -> None:
    """A GGUF file that exists, that the gguf package can parse, with the package installed."""
    if not path.is_file():
        raise RiseError(f"GGUF file {str(path)!r} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise RiseError(
            "reading a .gguf model needs the gguf package: pip install 'rise-llm[gguf]'"
        )
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as e:  # the parser's errors vary (ValueError, struct.error, ...)
        raise RiseError(
            f"{path} is not a readable GGUF file ({_first_line(e)}); download it again"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_tokenizer(model: str, chat_template: str | None = None):
    """The tokenizer of a folder, Hub id or GGUF file, set up for left-padded batch generation.

    `chat_template` (a Jinja file or the template text) replaces the model's own; without one
    the model must bring a chat template, or this fails with a clear error.
    """
    name, extra = model_source(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **extra)
    except (OSError, ValueError) as e:
        raise RiseError(f"could not load the tokenizer of {model!r}: {_first_line(e)}") from None
    if chat_template is not None:
        tokenizer.chat_template = read_chat_template(chat_template)
    check_chat_template(tokenizer, f"model {model!r}")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: str, dtype: torch.dtype = torch.float32):
    """The causal LM of a folder, Hub id or GGUF file, in `dtype`, with clear errors.

    GGUF weights are unpacked into a plain dense model (`GgufConfig(dequantize=True)`): kept
    in GGUF blocks, transformers would refuse to train or save it.
    """
    name, extra = model_source(model)
    if "gguf_file" in extra:
        extra["quantization_config"] = GgufConfig(dequantize=True)
    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **extra)
    except (OSError, ValueError) as e:
        raise RiseError(f"could not load model {model!r}: {_first_line(e)}") from None


def load_model_and_tokenizer(
    model: str, device: str = "auto", dtype: str = "auto", chat_template: str | None = None
):
    """Load a causal LM and its tokenizer (folder, Hub id or .gguf file) onto `device`."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(model, chat_template)
    lm = load_causal_lm(model, torch_dtype)
    lm.to(torch_device).eval()
    return lm, tokenizer
