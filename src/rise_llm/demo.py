"""`rise demo`: the whole method on the embedded default, end to end, on a CPU.

Builds the toy model if it is missing (with retractions in its SFT, `TOY_RETRACTIONS`: lever 3
of README "Self-correction"; its own turn curve does not rise), evaluates it on held-out `arith`
problems with K=5, and from it runs two RISE iterations of each recipe: plain RISE (the
reference recipe, configs/arith-toy.yaml) and RISE with the self-correction levers (the same run
with the overrides in `LEVERS`). Both start from the same toy, so the difference between them is
the training recipe alone. Every model is evaluated on the same problems (the base's evaluation
is shared), and `rise compare` prints both recipes beside the base:

    OUT/toy/                      the toy model
    OUT/reference/ OUT/levers/    one `rise run` folder per recipe (base/, iter1/, iter2/, ...)
    OUT/comparison.md, .json      every model against the base, with intervals and transitions
    OUT/report.html               all recipes in one page (`rise report`)

`--quick` does the same at a tiny size, for the tests; `--recipes reference` runs one recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rise_llm import report_html, toy_model
from rise_llm.compare import CompareConfig, Row, compare
from rise_llm.errors import RiseError, check_device
from rise_llm.pipeline import RunConfig, load_run_config, share_base_evaluation
from rise_llm.pipeline import run as run_pipeline
from rise_llm.progress import console
from rise_llm.provenance import check_out

QUICK_TOY = dict(layers=2, hidden=32, heads=2, steps=40, batch_size=8, eval_problems=16, lr=3e-3)
RECIPES = Path(__file__).parent / "configs"
TOY_RETRACTIONS = 0.3
"""Share of the toy's SFT solutions that slip on a line and retract it (lever 3)."""
# the demo's recipes: overrides of configs/arith-toy(-quick).yaml
LEVERS = [
    "collect.verifier=strict",  # lever 0: targets whose every line is right
    "collect.selection=closest",  # lever 1: the repair closest to the failed attempt
    "collect.keep_states=true",  # lever 2: keep a right answer after the retry message
    "start_from=base",  # iteration 2 trains the toy afresh ...
    "data.cumulative=true",  # ... on both iterations' data (about twice the steps)
]
"""The science config's recipe (configs/arith-toy-science.yaml) at the demo's sizes: 1000
problems per iteration, evaluation on 1000 (README "The demo")."""
DEMO_RECIPES = {"reference": [], "levers": LEVERS}


@dataclass
class DemoConfig:
    """Settings of `rise demo`.

    Args:
        out: the demo's folder (the toy model, one run folder per recipe, the comparison).
        quick: the tiny version (seconds), for the tests.
        seed: seed of the toy model and of every run.
        device: "auto", "cpu" or "cuda".
        recipes: which of reference (plain RISE) and levers (RISE with the self-correction
            levers) to run, in table order.
    """

    out: str = "runs/demo"
    quick: bool = False
    seed: int = 0
    device: str = "auto"
    recipes: list[str] = field(default_factory=lambda: list(DEMO_RECIPES))

    def __post_init__(self) -> None:
        unknown = [r for r in self.recipes if r not in DEMO_RECIPES]
        if unknown or not self.recipes:
            raise RiseError(
                f"demo: recipes must be some of {', '.join(DEMO_RECIPES)}, got {self.recipes}"
            )
        check_device("demo", self.device)


def run_config(config: DemoConfig, recipe: str) -> RunConfig:
    """The RISE run of `recipe`: configs/arith-toy(-quick).yaml in the demo's folder."""
    path = RECIPES / ("arith-toy-quick.yaml" if config.quick else "arith-toy.yaml")
    overrides = [
        f"base_model={Path(config.out) / 'toy'}",
        f"out={Path(config.out) / recipe}",
        f"seed={config.seed}",
        f"device={config.device}",
        *DEMO_RECIPES[recipe],
    ]
    return load_run_config(path, overrides)


def run(config: DemoConfig) -> list[Row]:
    """Build the toy, run every recipe (or resume), and compare them all against the base."""
    check_out(config.out, "demo")
    toy_dir = Path(config.out) / "toy"
    if not (toy_dir / toy_model.BUILD_RECORD).exists():
        console.rule("[bold]building the toy model")
        options = QUICK_TOY if config.quick else {}
        toy_model.build(
            toy_model.ToyModelConfig(
                out=str(toy_dir),
                seed=config.seed,
                retraction_fraction=TOY_RETRACTIONS,
                **options,
            )
        )
    runs = {recipe: run_config(config, recipe) for recipe in config.recipes}
    first = runs[config.recipes[0]]
    for recipe, recipe_run in runs.items():
        console.rule(f"[bold]recipe {recipe!r}: {recipe_run.iterations} iterations")
        share_base_evaluation(first, recipe_run)
        run_pipeline(recipe_run)
    models = [
        f"{recipe} {r.label_of(k)}={r.folder(k) / 'eval'}"
        for recipe, r in runs.items()
        for k in range(1, r.iterations + 1)
    ]
    console.rule("[bold]every recipe against the base")
    rows = compare(
        CompareConfig(
            base=str(first.folder(0) / "eval"), models=models, seed=config.seed, out=config.out
        )
    )
    # every recipe in one page (the runs share the base evaluation, shown once)
    report_html.run(
        report_html.ReportConfig(
            paths=[str(r.root) for r in runs.values()],
            out=str(Path(config.out) / report_html.REPORT),
            seed=config.seed,
        )
    )
    return rows
