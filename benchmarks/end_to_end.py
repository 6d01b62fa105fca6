"""End to end: wall time per stage of the demo's RISE run (`rise run configs/arith-toy.yaml`,
the reference recipe `rise demo` runs after building the toy model, in OUT/reference).

Stage times come from the run folder itself: every stage writes its outputs when it ends
(base/eval/metrics.json, iterK/collect/episodes.jsonl, iterK/data/data.jsonl,
iterK/train/train.json, iterK/eval/metrics.json, accuracy_by_turn.png), and the run's
config.json when it starts, so each stage is the time from the previous stage's end to its
own, loading models included, and the rows add up to the run's wall time. This holds for a run
that was not interrupted (a resumed run is reported as such). The toy model's build is taken
from its record (toy_model.json: SFT seconds; the held-out check is not included).

    python benchmarks/end_to_end.py --execute            # arith-toy.yaml on runs/toy, ~11 min
    python benchmarks/end_to_end.py --run-dir runs/demo/reference  # a finished run's stages
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import harness

from rise_llm.pipeline import RunConfig
from rise_llm.provenance import read_run_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "arith-toy.yaml"


def mtime(path: Path) -> float:
    if not path.exists():
        sys.exit(f"end_to_end: {path} is missing; is the run finished?")
    return path.stat().st_mtime


def stage_times(root: Path) -> list[dict]:
    """(stage, seconds, detail) per stage, in the order the run does them."""
    recorded = read_run_config(root)
    if recorded is None:
        sys.exit(f"end_to_end: {root} holds no config.json; is it a `rise run` folder?")
    run = RunConfig(**{**recorded, "out": str(root)})
    marks = [(f"{run.label_of(0)}: evaluate", run.folder(0) / "eval" / "metrics.json")]
    for k in range(1, run.iterations + 1):
        it, label = run.folder(k), run.label_of(k)
        marks += [
            (f"{label}: collect", it / "collect" / "episodes.jsonl"),
            (f"{label}: build data", it / "data" / "data.jsonl"),
            (f"{label}: train", it / "train" / "train.json"),
            (f"{label}: evaluate", it / "eval" / "metrics.json"),
        ]
    marks.append(("summary, comparisons, plot", root / "accuracy_by_turn.png"))
    previous = mtime(root / "config.json")
    stages = []
    for name, path in marks:
        end = mtime(path)
        stages.append({"stage": name, "seconds": round(end - previous, 1), "detail": detail(path)})
        previous = end
    return stages


def detail(path: Path) -> str:
    """What the stage's own record says about where its time went."""
    if path.name == "metrics.json":
        seconds = json.loads(path.read_text()).get("seconds", {})
        return ", ".join(f"{mode} {s:.0f} s" for mode, s in seconds.items())
    if path.name == "train.json":
        record = json.loads(path.read_text())
        return f"{record['steps']} steps, Trainer {record['seconds']:.0f} s"
    if path.name == "episodes.jsonl":
        return f"{sum(1 for _ in path.open())} problems"
    return ""


def main() -> None:
    p = harness.parser(__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default="runs/bench-e2e", help="the run folder to read or write")
    p.add_argument("--execute", action="store_true", help="run the config first (fresh folder)")
    p.add_argument("--config", default=str(CONFIG), help="the run config to execute")
    args = p.parse_args()
    harness.setup(args)
    root = Path(args.run_dir)
    wall = None
    if args.execute:
        if root.exists():
            sys.exit(f"end_to_end: {root} exists; give a new --run-dir (stages would resume)")
        model_dir = harness.ensure_toy_model(args.model)
        from rise_llm.pipeline import load_run_config, run

        overrides = [f"base_model={model_dir}", f"out={root}", "device=cpu"]
        start = time.perf_counter()
        run(load_run_config(args.config, overrides))
        wall = round(time.perf_counter() - start, 1)
    stages = stage_times(root)
    model_dir = read_run_config(root)["base_model"]
    total = round(sum(s["seconds"] for s in stages), 1)
    ordered = all(s["seconds"] >= 0 for s in stages)
    toy_record = Path(model_dir) / "toy_model.json"
    toy_seconds = (
        json.loads(toy_record.read_text())["train_seconds"] if toy_record.exists() else None
    )
    rows = [[s["stage"], s["seconds"], s["detail"]] for s in stages]
    rows.append(
        ["run total (rise run)", total, f"measured around the call: {wall} s" if wall else ""]
    )
    if toy_seconds is not None:
        rows.append(["toy model build (SFT, from its record)", toy_seconds, str(toy_record)])
        rows.append(["rise demo (build + run)", round(total + toy_seconds, 1), "about"])
    harness.print_table(f"End to end: {root}", ["stage", "s", "detail"], rows)
    if not ordered:
        harness.stdout.print("[yellow]stages out of order: the run was resumed; times are not")
    harness.write_result(
        "end_to_end",
        args,
        {
            "run_dir": str(root),
            "config": args.config if args.execute else None,
            "model": model_dir,
            "stages": stages,
            "run_seconds": total,
            "wall_seconds_measured": wall,
            "toy_build_seconds": toy_seconds,
            "demo_seconds_estimate": round(total + toy_seconds, 1) if toy_seconds else None,
            "uninterrupted": ordered,
        },
    )


if __name__ == "__main__":
    main()
