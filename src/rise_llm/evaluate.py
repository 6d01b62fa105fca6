"""Multi-turn evaluation of a model on a task (METHOD.md, "Metrics").

On the same problems it runs K turns without oracle, K turns with oracle and K independent
turn-1 samples, then writes `metrics.json` and `episodes.jsonl` to the output folder and prints
a table. Each finished mode is appended to `episodes.jsonl` at once, so rerunning the same
command after a crash or kill redoes only the modes that had not finished.

By default every distinct state is sampled once (`reuse_samples`): the oracle episodes are the
no-oracle ones cut after their first correct attempt, and the no-oracle turn 1 is one of the K
parallel samples, so a problem costs K + (K - 1) samples instead of up to 3K. That holds because
the retry message after an attempt is the same in both modes: its feedback, when the task gives
some, comes from the checks the model may see, never from the oracle's (`rollout.py`, README
"Feedback between attempts"); `reuse_samples: false` samples each mode on its own.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rise_llm.engines.base import BATCH_SIZE, RESUME_FREE, Engine, SamplingParams
from rise_llm.engines.load import stage_engine
from rise_llm.errors import (
    RiseError,
    check_at_least,
    check_context_window,
    check_device,
    check_sampling,
)
from rise_llm.judging import check_ready
from rise_llm.metrics import Metrics, compute_metrics
from rise_llm.progress import console
from rise_llm.provenance import check_out, check_settings, write_run_record
from rise_llm.records import Episode, read_jsonl_for_resume, write_atomic, write_jsonl
from rise_llm.report import print_metrics
from rise_llm.rollout import (
    default_context_window,
    oracle_prefixes,
    parallel_episodes,
    sequential_episodes,
    with_first_turns,
)
from rise_llm.tasks import get_task
from rise_llm.trackers import check_report_to, log_evaluations


@dataclass
class EvaluateConfig:
    """Settings of `rise evaluate`.

    Args:
        model: a local model folder, a .gguf file or a Hugging Face Hub id, or
            openai:MODEL[@URL] for a model behind an OpenAI-compatible server.
        chat_template: a Jinja file or text replacing the model's chat template.
        task: the task to evaluate on (arith, gsm8k, math, jsonl, ...).
        task_options: the task's options, e.g. {"max_steps": 5} for arith.
        split: the split the problems come from.
        limit: evaluate the first `limit` problems of the split (all when None).
        turns: K, the number of turns (and of parallel samples for the baselines).
        context_window: W, the first prompt plus the last W-1 attempt/feedback pairs are shown;
            default min(2, K), the reference value for models trained on two-turn data.
        seed: sampling seed; the same seed and config give the same episodes.
        temperature: sampling temperature (reference: 1.0).
        top_p: nucleus sampling threshold (1.0: off).
        max_new_tokens: most tokens per response (None: the task's default).
        device: "auto" (CUDA when present, else CPU), "cpu" or "cuda".
        dtype: "auto" (bfloat16 on a GPU that has it, else float32) or a dtype name.
        batch_size: most sequences the engine generates together.
        reuse_samples: read the oracle episodes and one of the K parallel samples off the
            no-oracle episodes instead of sampling them again (the same distribution while the
            feedback does not depend on the attempt; about 40% fewer samples).
        engine_options: options of the openai engine, for openai: models (max_concurrency,
            timeout, max_retries, api_key_env).
        report_to: trackers that get the metrics (`trackers.py`): ["tensorboard"] (to
            OUT/tensorboard), ["wandb"], or ["none"].
        out: output folder; None keeps results in memory only.
    """

    model: str
    chat_template: str | None = None
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    split: str = "test"
    limit: int | None = None
    turns: int = 5
    context_window: int | None = None
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = BATCH_SIZE
    reuse_samples: bool = True
    engine_options: dict[str, Any] | None = None
    report_to: list[str] = field(default_factory=lambda: ["none"])
    out: str | None = None

    def __post_init__(self) -> None:
        check_at_least("evaluate", 1, turns=self.turns, limit=self.limit)
        check_at_least("evaluate", 1, batch_size=self.batch_size)
        if self.context_window is None:
            self.context_window = default_context_window(self.turns)
        check_context_window("evaluate", self.context_window, self.turns)
        check_sampling("evaluate", self.temperature, self.top_p, self.max_new_tokens)
        check_device("evaluate", self.device)
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if check_report_to("evaluate", self.report_to) and self.out is None:
            raise RiseError("evaluate: report_to needs an out folder for the trackers' logs")


@dataclass
class EvaluateResult:
    metrics: Metrics
    episodes: list[Episode]


def _expected(mode: str, n: int, turns: int) -> int:
    return n * turns if mode == "parallel" else n


def _settings(config: EvaluateConfig) -> dict[str, Any]:
    # where results go, not what they are: a rerun may log to other trackers
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "report_to")}


def _resume(out: Path, config: EvaluateConfig, n: int) -> list[Episode]:
    """Episodes of the modes a previous run of the same config finished (others are dropped)."""
    # an evaluation from before `reuse_samples` resumes under it: the metrics have the same
    # distribution either way
    check_settings(
        out, _settings(config), "an evaluation", defaults=EvaluateConfig, free=RESUME_FREE
    )
    path = out / "episodes.jsonl"
    episodes = read_jsonl_for_resume(path, Episode)
    counts = Counter(ep.mode for ep in episodes)
    kept = [ep for ep in episodes if counts[ep.mode] == _expected(ep.mode, n, config.turns)]
    if len(kept) < len(episodes):  # drop the modes a kill left half-written
        write_jsonl(path, kept)
    return kept


def run(config: EvaluateConfig, engine: Engine | None = None) -> EvaluateResult:
    """Evaluate `config.model` (or the given engine) and return metrics and episodes.

    With `out`, modes finished by an earlier run of the same settings are kept, and a run with
    nothing left to do rewrites nothing.
    """
    out = Path(config.out) if config.out else None
    if out:
        check_out(out, "evaluate")
    task = get_task(config.task, **config.task_options)
    problems = task.problems(config.split, config.limit)
    episodes = _resume(out, config, len(problems)) if out else []
    done = {ep.mode for ep in episodes}
    K, W = config.turns, config.context_window
    wanted = ["no_oracle", "oracle"] + (["parallel"] if K > 1 else [])  # K=1: parallel is turn 1
    todo = [mode for mode in wanted if mode not in done]
    for mode in wanted:
        if mode in done:
            console.print(f"{mode}: already done in {out}, kept")
    metrics_path = out / "metrics.json" if out else None
    if not todo and metrics_path and metrics_path.exists():
        return EvaluateResult(Metrics.from_dict(json.loads(metrics_path.read_text())), episodes)
    derived = {"oracle"} if config.reuse_samples else set()
    if set(todo) - derived:
        check_ready(task)  # a code task without its sandbox stops before the model loads
    if set(todo) - derived and engine is None:  # load first: a bad model leaves no folder
        engine = stage_engine(config)
    params = SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens or task.default_max_new_tokens,
        seed=config.seed,
    )

    def no_oracle() -> list[Episode]:
        return [ep for ep in episodes if ep.mode == "no_oracle"]

    def sampled_parallel(samples: int) -> list[Episode]:
        return parallel_episodes(engine, task, problems, samples, params.with_seed(config.seed + 2))

    produce = {
        "no_oracle": lambda: sequential_episodes(
            engine, task, problems, K, W, params, oracle=False
        ),
        "oracle": lambda: sequential_episodes(
            engine, task, problems, K, W, params.with_seed(config.seed + 1), oracle=True
        ),
        "parallel": lambda: sampled_parallel(K),
    }
    if config.reuse_samples:  # no_oracle comes first in `todo`, or was done before
        produce["oracle"] = lambda: oracle_prefixes(no_oracle())
        produce["parallel"] = lambda: with_first_turns(no_oracle(), sampled_parallel(K - 1))
    timings = {}
    if metrics_path and metrics_path.exists():
        timings = json.loads(metrics_path.read_text()).get("seconds", {})
    for mode in todo:
        start = time.perf_counter()
        new = produce[mode]()
        timings[mode] = round(time.perf_counter() - start, 2)
        episodes.extend(new)
        if out:
            # the record comes with the first episodes: a run that fails before them (a bad
            # model, a verifier that raises) leaves nothing that a rerun would have to match
            if not (out / "config.json").exists():
                write_run_record(out, _settings(config))
            write_jsonl(out / "episodes.jsonl", new, append=True)
    metrics = compute_metrics(episodes, K)
    metrics.context_window = W
    metrics.seconds = timings
    if metrics_path:
        write_atomic(metrics_path, json.dumps(metrics.to_dict(), indent=2) + "\n")
        log_evaluations(config.report_to, out, {Path(config.model).name: metrics})
    return EvaluateResult(metrics=metrics, episodes=episodes)


def evaluate_and_print(config: EvaluateConfig) -> EvaluateResult:
    """`run`, then print the metrics table (the command line's behaviour)."""
    result = run(config)
    print_metrics({Path(config.model).name or config.model: result.metrics.to_dict()})
    if config.out:
        console.print(f"wrote {Path(config.out) / 'metrics.json'} and episodes.jsonl")
    return result
