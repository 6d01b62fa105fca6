"""Results as tables for people: the per-turn metrics of one or more evaluated models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

stdout = Console()


def metric_columns(metrics: Mapping[str, Any]) -> list[str]:
    """Metric keys in reading order: acc@1..K, then m1@tK, p1@tK, then the baselines."""
    k = metrics["turns"]
    cols = [f"acc@{t}" for t in range(1, k + 1)] + [f"m1@t{k}", f"p1@t{k}"]
    cols += sorted(c for c in metrics if c.endswith("@t1") and c[0] in "mp" and c != "m1@t1")
    return [c for c in cols if c in metrics]


def metrics_table(rows: Mapping[str, Mapping[str, Any]], title: str = "Evaluation") -> Table:
    """A table with one row per metric and one column per model label (narrow terminals fit)."""
    first = next(iter(rows.values()))
    table = Table(title=title)
    table.add_column("metric")
    for label in rows:
        table.add_column(label, justify="right")
    table.add_row("n", *(str(m["n"]) for m in rows.values()))
    for c in metric_columns(first):
        table.add_row(c, *(f"{m[c]:.3f}" if c in m else "-" for m in rows.values()))
    return table


def transitions_table(metrics: Mapping[str, Any]) -> Table:
    """Correct/wrong transitions between consecutive turns of the no-oracle run."""
    table = Table(title="Turn transitions (no oracle)")
    table.add_column("turns")
    keys = ("correct->correct", "correct->wrong", "wrong->correct", "wrong->wrong")
    for k in keys:
        table.add_column(k, justify="right")
    for step, counts in metrics.get("transitions", {}).items():
        table.add_row(step, *(str(counts[k]) for k in keys))
    return table


def print_metrics(rows: Mapping[str, Mapping[str, Any]]) -> None:
    """Print the metrics table (and, for a single model, its transitions) to stdout."""
    stdout.print(metrics_table(rows))
    if len(rows) == 1:
        only = next(iter(rows.values()))
        if only.get("transitions"):
            stdout.print(transitions_table(only))
        stdout.print(only["majority_rule"])
