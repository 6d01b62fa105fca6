"""`rise compare`: several models evaluated on the same problems, each against one base.

The ablation table of the self-correction issue: for each model, its turn curve, the paper's
four claims against the base with paired bootstrap 95% intervals (`claims.rise_claims`), the
rise from turn 1 to turn 2 (acc@2 - acc@1, paired over problems), and the turn-1 -> turn-2
transitions that say *why* a curve rises or falls: right answers kept, wrong ones fixed, wrong
ones repeated unchanged (SCoRe's minimal-edit collapse), the share of corrections that are
edits of the failed attempt (`edits.is_edit`) rather than fresh attempts, and how similar the
corrections are to the failed attempts (mean difflib ratio, `edits.similarity`).

Every number is recomputed from the evaluations' episodes.jsonl, so folders evaluated before a
metric existed get it too. Output: a table on the terminal, and with `out` a comparison.json and
a comparison.md (the Markdown table the README quotes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from rise_llm.claims import paired_bootstrap, rise_claims
from rise_llm.edits import similarity
from rise_llm.errors import RiseError
from rise_llm.metrics import MetricNames, compute_metrics
from rise_llm.provenance import check_out
from rise_llm.records import Episode, read_stage_outputs
from rise_llm.report import stdout


@dataclass
class CompareConfig:
    """Settings of `rise compare`.

    Args:
        base: the base model's evaluation folder (holding episodes.jsonl).
        models: LABEL=FOLDER of each model's evaluation on the same problems, in table order (a
            bare FOLDER is labelled by its path; the last "=" separates, so a label may hold
            one, as in "T=3=runs/t3/iter1/eval").
        seed: bootstrap seed.
        out: folder for comparison.json and comparison.md (none: print only).
    """

    base: str
    models: list[str] = field(default_factory=list)
    seed: int = 0
    out: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise RiseError("compare: give at least one model as --models LABEL=EVAL_FOLDER")
        labels = [label for label, _ in self._pairs()]
        if len(set(labels)) < len(labels):
            raise RiseError(f"compare: two models share a label in {labels}; label them apart")

    def _pairs(self) -> list[tuple[str, str]]:
        pairs = [m.rpartition("=") for m in self.models]  # labels like "T=3" keep their "="
        return [(label, folder) if sep else (folder, folder) for label, sep, folder in pairs]

    def labelled(self) -> dict[str, str]:
        """Label -> evaluation folder, in the order given."""
        return dict(self._pairs())


@dataclass
class Row:
    """One model's line of the ablation table; intervals are [estimate, low, high]."""

    label: str
    n: int
    acc: list[float]
    sequential_vs_parallel: list[float]
    turn_gain_vs_base: list[float]
    oracle_gain: list[float]
    acc1_change: list[float]
    turn2_rise: list[float]
    right_kept: float
    wrong_fixed: float
    wrong_unchanged: float
    edit_share: float
    fix_similarity: float
    majority: float  # m1@tK
    parallel_majority: float  # mK@t1
    oracle: float  # p1@tK
    parallel_any: float  # pK@t1
    per_turn: list[list[float]]  # [right kept, wrong fixed, wrong unchanged] at t -> t+1


def _episodes(folder: str) -> list[Episode]:
    episodes = read_stage_outputs([folder], "episodes.jsonl", Episode, "run `rise evaluate` first")
    missing = sorted({"no_oracle", "oracle", "parallel"} - {ep.mode for ep in episodes})
    if missing:
        raise RiseError(
            f"compare: the evaluation in {folder} has no {', '.join(missing)} episodes; rerun "
            "its `rise evaluate` (with --turns 2 or more) to finish it"
        )
    return episodes


def _share(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def compare_row(label: str, base: list[Episode], episodes: list[Episode], seed: int) -> Row:
    """The table row of one model's episodes against the base's (same problems, same K)."""
    turns = max(len(ep.turns) for ep in episodes if ep.mode == "no_oracle")
    metrics = compute_metrics(episodes, turns)
    oracle, sequential, gain, acc1 = rise_claims(base, episodes, turns, seed)
    no_oracle = sorted(
        (ep for ep in episodes if ep.mode == "no_oracle"), key=lambda ep: ep.problem_id
    )
    rise = [float(ep.turns[1].correct) - float(ep.turns[0].correct) for ep in no_oracle]
    fixes = [
        similarity(ep.turns[0].response, ep.turns[1].response)
        for ep in no_oracle
        if not ep.turns[0].correct and ep.turns[1].correct
    ]
    per_turn = [_transition_shares(metrics.transitions[f"{k}->{k + 1}"]) for k in range(1, turns)]

    def interval(c) -> list[float]:
        return [c.estimate, c.low, c.high]

    return Row(
        label=label,
        n=metrics.n,
        acc=metrics.acc,
        sequential_vs_parallel=interval(sequential),
        turn_gain_vs_base=interval(gain),
        oracle_gain=interval(oracle),
        acc1_change=interval(acc1),
        turn2_rise=list(paired_bootstrap(rise, seed=seed)),
        right_kept=per_turn[0][0],
        wrong_fixed=per_turn[0][1],
        wrong_unchanged=per_turn[0][2],
        edit_share=_share(
            metrics.transitions["1->2"]["wrong->correct edit"],
            metrics.transitions["1->2"]["wrong->correct"],
        ),
        fix_similarity=sum(fixes) / len(fixes) if fixes else float("nan"),
        majority=metrics.majority,
        parallel_majority=metrics.parallel_majority,
        oracle=metrics.oracle,
        parallel_any=metrics.parallel_any,
        per_turn=per_turn,
    )


def _transition_shares(t: dict[str, int]) -> list[float]:
    """Right kept (over right before), wrong fixed and wrong repeated word for word (over
    wrong before) of one turn's transition counts."""
    wrong_before = t["wrong->correct"] + t["wrong->wrong"]
    return [
        _share(t["correct->correct"], t["correct->correct"] + t["correct->wrong"]),
        _share(t["wrong->correct"], wrong_before),
        _share(t["wrong->wrong unchanged"], wrong_before),
    ]


def compare(config: CompareConfig) -> list[Row]:
    """The base's row (against itself) and each model's, printed and optionally written."""
    if config.out:
        check_out(config.out, "compare")
    base = _episodes(config.base)
    rows = [compare_row("base", base, base, config.seed)]
    for label, folder in config.labelled().items():
        rows.append(compare_row(label, base, _episodes(folder), config.seed))
    stdout.print(comparison_table(rows))
    stdout.print(per_turn_table(rows))
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"config": asdict(config), "rows": [asdict(r) for r in rows]}
        (out / "comparison.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "comparison.md").write_text(comparison_markdown(rows))
        stdout.print(f"wrote {out / 'comparison.json'} and comparison.md")
    return rows


COLUMNS = (
    "model",
    "acc@1..acc@K",
    "m1@tK - mK@t1",
    "turn gain vs base",
    "p1@tK gain",
    "acc@1 change",
    "acc@2 - acc@1",
    "right kept",
    "wrong fixed",
    "wrong unchanged",
    "edits",
    "fix similarity",
)


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.0%}"  # NaN: nothing to divide


def _cells(row: Row) -> list[str]:
    def ci(values: list[float]) -> str:
        estimate, low, high = values
        return f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"

    first = row.label == "base"
    return [
        row.label,
        " ".join(f"{a:.3f}" for a in row.acc),
        ci(row.sequential_vs_parallel),
        "" if first else ci(row.turn_gain_vs_base),
        "" if first else ci(row.oracle_gain),
        "" if first else ci(row.acc1_change),
        ci(row.turn2_rise),
        _pct(row.right_kept),
        _pct(row.wrong_fixed),
        _pct(row.wrong_unchanged),
        _pct(row.edit_share),
        "-" if row.fix_similarity != row.fix_similarity else f"{row.fix_similarity:.2f}",
    ]


def _table(title: str, columns: list[str] | tuple[str, ...], cells: list[list[str]]) -> Table:
    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in cells:
        table.add_row(*row)
    return table


def comparison_table(rows: list[Row]) -> Table:
    return _table(
        f"Against base on the same {rows[0].n} problems (paired bootstrap 95%; "
        "transitions turn 1 -> 2, no oracle)",
        COLUMNS,
        [_cells(row) for row in rows],
    )


def per_turn_table(rows: list[Row]) -> Table:
    return _table(
        "Per turn (no oracle): the curve, majorities, oracle, transitions",
        per_turn_columns(rows),
        [per_turn_cells(row) for row in rows],
    )


def _markdown(columns: list[str] | tuple[str, ...], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def per_turn_columns(rows: list[Row]) -> list[str]:
    k = len(rows[0].acc)
    names = MetricNames(k, k)
    steps = ", ".join(f"{t}->{t + 1}" for t in range(1, k))
    return [
        "model",
        f"{names.acc(1)} .. {names.acc(k)}",
        names.majority,
        names.parallel_majority,
        names.oracle,
        names.parallel_any,
        f"right kept / wrong fixed / wrong unchanged, turns {steps}",
    ]


def per_turn_cells(row: Row) -> list[str]:
    """A model's turn curve, its majorities and oracle figures, and every turn's transitions."""
    shares = ", ".join("/".join(_pct(x) for x in t) for t in row.per_turn)
    figures = (row.majority, row.parallel_majority, row.oracle, row.parallel_any)
    return [
        row.label,
        " ".join(f"{a:.3f}".removeprefix("0") for a in row.acc),
        *(f"{x:.3f}".removeprefix("0") for x in figures),
        shares,
    ]


def comparison_markdown(rows: list[Row]) -> str:
    """The ablation table, then each model's turn curve and transitions at every turn."""
    return (
        _markdown(COLUMNS, [_cells(row) for row in rows])
        + "\n"
        + _markdown(per_turn_columns(rows), [per_turn_cells(row) for row in rows])
    )
