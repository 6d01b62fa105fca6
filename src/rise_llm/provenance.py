"""What a run directory records about how it was made: the config and library versions."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from rise_llm import __version__
from rise_llm.errors import RiseError

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


def check_settings(
    out: Path,
    settings: dict[str, Any],
    what: str,
    name: str = "config.json",
    may_grow: tuple[str, ...] = (),
    defaults: Any = None,
) -> dict[str, Any] | None:
    """The settings recorded in `out/name` (None if none), refusing ones that differ.

    Rerunning a command into the same folder resumes it only with the same settings; anything
    else would mix two runs in one folder. Fields in `may_grow` may increase (more iterations).
    A setting that an older record lacks counts as unchanged while it is off (None or False) or
    at its default (the settings' dataclass `defaults`, whose default is the behaviour before the
    setting existed), so folders written before an opt-in setting existed still resume.
    """
    fallback = field_defaults(defaults) if defaults is not None else {}
    previous = read_run_config(out, name)
    if previous is None:
        return None
    changed = sorted(
        k
        for k in settings.keys() | previous.keys()
        if settings.get(k) != previous.get(k)
        and not (k in may_grow and settings.get(k, 0) >= previous.get(k, 0))
        and not (
            k not in previous
            and (settings[k] in (None, False) or (k in fallback and settings[k] == fallback[k]))
        )
    )
    if changed:
        grow = f" (only {', '.join(may_grow)} may grow)" if may_grow else ""
        raise RiseError(
            f"{out} holds {what} with different settings ({', '.join(changed)}); "
            f"use another out folder or delete it{grow}"
        )
    return previous


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of each field of dataclass `cls` that has a plain one."""
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
