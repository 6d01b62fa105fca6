"""`rise demo`: the whole method on the embedded default, end to end, on a CPU.

Builds the toy model if it is missing, runs two RISE iterations with self-distillation on
`arith`, evaluates the base model and both iterations on the same held-out problems with K=5,
and prints the comparison table (written to summary.json, comparisons.json and a PNG plot).
`--quick` does the same at a tiny size, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rise_llm import toy_model
from rise_llm.pipeline import RunConfig, RunResult
from rise_llm.pipeline import run as run_pipeline
from rise_llm.progress import console

QUICK_TOY = dict(layers=2, hidden=32, heads=2, steps=40, batch_size=8, eval_problems=16, lr=3e-3)

FULL: dict[str, Any] = {
    "iterations": 2,
    "collect": {"limit": 1500, "turns": 2, "samples": 16},
    "data": {"criteria": "all"},
    "train": {"lr": 5e-4, "epochs": 2, "batch_size": 32, "save_steps": 100},
    "evaluate": {"limit": 1000, "turns": 5},
}
QUICK: dict[str, Any] = {
    "iterations": 2,
    "collect": {"limit": 12, "turns": 2, "samples": 4, "max_new_tokens": 48},
    "data": {"criteria": "all"},
    "train": {"lr": 1e-3, "max_steps": 3, "batch_size": 4, "save_steps": 2},
    "evaluate": {"limit": 10, "turns": 5, "max_new_tokens": 48},
}


@dataclass
class DemoConfig:
    """Settings of `rise demo`: where to write, and whether to run the tiny version."""

    out: str = "runs/demo"
    quick: bool = False
    seed: int = 0
    device: str = "auto"


def run_config(config: DemoConfig) -> RunConfig:
    """The RISE run the demo performs (its resolved settings land in OUT/config.json)."""
    settings = QUICK if config.quick else FULL
    return RunConfig(
        base_model=str(Path(config.out) / "toy"),
        out=config.out,
        task="arith",
        seed=config.seed,
        device=config.device,
        **settings,
    )


def run(config: DemoConfig) -> RunResult:
    toy_dir = Path(config.out) / "toy"
    if not (toy_dir / toy_model.BUILD_RECORD).exists():
        console.rule("[bold]building the toy model")
        options = QUICK_TOY if config.quick else {}
        toy_model.build(toy_model.ToyModelConfig(out=str(toy_dir), seed=config.seed, **options))
    return run_pipeline(run_config(config))
