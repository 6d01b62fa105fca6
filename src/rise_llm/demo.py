"""`rise demo`: the whole method on the embedded default, end to end, on a CPU.

Builds the toy model if it is missing, runs two RISE iterations with self-distillation on
`arith`, evaluates the base model and both iterations on the same held-out problems with K=5,
and prints the comparison table (written to summary.json, comparisons.json and a PNG plot).
`--quick` does the same at a tiny size, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rise_llm import toy_model
from rise_llm.pipeline import RunConfig, RunResult, load_run_config
from rise_llm.pipeline import run as run_pipeline
from rise_llm.progress import console

QUICK_TOY = dict(layers=2, hidden=32, heads=2, steps=40, batch_size=8, eval_problems=16, lr=3e-3)
RECIPES = Path(__file__).parent / "configs"


@dataclass
class DemoConfig:
    """Settings of `rise demo`: where to write, and whether to run the tiny version."""

    out: str = "runs/demo"
    quick: bool = False
    seed: int = 0
    device: str = "auto"


def run_config(config: DemoConfig) -> RunConfig:
    """The RISE run the demo performs: configs/arith-toy(-quick).yaml in the demo's folder."""
    recipe = RECIPES / ("arith-toy-quick.yaml" if config.quick else "arith-toy.yaml")
    overrides = [
        f"base_model={Path(config.out) / 'toy'}",
        f"out={config.out}",
        f"seed={config.seed}",
        f"device={config.device}",
    ]
    return load_run_config(recipe, overrides)


def run(config: DemoConfig) -> RunResult:
    toy_dir = Path(config.out) / "toy"
    if not (toy_dir / toy_model.BUILD_RECORD).exists():
        console.rule("[bold]building the toy model")
        options = QUICK_TOY if config.quick else {}
        toy_model.build(toy_model.ToyModelConfig(out=str(toy_dir), seed=config.seed, **options))
    return run_pipeline(run_config(config))
