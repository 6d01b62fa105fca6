"""What a run directory records about how it was made: the config and library versions."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from rise_llm import __version__

_LIBRARIES = ("torch", "transformers", "accelerate", "tokenizers", "peft", "datasets")


def versions() -> dict[str, str]:
    """Versions of Python, rise-llm and the libraries it drives (absent ones are left out)."""
    found = {
        "python": sys.version.split()[0],
        "rise_llm": __version__,
        "platform": platform.platform(),
    }
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["cuda"] = torch.version.cuda or "none"
    return found


def write_run_record(out: Path, config: dict[str, Any], name: str = "config.json") -> None:
    """Write `config` with the library versions to `out/name`."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": config, "versions": versions()}
    (out / name).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_run_config(out: Path, name: str = "config.json") -> dict[str, Any] | None:
    path = out / name
    if not path.exists():
        return None
    return json.loads(path.read_text())["config"]
