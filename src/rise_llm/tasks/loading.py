"""Problem records from a local JSON Lines / Parquet path or from the Hugging Face Hub.

A task's `data` option names the source, resolved in this order:

- an existing folder: the split's file in it, `SPLIT.jsonl` or `SPLIT.parquet` (for example
  `../shared/data/gsm8k/test.jsonl`);
- an existing file (`.jsonl` or `.parquet`): its records, whatever split is asked;
- anything else that looks like a path (starts with `.`, `/` or `~`, or ends in a data file
  suffix) is an error, since it does not exist;
- otherwise a Hub dataset id, read with `datasets.load_dataset(id, config, split=SPLIT)`.

Every record carries where it came from (`file:line`, or id, split and row), so a task can say
exactly which record lacks which field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rise_llm.errors import RiseError
from rise_llm.records import Problem, iter_jsonl

SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Record:
    """One raw record of a data source and where it is (`file:line`, or Hub id, split and row)."""

    where: str
    data: dict[str, Any]

    def text(self, field: str, hint: str = "", numbers: bool = True) -> str:
        """The field as text; an error naming the record if it is missing or not text.

        With `numbers`, a number is written out (an answer of 42 is "42"); a question must be
        text, since a number there is a record whose fields are mixed up.
        """
        value = self.data.get(field)
        if value is None:
            raise RiseError(f"{self.where}: missing field {field!r}{hint}")
        allowed = str | int | float if numbers else str
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise RiseError(
                f"{self.where}: field {field!r} must be text, got {type(value).__name__} "
                f"{_short(value)}; write it as a JSON string"
            )
        if isinstance(value, str) and not value.strip():
            raise RiseError(f"{self.where}: field {field!r} is empty; give it text")
        return str(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((*SUFFIXES, ".json"))


def split_file(folder: Path, split: str) -> Path | None:
    """The file of `split` in a data folder, if there is one."""
    for suffix in SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def has_split(source: str, split: str) -> bool:
    """Whether a local source holds `split` (a file serves every split); a Hub id is assumed to."""
    path = Path(source).expanduser()
    if path.is_dir():
        return split_file(path, split) is not None
    return True


def read_file(path: Path) -> list[Record]:
    """The records of one JSON Lines or Parquet file; an error when it holds none."""
    if path.suffix == ".jsonl":
        records = [Record(f"{path}:{lineno}", obj) for lineno, obj in iter_jsonl(path)]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise RiseError(f"{path}: not a readable Parquet file ({e})") from None
        records = [Record(f"{path} row {i}", row) for i, row in enumerate(rows)]
    else:
        raise RiseError(f"{path}: unsupported file type; give a .jsonl or .parquet file")
    if not records:
        raise RiseError(f"{path} holds no records; give one JSON object per line, a problem each")
    return records


def read_hub(dataset_id: str, split: str, config: str | None = None) -> list[Record]:
    """The records of one split of a Hugging Face Hub dataset, through `datasets`."""
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all end the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RiseError(
            f"could not load split {split!r} of {dataset_id!r} from the Hugging Face Hub "
            f"({first}); check the id, or give a local folder or file with data=PATH"
        ) from None
    named = f"{dataset_id}:{config}" if config else dataset_id
    return [Record(f"{named} [{split}] row {i}", dict(row)) for i, row in enumerate(rows)]


def load_records(source: str, split: str, config: str | None = None) -> list[Record]:
    """The records of `split` from a folder, a file or a Hub id (see the module docstring)."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = split_file(path, split)
        if found is None:
            present = sorted(p.name for p in path.iterdir() if p.suffix in SUFFIXES)
            raise RiseError(
                f"{path} has no {split}.jsonl or {split}.parquet for split {split!r}; "
                f"it holds: {', '.join(present) or 'no data files'}"
            )
        return read_file(found)
    if path.is_file():
        return read_file(path)
    if looks_like_path(source):
        raise RiseError(
            f"data path {source!r} does not exist; give a folder with {split}.jsonl, "
            "a .jsonl or .parquet file, or a Hugging Face Hub id"
        )
    return read_hub(source, split, config)


def problem_id(prefix: str, text: str) -> str:
    """A stable id from the problem text, the same whichever source or order it came from."""
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def unique(problems: Iterable[tuple[Record, Problem]]) -> list[Problem]:
    """The problems, with an error naming both records when two share an id."""
    seen: dict[str, Record] = {}
    out = []
    for record, problem in problems:
        if problem.id in seen:
            raise RiseError(
                f"{record.where}: problem id {problem.id!r} repeats {seen[problem.id].where} "
                "(the same question twice?); remove one or give each record its own id"
            )
        seen[problem.id] = record
        out.append(problem)
    return out


@dataclass
class LoadedTask:
    """Problems read once per split and kept: the `problems` of the tasks that load data.

    A subclass gives `name`, `_load(split)` (the split's problems in the source's order) and,
    to refuse other splits with a clear error, `SPLITS`.
    """

    _cache: dict[str, list[Problem]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    SPLITS: ClassVar[tuple[str, ...] | None] = None

    def _load(self, split: str) -> list[Problem]:
        raise NotImplementedError

    def problems(self, split: str, limit: int | None = None) -> list[Problem]:
        """The problems of `split` in the source's order; the first `limit` when given."""
        if self.SPLITS is not None and split not in self.SPLITS:
            raise RiseError(
                f"{self.name}: unknown split {split!r}; choose one of {', '.join(self.SPLITS)}"
            )
        if split not in self._cache:
            self._cache[split] = self._load(split)
        return self._cache[split][:limit]
