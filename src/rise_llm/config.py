"""Typed configuration: YAML files and `key.path=value` overrides into validated dataclasses.

YAML is only the serialised form. `build(cls, data, where)` checks that every key is a field of
`cls` and that every value has the field's type (through pydantic), then runs the dataclass's
own `__post_init__` checks; every error names the file and field and says what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from rise_llm.errors import RiseError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with errors that give the file and line."""
    path = Path(path)
    if not path.exists():
        raise RiseError(f"config file {path} does not exist")
    if path.is_dir():
        raise RiseError(f"config file {path} is a folder; give a YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RiseError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RiseError(f"{path}: expected a mapping of settings at the top level")
    return data


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_value(text: str, what: str = "value") -> Any:
    """A command-line value read as YAML (`true`, `[a, b]`, `3`), with `1e-4` read as a number.

    PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; people mean the number.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RiseError(
            f"{what}: {text!r} is not a valid value ({getattr(e, 'problem', e)})"
        ) from None
    if isinstance(value, str) and _NUMBER.match(text.strip()):
        return float(text)
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each `a.b.c=value` set (value parsed as YAML: 1e-4, true, [a, b])."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RiseError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RiseError(f"override {item!r}: {part} is not a section")
        node[leaf] = parse_value(raw, f"override {key}")
    return data


def build(cls: type[T], data: dict[str, Any], where: str, flags: bool = False) -> T:
    """An instance of dataclass `cls` from `data`, validated; errors name `where`.field.

    With `flags`, fields are named as command-line flags (`--max-new-tokens`) in errors.
    """

    def name(field: str) -> str:
        return f"--{field.replace('_', '-')}" if flags else f"{where}.{field}"

    if not isinstance(data, dict):
        raise RiseError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise RiseError(f"{name(unknown[0])}: unknown setting; known: {', '.join(sorted(fields))}")
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if first["type"] == "missing":
            raise RiseError(f"{name(field)}: required setting is missing") from None
        raise RiseError(f"{name(field)}: {first['msg']} (got {first.get('input')!r})") from None
