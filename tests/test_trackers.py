"""`report_to`: evaluation metrics and claims reach TensorBoard (read back from its event files
with the tensorboard package) and wandb (a stand-in module records the calls)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

from rise_llm.claims import Claim
from rise_llm.errors import RiseError
from rise_llm.metrics import Metrics
from rise_llm.trackers import TENSORBOARD_DIR, log_evaluations

pytest.importorskip("tensorboard")


def scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar TensorBoard stored under `logdir`: tag -> step -> value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


BASE = Metrics(n=10, turns=3, acc=[0.2, 0.3, 0.4], majority=0.5, oracle=0.6)
TRAINED = Metrics(
    n=10,
    turns=3,
    acc=[0.5, 0.6, 0.7],
    majority=0.8,
    oracle=0.9,
    parallel_samples=3,
    parallel_majority=0.55,
    parallel_any=0.85,
)
CLAIMS = [
    Claim("p1@t3 gain over base", 0.3, 0.1, 0.5, 0.05, 10),
    Claim("m1@t3 - m3@t1 (sequential vs parallel)", 0.25, -0.05, 0.4, 0.0, 10),
    Claim("(m1@t3 - m1@t1) gain over base", 0.0, -0.2, 0.2, 0.03, 10),
    Claim("acc@1 change from base", 0.3, 0.2, 0.4, -0.02, 10),
]


def test_tensorboard_gets_every_metric_and_claim(tmp_path):
    log_evaluations(["tensorboard"], tmp_path, {"base": BASE, "iter1": TRAINED}, {"iter1": CLAIMS})
    found = scalars(tmp_path / TENSORBOARD_DIR)
    assert found["eval/acc@2"] == pytest.approx({0: 0.3, 1: 0.6})
    assert found["eval/m1@t3"] == pytest.approx({0: 0.5, 1: 0.8})
    assert found["eval/p1@t3"] == pytest.approx({0: 0.6, 1: 0.9})
    assert found["eval/m3@t1"] == pytest.approx({1: 0.55})  # the base ran no parallel samples
    assert found["eval/p3@t1"] == pytest.approx({1: 0.85})
    assert found["turns/iter1"] == pytest.approx({1: 0.5, 2: 0.6, 3: 0.7})
    assert found["claims/oracle_gain"] == pytest.approx({1: 0.3})
    assert found["claims/sequential_vs_parallel/low"] == pytest.approx({1: -0.05})
    assert found["claims/turn_gain/holds"] == {1: 0.0}
    assert found["claims/acc1_change/holds"] == {1: 1.0}


def test_wandb_gets_the_same_scalars(tmp_path, monkeypatch):
    calls: list = []

    class Run:
        def log(self, values, step=None):
            calls.append((step, values))

        def finish(self):
            calls.append("finish")

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: calls.append(kwargs) or Run()
    fake.Table = lambda columns, data: ("table", columns, data)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log_evaluations(
        ["wandb"], tmp_path / "run", {"base": BASE, "iter1": TRAINED}, {"iter1": CLAIMS}
    )
    assert calls[0]["name"] == "run"
    assert calls[1] == (
        0,
        {f"eval/acc@{t}": a for t, a in enumerate(BASE.acc, 1)}
        | {
            "eval/m1@t3": 0.5,
            "eval/p1@t3": 0.6,
        },
    )
    assert calls[2][0] == 1 and calls[2][1]["claims/oracle_gain"] == 0.3
    assert calls[-1] == "finish"


def test_report_to_refuses_unknown_trackers():
    from rise_llm.evaluate import EvaluateConfig

    with pytest.raises(RiseError, match="'mlflow' is not a tracker; give tensorboard, wandb"):
        EvaluateConfig(model="m", report_to=["mlflow"], out="x")
    with pytest.raises(RiseError, match="needs an out folder"):
        EvaluateConfig(model="m", report_to=["tensorboard"])


@pytest.mark.slow
def test_a_run_logs_each_iteration_to_tensorboard(tiny_run):
    found = scalars(tiny_run / TENSORBOARD_DIR)
    summary = json.loads((tiny_run / "summary.json").read_text())
    comparisons = json.loads((tiny_run / "comparisons.json").read_text())
    for step, label in enumerate(("base", "iter1", "iter2")):
        for name in ("acc@1", "acc@3", "acc@5", "m1@t5", "p1@t5", "m5@t1", "p5@t1"):
            assert found[f"eval/{name}"][step] == pytest.approx(summary[label][name]), name
        curve = [summary[label][f"acc@{t}"] for t in range(1, 6)]
        assert list(found[f"turns/{label}"].values()) == pytest.approx(curve)
    for step in (1, 2):
        oracle, sequential, turn, acc1 = comparisons[f"iter{step}_vs_base"]
        assert found["claims/oracle_gain"][step] == pytest.approx(oracle["estimate"])
        assert found["claims/sequential_vs_parallel/high"][step] == pytest.approx(
            sequential["high"]
        )
        assert found["claims/turn_gain/low"][step] == pytest.approx(turn["low"])
        assert found["claims/acc1_change/holds"][step] == float(acc1["holds"])
