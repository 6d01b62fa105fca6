"""The self-correction ablation (README "Self-correction"): which lever does what.

Runs `configs/arith-toy-science.yaml` (all three collection levers, two iterations) from the
toy model `--toy`, then one iteration of each other recipe from the same toy, every model
evaluated on the same held-out problems (the base's evaluation is shared), and prints `rise
compare`'s table of all of them against the base, written to OUT/comparison.md and .json.

    # the README's ablation table: the plain toy, held-out problems of task seed 1
    python experiments/ablation.py --toy runs/toy --out runs/ablation --set task_options.seed=1
    python experiments/ablation.py --toy runs/toy --out runs/ablation-smoke \
        --set collect.limit=40 --set evaluate.limit=30 --set train.max_steps=4

Every run resumes (rerun the same command after a kill). Arms are `--set` overrides of the
science config; `--arms` runs a subset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rise_llm.compare import CompareConfig, compare
from rise_llm.demo import RECIPES
from rise_llm.pipeline import load_run_config, run, share_base_evaluation
from rise_llm.progress import console

SCIENCE = RECIPES / "arith-toy-science.yaml"
LEVERS = "strict+closest+keep"
# one iteration each; the science run's iteration 1 is the LEVERS arm itself
ARMS = {
    "reference": ["collect.verifier=null", "collect.selection=first", "collect.keep_states=false"],
    "strict": ["collect.selection=first", "collect.keep_states=false"],
    "strict+closest": ["collect.keep_states=false"],
    "strict+keep": ["collect.selection=first"],
    f"{LEVERS}+progress": ["data.progress_bonus=2.0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", default="runs/toy", help="the toy model every recipe starts from")
    parser.add_argument("--out", default="runs/ablation", help="folder of all the runs")
    parser.add_argument("--set", action="append", default=[], help="override for every run")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), help=f"of {', '.join(ARMS)}")
    args = parser.parse_args()
    out = Path(args.out)
    common = [f"base_model={args.toy}", *args.set]

    console.rule(f"[bold]{LEVERS}: configs/arith-toy-science.yaml, 2 iterations")
    science = load_run_config(SCIENCE, [*common, f"out={out / 'science'}"])
    run(science)
    base_eval = out / "science" / "base" / "eval"
    models = {}
    for arm in args.arms:
        console.rule(f"[bold]{arm}: 1 iteration")
        overrides = [*common, *ARMS[arm], "iterations=1", f"out={out / arm}"]
        config = load_run_config(SCIENCE, overrides)
        share_base_evaluation(science, config)  # the same evaluation of the same model
        run(config)
        models[arm] = str(out / arm / "iter1" / "eval")
    models[LEVERS] = str(out / "science" / "iter1" / "eval")
    models[f"{LEVERS}, iteration 2"] = str(out / "science" / "iter2" / "eval")
    labelled = [f"{label}={folder}" for label, folder in models.items()]
    compare(CompareConfig(base=str(base_eval), models=labelled, out=str(out)))


if __name__ == "__main__":
    main()
