"""What a run directory records about how it was made: the config, the library versions and
the machine (float results and trained toys differ across CPU kinds, so every figure must name
the CPU it came from)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from rise_llm import __version__
from rise_llm.errors import RiseError
from rise_llm.records import write_atomic

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


def cpu_name(cpuinfo: str | None = None) -> str:
    r"""The CPU as `lscpu` names it, with its family and model numbers (an "AMD EPYC" of one
    family computes differently from another), from /proc/cpuinfo; the platform's processor
    string where there is none.

    >>> cpu_name("vendor_id : AuthenticAMD\ncpu family : 26\nmodel : 2\nmodel name : AMD EPYC\n")
    'AMD EPYC (family 26, model 2)'
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine() or "unknown"
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine() -> dict[str, Any]:
    """The CPU, its cores and torch's threads, and the GPUs torch sees."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
    }


def write_run_record(out: Path, config: dict[str, Any], name: str = "config.json") -> None:
    """Write `config` with the library versions and the machine to `out/name`."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": config, "versions": versions(), "machine": machine()}
    write_atomic(out / name, json.dumps(record, indent=2, sort_keys=True) + "\n")


def check_out(out: str | Path, stage: str) -> None:
    """`out` can be (or already is) a folder this process may write in; an error naming the
    path that stands in the way otherwise. Checked before any work, so nothing is half-done.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RiseError(f"{stage}: out {out} is a file, not a folder; give a folder path")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RiseError(
            f"{stage}: out {out} cannot be a folder: {existing} is a file; give another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RiseError(
            f"{stage}: out {out} is not writable ({existing} is read-only for this user); "
            "give a folder you can write to"
        )


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
    free: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """The settings recorded in `out/name` (None if none), refusing ones that differ.

    Rerunning a command into the same folder resumes it only with the same settings; anything
    else would mix two runs in one folder. Fields in `may_grow` may increase (more iterations).
    Fields named in `free` may change: they change how fast, not what is sampled (the engine's
    batch size: every sample has its own random stream), or where, not what (the address of a
    launch's main process); a dotted name (train.launch.machine_rank) is a field of a section.
    A setting that an older record lacks counts as unchanged while it is off (None or False) or
    at its default (the settings' dataclass `defaults`, whose default is the behaviour before the
    setting existed), so folders written before an opt-in setting existed still resume.
    """
    fallback = field_defaults(defaults) if defaults is not None else {}
    previous = read_run_config(out, name)
    if previous is None:
        return None
    now, before = _without(settings, free), _without(previous, free)
    changed = sorted(
        k
        for k in now.keys() | before.keys()
        if now.get(k) != before.get(k)
        and not (k in may_grow and now.get(k, 0) >= before.get(k, 0))
        and not (
            k not in before
            and (now[k] in (None, False) or (k in fallback and now[k] == fallback[k]))
        )
    )
    if changed:
        grow = f" (only {', '.join(may_grow)} may grow)" if may_grow else ""
        raise RiseError(
            f"{out} holds {what} with different settings ({', '.join(changed)}); "
            f"use another out folder or delete it{grow}"
        )
    return previous


def _without(settings: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """A copy of `settings` without the fields `names` (dotted: a field of a section)."""
    kept = {k: v for k, v in settings.items() if k not in names}
    nested: dict[str, list[str]] = {}
    for name in names:
        head, sep, rest = name.partition(".")
        if sep:
            nested.setdefault(head, []).append(rest)
    for head, rest in nested.items():
        if isinstance(kept.get(head), dict):
            kept[head] = _without(kept[head], tuple(rest))
    return kept


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of each field of dataclass `cls` that has a plain one."""
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
