"""What every benchmark script shares: command-line basics, the machine's description, the toy
model under test, a rich table on stdout, and the JSON result file.

Each script in this folder measures one thing (BENCHMARKS.md lists them with their commands)
and is run directly, `python benchmarks/NAME.py`; results go to benchmarks/results/NAME.json
unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODEL = "runs/toy"
"""The toy model `rise toy-model --out runs/toy` builds (default settings); built if missing."""

stdout = Console(width=120)


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: the model, where to write, how many threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model folder (built if missing)")
    p.add_argument("--out", default=None, help="JSON result file (default benchmarks/results/)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    return p


def setup(args: argparse.Namespace) -> None:
    """Apply --threads, note the load average, and keep library chatter off the output."""
    args.load_at_start = round(os.getloadavg()[0], 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(load_at_start: float | None = None) -> dict[str, Any]:
    """What the figures were measured on, and how busy the machine was (1-minute load)."""
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gib = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": load_at_start,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def ensure_toy_model(path: str) -> str:
    """`path` as given when it holds a model (a folder or a .gguf file); the default toy model
    built there when missing."""
    folder = Path(path)
    if (folder / "config.json").exists() or folder.is_file():
        return path
    from rise_llm import toy_model

    stdout.print(f"[yellow]no model in {path}: building the default toy model there")
    toy_model.build(toy_model.ToyModelConfig(out=path))
    return path


class Collection(NamedTuple):
    """What the rollout benchmarks sample with: the toy model, `arith` training problems, and
    `rise collect`'s settings at temperature 1.0 (max_new_tokens: the task's unless given)."""

    model_dir: str
    model: Any
    tokenizer: Any
    task: Any
    problems: list
    config: Any  # collect.CollectConfig
    params: Any  # engines.base.SamplingParams


def toy_collection(args: argparse.Namespace, turns: int) -> Collection:
    """The `Collection` of a benchmark's --model, --problems, --samples, --max-new-tokens and
    --seed (the model built when missing)."""
    from rise_llm.collect import CollectConfig
    from rise_llm.engines.base import SamplingParams
    from rise_llm.models import load_model_and_tokenizer
    from rise_llm.tasks import get_task

    model_dir = ensure_toy_model(args.model)
    model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu", dtype="float32")
    task = get_task("arith")
    config = CollectConfig(
        model=model_dir, out="-", turns=turns, samples=args.samples, limit=args.problems
    )
    params = SamplingParams(
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=args.max_new_tokens or task.default_max_new_tokens,
        seed=args.seed,
    )
    problems = task.problems("train", args.problems)
    return Collection(model_dir, model, tokenizer, task, problems, config, params)


def generated(episodes) -> tuple[int, int]:
    """Tokens generated and samples drawn over collected episodes."""
    attempts = [a for ep in episodes for turn in ep.turns for a in turn.attempts]
    return sum(a.num_tokens for a in attempts), len(attempts)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for i, c in enumerate(columns):
        numeric = all(isinstance(row[i], int | float | None) for row in rows)
        table.add_column(c, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    stdout.print(table)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def write_result(name: str, args: argparse.Namespace, result: dict[str, Any]) -> Path:
    """Write `result` with the machine and a timestamp to --out or results/NAME.json."""
    path = Path(args.out) if args.out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(getattr(args, "load_at_start", None)),
        **result,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    stdout.print(f"wrote {path}")
    return path
