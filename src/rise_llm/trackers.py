"""Evaluation metrics to the trackers users already watch: `report_to` tensorboard or wandb.

`rise evaluate --report-to tensorboard` and `report_to: [tensorboard]` in a `rise run` config
log, per model (step = the iteration, 0 for the base or a lone evaluation):

- `eval/acc@t` for each turn t, `eval/m1@tK`, `eval/p1@tK`, `eval/mK@t1`, `eval/pK@t1`;
- `turns/LABEL` at step t: the model's accuracy-by-turn curve (no oracle);
- for a trained iteration, each of the paper's four claims against the base
  (`claims/CLAIM` its estimate, with `/low`, `/high` and `/holds` as 1 or 0).

TensorBoard's event files go to OUT/tensorboard (`tensorboard --logdir OUT/tensorboard`);
wandb logs one run named after the folder, in the project $WANDB_PROJECT (default rise-llm).
`rise train --report-to` is the Trainer's own logging of the training loss, unchanged.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rise_llm.claims import Claim
from rise_llm.errors import RiseError
from rise_llm.metrics import Metrics

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""Tracker name -> the package it needs."""
CLAIM_TAGS = ("oracle_gain", "sequential_vs_parallel", "turn_gain", "acc1_change")
"""Tags of the four claims, in `claims.rise_claims` order."""
TENSORBOARD_DIR = "tensorboard"


def check_report_to(stage: str, report_to: Sequence[str]) -> list[str]:
    """The trackers of `report_to` ("none" is none); an unknown name or a tracker whose package
    is not installed is an error that says what to give or install."""
    wanted = [name for name in report_to if name != "none"]
    for name in wanted:
        if name not in TRACKERS:
            raise RiseError(
                f"{stage}: report_to {name!r} is not a tracker; give tensorboard, wandb or none"
            )
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise RiseError(
                f"{stage}: report_to {name} needs the {TRACKERS[name]} package; "
                f"pip install {TRACKERS[name]} (or rise-llm[tensorboard])"
            )
    return wanted


def metric_scalars(metrics: Metrics) -> dict[str, float]:
    """`eval/NAME` -> value for every metric of `metrics` that was measured."""
    stored = metrics.to_dict()
    return {f"eval/{name}": stored[name] for name in metrics.names.columns() if name in stored}


def claim_scalars(claims: Sequence[Claim]) -> dict[str, float]:
    """`claims/TAG` (estimate), `/low`, `/high` and `/holds` (1 or 0) of the four claims
    (none for a model without claims: the base)."""
    found: dict[str, float] = {}
    if not claims:
        return found
    for tag, claim in zip(CLAIM_TAGS, claims, strict=True):
        found[f"claims/{tag}"] = claim.estimate
        found[f"claims/{tag}/low"] = claim.low
        found[f"claims/{tag}/high"] = claim.high
        found[f"claims/{tag}/holds"] = float(claim.holds)
    return found


def log_evaluations(
    report_to: Sequence[str],
    out: str | Path,
    metrics: Mapping[str, Metrics],
    claims: Mapping[str, Sequence[Claim]] | None = None,
) -> None:
    """Log each model of `metrics` (label -> metrics, in iteration order) and the claims of the
    labels in `claims` to every tracker of `report_to`, under the folder `out`."""
    trackers = check_report_to("report_to", report_to)
    if not trackers:
        return
    out = Path(out)
    steps: dict[int, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}
    for step, (label, m) in enumerate(metrics.items()):
        steps[step] = metric_scalars(m) | claim_scalars((claims or {}).get(label, []))
        curves[label] = list(m.acc)
    if "tensorboard" in trackers:
        _tensorboard(out / TENSORBOARD_DIR, steps, curves)
    if "wandb" in trackers:
        _wandb(out, steps, curves)


def _tensorboard(
    logdir: Path, steps: dict[int, dict[str, float]], curves: dict[str, list[float]]
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for step, scalars in steps.items():
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)
        for label, curve in curves.items():
            for t, value in enumerate(curve, start=1):
                writer.add_scalar(f"turns/{label}", value, global_step=t)
    finally:
        writer.close()


def _wandb(out: Path, steps: dict[int, dict[str, float]], curves: dict[str, list[float]]) -> None:
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "rise-llm"), name=out.name, dir=str(out)
    )
    try:
        for step, scalars in steps.items():
            run.log(scalars, step=step)
        table = wandb.Table(
            columns=["model", "turn", "accuracy"],
            data=[[label, t, v] for label, c in curves.items() for t, v in enumerate(c, 1)],
        )
        run.log({"turns": table})
    finally:
        run.finish()
