"""`rise report`: one self-contained HTML file of a run or of evaluations, for people.

From a `rise run` folder (or several), or one or more `rise evaluate` folders, it writes a page
that opens from disk with no server and no network (Plotly's JavaScript, the style and the
page's script are inlined) holding, per model:

- accuracy by turn (no oracle) with Wilson 95% intervals, and m1@tK, p1@tK, mK@t1, pK@t1
  beside it (the parallel baselines);
- the paper's four claims of each model against the first (the base) with their paired
  bootstrap intervals (`claims.rise_claims`), and whether each holds;
- the turn transitions as 2x2 matrices, and the share of wrong answers repeated unchanged;
- for a run, per iteration: the collection (`report.collection_rows`), the training data
  (`data.data_summary`) and the training loss; the run's config and library versions;
- the trajectory browser (`trajectories.py`).

Every number is recomputed from the folders' episodes.jsonl with the library's own metrics.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rise_llm.claims import rise_claims, wilson_interval
from rise_llm.data import DATA, REWARDS, data_summary
from rise_llm.errors import RiseError
from rise_llm.merge import read_collections
from rise_llm.metrics import OUTCOME_FIELDS, TRANSITIONS, MetricNames, compute_metrics, outcomes
from rise_llm.records import (
    Episode,
    TrainingExample,
    read_jsonl,
    read_stage_outputs,
    write_atomic,
)
from rise_llm.report import collection_rows
from rise_llm.trajectories import FILTERS, browser_data

REPORT = "report.html"
TEMPLATES = Path(__file__).parent / "templates"
EVAL_FILES = "a `rise evaluate` folder (episodes.jsonl)"


@dataclass
class ReportConfig:
    """Settings of `rise report`.

    Args:
        paths: a `rise run` folder (or several), or `rise evaluate` folders to compare; the
            first model is the base the others' claims are measured against.
        out: the HTML file to write (default: report.html in the folder when one is given,
            else in the current folder).
        seed: bootstrap seed of the claims' intervals.
    """

    paths: list[str]
    out: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.paths:
            raise RiseError("report: give a `rise run` folder or `rise evaluate` folders")
        if self.out is None:
            self.out = str(Path(self.paths[0]) / REPORT if len(self.paths) == 1 else REPORT)
        if not self.out.endswith((".html", ".htm")):
            raise RiseError(f"report: out {self.out} should end in .html; give FILE.html")


@dataclass
class Model:
    """One evaluated model of the report: its label, evaluation folder and episodes, and for a
    run's iteration the folder holding its collect/, data/ and train/."""

    label: str
    eval_folder: Path
    episodes: list[Episode]
    iteration_folder: Path | None = None
    run: Path | None = None


def is_run(path: Path) -> bool:
    return (path / "base" / "eval" / "episodes.jsonl").exists()


def run_models(run: Path, prefix: str = "") -> list[Model]:
    """The models of a run folder: base, iter1, iter2, ... as far as each was evaluated."""
    models, k = [], 0
    while True:
        label = "base" if k == 0 else f"iter{k}"
        folder = run / label / "eval"
        if not (folder / "episodes.jsonl").exists():
            return models
        models.append(
            Model(
                f"{prefix}{label}",
                folder,
                read_jsonl(folder / "episodes.jsonl", Episode),
                iteration_folder=run / label if k else None,
                run=run,
            )
        )
        k += 1


def load_models(paths: list[str]) -> list[Model]:
    """Every model of the given folders, in order; a run given beside others is prefixed with
    its folder's name, and a later run's base that is the first one's (the demo shares it) is
    shown once."""
    models: list[Model] = []
    for raw in paths:
        path = Path(raw)
        if is_run(path):
            found = run_models(path, f"{path.name} " if len(paths) > 1 else "")
            if models and found and _same_episodes(models[0], found[0]):
                found = found[1:]
            models.extend(found)
        elif (path / "episodes.jsonl").exists() or path.suffix == ".jsonl":
            folder = path if path.is_dir() else path.parent
            episodes = read_stage_outputs([raw], "episodes.jsonl", Episode, EVAL_FILES)
            # a run's OUT/iter1/eval is "iter1"
            label = folder.parent.name if folder.name == "eval" else folder.name
            models.append(Model(label or str(folder), folder, episodes))
        else:
            raise RiseError(
                f"report: {path} is neither a `rise run` folder (base/eval/episodes.jsonl) nor "
                f"{EVAL_FILES}; give one of those"
            )
    labels = [m.label for m in models]
    for m in models:
        if labels.count(m.label) > 1:
            m.label = str(m.eval_folder)
    return models


def _same_episodes(a: Model, b: Model) -> bool:
    return (a.eval_folder / "episodes.jsonl").read_bytes() == (
        b.eval_folder / "episodes.jsonl"
    ).read_bytes()


def _turns(episodes: list[Episode]) -> int:
    lengths = [len(ep.turns) for ep in episodes if ep.mode == "no_oracle"]
    if not lengths:
        raise RiseError("report: an evaluation has no no_oracle episodes; rerun its evaluate")
    return max(lengths)


def _interval(values: list[float]) -> dict[str, float]:
    hits = round(sum(values))
    low, high = wilson_interval(hits, len(values))
    return {"value": hits / len(values), "low": low, "high": high, "n": len(values)}


def model_section(model: Model) -> dict[str, Any]:
    """A model's curve and metrics with intervals, and its transitions."""
    turns = _turns(model.episodes)
    metrics = compute_metrics(model.episodes, turns)
    names = metrics.names
    no_oracle = [ep for ep in model.episodes if ep.mode == "no_oracle"]
    curve = [_interval([float(ep.turns[t].correct) for ep in no_oracle]) for t in range(turns)]
    per_problem = outcomes(model.episodes, turns)
    summary = {}
    for name in OUTCOME_FIELDS[1:]:
        values = [getattr(o, name) for o in per_problem.values()]
        if name.startswith("parallel") and not metrics.parallel_samples:
            continue
        if values and None not in values:
            summary[names.outcome(name)] = _interval(values)
    steps = []
    for step, counts in metrics.transitions.items():
        wrong_before = counts["wrong->correct"] + counts["wrong->wrong"]
        right_before = counts["correct->correct"] + counts["correct->wrong"]
        steps.append(
            {
                "step": step,
                "counts": {k: counts[k] for k in TRANSITIONS},
                "right_before": right_before,
                "wrong_before": wrong_before,
                "unchanged": counts["wrong->wrong unchanged"],
                "edits": counts["wrong->correct edit"],
            }
        )
    return {
        "label": model.label,
        "folder": str(model.eval_folder),
        "n": metrics.n,
        "turns": turns,
        "parallel_samples": metrics.parallel_samples,
        "curve": curve,
        "summary": summary,
        "transitions": steps,
    }


MODES = ("no_oracle", "oracle", "parallel")


def _claims_gap(base: Model, model: Model) -> str | None:
    """Why the claims of `model` against `base` cannot be measured (None when they can): they
    pair the two evaluations problem by problem, in all three modes, with the same K."""
    for m in (base, model):
        missing = [mode for mode in MODES if not any(ep.mode == mode for ep in m.episodes)]
        if missing:
            return f"{m.label} has no {', '.join(missing)} episodes"
    if {ep.problem_id for ep in base.episodes} != {ep.problem_id for ep in model.episodes}:
        return f"{model.label} was evaluated on other problems than {base.label}"
    if _turns(base.episodes) != _turns(model.episodes):
        return f"{model.label} was evaluated with another K than {base.label}"
    return None


def claims_section(models: list[Model], seed: int) -> tuple[list[dict[str, Any]], str | None]:
    """Each later model's four claims against the first, and why some could not be measured."""
    base, found, gaps = models[0], [], []
    for model in models[1:]:
        gap = _claims_gap(base, model)
        if gap:
            gaps.append(gap)
            continue
        claims = rise_claims(base.episodes, model.episodes, _turns(base.episodes), seed)
        rows = [
            dataclasses.asdict(c) | {"holds": c.holds, "significant": c.significant} for c in claims
        ]
        found.append({"label": model.label, "base": base.label, "claims": rows})
    note = f"no claims where {'; '.join(gaps)}" if gaps else None
    return found, note


def _json_file(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def iteration_section(model: Model) -> dict[str, Any] | None:
    """A run iteration's collection, training data and training (what exists of them)."""
    folder = model.iteration_folder
    if folder is None:
        return None
    section: dict[str, Any] = {"label": model.label}
    if (folder / "collect" / "episodes.jsonl").exists():
        collected = read_collections([str(folder / "collect")])
        rows = collection_rows(collected)
        section["collection"] = {
            "problems": len(collected),
            "rows": [dataclasses.asdict(r) for r in rows],
            "samples": sum(r.samples for r in rows),
        }
    if (folder / "data" / DATA).exists():
        examples = read_jsonl(folder / "data" / DATA, TrainingExample)
        section["data"] = data_summary(examples) | {"rewards": list(REWARDS)}
    record = _json_file(folder / "train" / "train.json")
    if record:
        log = record.get("log", [])
        section["training"] = {
            "steps": record.get("steps"),
            "examples": record.get("examples"),
            "seconds": record.get("seconds"),
            "train_loss": record.get("train_loss"),
            "loss": [[e["step"], e["loss"]] for e in log if "loss" in e and "step" in e],
        }
    return section


def provenance_section(models: list[Model]) -> list[dict[str, Any]]:
    """The config.json (config, versions, machine) of each run, or of each evaluation."""
    records, seen = [], set()
    for model in models:
        folder = model.run or model.eval_folder
        if folder in seen:
            continue
        seen.add(folder)
        record = _json_file(folder / "config.json")
        if record:
            records.append({"folder": str(folder), **record})
    return records


def report_data(config: ReportConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Everything the page shows (JSON-ready), and the trajectory browser's packed blobs."""
    models = load_models(config.paths)
    sections = [model_section(m) for m in models]
    claims, claims_note = claims_section(models, config.seed)
    index, blobs = browser_data({m.label: m.episodes for m in models})
    iterations = [s for s in (iteration_section(m) for m in models) if s]
    turns = sections[0]["turns"]
    data = {
        "title": ", ".join(config.paths),
        "made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "models": sections,
        "names": {
            "turns": turns,
            "acc": [MetricNames(turns).acc(t) for t in range(1, turns + 1)],
        },
        "claims": claims,
        "claims_note": claims_note,
        "iterations": iterations,
        "provenance": provenance_section(models),
        "browser": index,
        "filters": FILTERS,
    }
    return data, blobs


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element (no "</" can close it)."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


@dataclass
class ReportFile:
    path: Path
    bytes: int
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)


def write_report(config: ReportConfig) -> ReportFile:
    """Write the HTML file; returns its path, size and the seconds it took to build."""
    import jinja2
    from plotly.offline import get_plotlyjs

    start = time.perf_counter()
    data, blobs = report_data(config)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        keep_trailing_newline=True,
    )
    env.filters["pct"] = lambda x: "-" if x is None else f"{x:.1%}"
    env.filters["fixed"] = lambda x, digits=3: "-" if x is None else f"{x:.{digits}f}"
    env.filters["signed"] = lambda x: f"{x:+.3f}"
    html = env.get_template("report.html.j2").render(
        data=data,
        data_json=_script_json(data),
        blobs=blobs,
        plotly_js=get_plotlyjs(),
        style=(TEMPLATES / "report.css").read_text(),
        script=(TEMPLATES / "report.js").read_text(),
    )
    path = Path(config.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, html)  # a kill leaves the old page or the new one, never half
    return ReportFile(path, path.stat().st_size, time.perf_counter() - start, data)


def run(config: ReportConfig) -> ReportFile:
    """`rise report`: write the file and print its path and size (one plain line, never
    wrapped, so that scripts can read the path)."""
    written = write_report(config)
    print(
        f"wrote {written.path} ({written.bytes / 1e6:.1f} MB in {written.seconds:.1f} s); "
        "open it in a browser",
        flush=True,
    )
    return written
