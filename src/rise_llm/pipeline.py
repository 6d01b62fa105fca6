"""`rise run CONFIG.yaml`: RISE iterations of collect -> build-data -> train -> evaluate.

Iteration k collects with the model of iteration k-1 (the base model for k=1), builds weighted
training data, trains, and evaluates the result on the same held-out problems as the base model.
One run folder holds everything:

    OUT/config.json          resolved config and library versions
    OUT/base/eval/           the base model's evaluation
    OUT/iterK/collect/       episodes.jsonl with every sample
    OUT/iterK/collect-shards/I/  shard I's collection, with `server.split_collection`
    OUT/iterK/data/          data.jsonl (weighted examples)
    OUT/iterK/train/model/   the trained model (a standard HF folder)
    OUT/iterK/train/launch.log  `accelerate launch`'s output, with `train.launch`
    OUT/iterK/eval/          metrics.json, episodes.jsonl
    OUT/LABEL/server.log     the server's output, when checkpoints are served (`server:`);
                             server-1.log, server-2.log, ... with `server.replicas` > 1
    OUT/summary.json         label -> that model's metrics.json content
    OUT/comparisons.json     each iteration against base, with bootstrap intervals
    OUT/accuracy_by_turn.png
    OUT/report.html          `rise report` of the run: charts, claims, trajectory browser

With a `server:` section, each checkpoint is served by its own server process (vLLM, SGLang,
`rise serve`) while the stages in `server.stages` sample from it through the openai engine;
the server is stopped before training, so it never holds the GPU the trainer needs. With
`server.replicas: N` each checkpoint gets N servers, sampled through one engine over all of them;
with `server.split_collection` as well, the collection runs as N shards (`rise collect --shard
I/N`), shard I from replica I, at once in threads, and `rise merge` joins them into iterK/collect;
a shard whose replica dies resumes through the replicas still up.
With a `train.launch` section, each training runs as `accelerate launch ... -m rise_llm train
...` in a child process group (`launch.py`): several GPUs, FSDP or DeepSpeed, several machines.

On several machines (`train.launch.num_machines` N > 1) every machine runs the same `rise run`
with its own `train.launch.machine_rank` h, and OUT on a file system all of them mount. Machine
0 runs the whole run as above, its part of each training included. Machine h > 0 only joins the
trainings (`join`): for each iteration k it waits for machine 0's OUT/iterK/data, launches its
part of training k, and waits for the trained model's train.json. It writes only its own
OUT/iterK/train/launch-nodeH.log, never what machine 0 writes, and its rerun resumes the same way.

Every stage skips work it already finished, so rerunning the same command after a crash or a
kill resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rise_llm import collect, data, evaluate, launch, merge, report_html, train
from rise_llm.claims import rise_claims
from rise_llm.config import build
from rise_llm.engines.base import BATCH_SIZE, RESUME_FREE, Engine
from rise_llm.engines.served import (
    SERVER_RESUME_FREE,
    ServedModel,
    ServedReplicas,
    ServerConfig,
    devices_of_replicas,
)
from rise_llm.errors import RiseError, check_at_least, check_device
from rise_llm.metrics import Metrics
from rise_llm.progress import console, without_bars
from rise_llm.provenance import check_out, check_settings, write_run_record
from rise_llm.records import Episode, read_jsonl
from rise_llm.report import claims_table, plot_accuracy_by_turn, print_metrics, stdout
from rise_llm.tasks import TASKS, get_task
from rise_llm.trackers import check_report_to, log_evaluations

# Settings a run fills in for every stage itself; a section must not set them.
_SAMPLING = {"model", "chat_template", "out", "task", "task_options", "device", "dtype"}
_RUN_OWNED = {
    "collect": _SAMPLING | {"batch_size"},
    "data": {"episodes", "out"},
    "train": {"model", "chat_template", "data", "out", "device"},
    "evaluate": _SAMPLING | {"batch_size"},
}


@dataclass
class DataSection:
    """build-data settings of a run, plus `cumulative`: train on all collections so far."""

    criteria: str = "all"
    tau: float = 0.4
    dedupe: bool = True
    keep_ratio: float = 1.0
    progress_bonus: float = 0.0
    cumulative: bool = False


@dataclass
class RunConfig:
    """Settings of `rise run`.

    Args:
        base_model: the model RISE starts from (folder, .gguf file or Hub id).
        chat_template: a Jinja file or text replacing the base model's chat template, for
            every stage (trained models save it, so sampling and training always agree).
        out: the run folder.
        task: the task for collection and evaluation.
        task_options: the task's options, e.g. {"seed": 2} for arith's held-out draw.
        iterations: how many RISE iterations (the paper runs 1-2).
        start_from: "previous" trains iteration k from the model of k-1; "base" trains every
            iteration from the base model (with `data.cumulative`, on all data so far).
        seed: base seed; each stage and iteration derives its own from it.
        device: "auto", "cpu" or "cuda", for the engines and training.
        dtype: the engines' dtype ("auto": bfloat16 on a GPU that has it, else float32).
        batch_size: most sequences the engines generate together.
        collect: `rise collect` settings (`collect.CollectConfig`); the run fills in the
            models, folders and task.
        data: `rise build-data` settings (`data.DataConfig`).
        train: `rise train` settings (`train.TrainConfig`), and optionally `launch`: train
            under `accelerate launch` (`launch.LaunchConfig`: num_processes, config_file,
            num_machines, machine_rank, main_process_ip, main_process_port, mixed_precision).
            On resume the number of processes, the config file and the precision must not
            change (they change the global batch or the numbers); the address fields may.
        evaluate: `rise evaluate` settings (`evaluate.EvaluateConfig`), the same for every
            model of the run.
        server: serve each checkpoint with a server command and sample through it
            (`engines.served.ServerConfig`: command, stages, startup_timeout,
            engine_options, replicas, devices_per_replica, replica_devices,
            split_collection); none samples in-process.
        report_to: trackers that get every model's metrics and each iteration's claims
            (`trackers.py`): ["tensorboard"] (to OUT/tensorboard), ["wandb"], or ["none"].
    """

    base_model: str
    out: str
    chat_template: str | None = None
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    iterations: int = 2
    start_from: str = "previous"
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = BATCH_SIZE
    collect: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] | None = None
    report_to: list[str] = field(default_factory=lambda: ["none"])

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        check_report_to("run", self.report_to)
        if self.iterations < 1:
            raise RiseError(f"run: iterations must be at least 1, got {self.iterations}")
        if self.task not in TASKS:
            raise RiseError(f"run: unknown task {self.task!r}; available: {', '.join(TASKS)}")
        get_task(self.task, **self.task_options)  # its options, before any stage starts
        check_device("run", self.device)
        check_at_least("run", 1, batch_size=self.batch_size)
        if self.start_from not in ("previous", "base"):
            raise RiseError(
                f"run: start_from must be 'previous' or 'base', got {self.start_from!r}"
            )
        for section, owned in _RUN_OWNED.items():
            clash = sorted(set(getattr(self, section)) & owned)
            if clash:
                raise RiseError(f"run: {section}.{clash[0]} is set by the run itself; remove it")
        # validate every section now, not when its stage starts
        self.data_config(1)
        self.collect_config(1)
        self.train_config(1)
        if self.launch_config() is not None:  # its `rise train` flags read back the same
            launch.train_flags(self.train_config(1))
        self.evaluate_config(0)
        server = self.server_config()
        teacher = self.collect_config(1).teacher
        if server.split_collection and teacher and not teacher.startswith("openai:"):
            raise RiseError(
                f"run: server.split_collection collects every shard at once, each with its own "
                f"teacher; give an openai: teacher (one server for all), not {teacher!r}, or "
                "remove split_collection"
            )

    @property
    def root(self) -> Path:
        return Path(self.out)

    @staticmethod
    def label_of(iteration: int) -> str:
        """The run's name for the model of `iteration`: base, iter1, iter2, ..."""
        return "base" if iteration == 0 else f"iter{iteration}"

    def folder(self, iteration: int) -> Path:
        """OUT/base or OUT/iterK: the stages of `iteration` (and the evaluation of its model)."""
        return self.root / self.label_of(iteration)

    def model_of(self, iteration: int) -> str:
        """The model iteration `iteration` ends with (0 is the base model)."""
        if iteration == 0:
            return self.base_model
        return str(self.folder(iteration) / "train" / train.MODEL_DIR)

    def collect_config(self, k: int) -> collect.CollectConfig:
        settings = {"seed": self.seed + 1000 * k, **self.collect}
        return build(
            collect.CollectConfig,
            {
                **settings,
                "model": self.model_of(k - 1),
                "chat_template": self.chat_template,
                "out": str(self.folder(k) / "collect"),
                "task": self.task,
                "task_options": self.task_options,
                "device": self.device,
                "dtype": self.dtype,
                "batch_size": self.batch_size,
            },
            "collect",
        )

    def data_config(self, k: int) -> data.BuildDataConfig:
        section = build(DataSection, self.data, "data")
        sources = range(1, k + 1) if section.cumulative else [k]
        return data.BuildDataConfig(
            episodes=[str(self.folder(i) / "collect") for i in sources],
            out=str(self.folder(k) / "data"),
            criteria=section.criteria,
            tau=section.tau,
            dedupe=section.dedupe,
            keep_ratio=section.keep_ratio,
            progress_bonus=section.progress_bonus,
        )

    def train_config(self, k: int) -> train.TrainConfig:
        start = self.model_of(k - 1) if self.start_from == "previous" else self.base_model
        settings = {k: v for k, v in self.train.items() if k != "launch"}
        return build(
            train.TrainConfig,
            {
                "seed": self.seed + k,
                **settings,
                "model": start,
                "chat_template": self.chat_template,
                "data": [str(self.folder(k) / "data")],
                "out": str(self.folder(k) / "train"),
                "device": "cpu" if self.device == "cpu" else "auto",
            },
            "train",
        )

    def launch_config(self) -> launch.LaunchConfig | None:
        """The `train.launch` section: train under `accelerate launch`; None in-process."""
        section = self.train.get("launch")
        return None if section is None else build(launch.LaunchConfig, section, "train.launch")

    def evaluate_config(self, iteration: int) -> evaluate.EvaluateConfig:
        """The evaluation of the model `iteration` ends with (0: the base model)."""
        return build(
            evaluate.EvaluateConfig,
            {
                "seed": self.seed,
                **self.evaluate,
                "model": self.model_of(iteration),
                "chat_template": self.chat_template,
                "out": str(self.folder(iteration) / "eval"),
                "task": self.task,
                "task_options": self.task_options,
                "device": self.device,
                "dtype": self.dtype,
                "batch_size": self.batch_size,
            },
            "evaluate",
        )

    def shard_configs(self, k: int) -> list[collect.CollectConfig]:
        """Iteration k's collection as one shard per server replica (`split_collection`)."""
        whole, n = self.collect_config(k), self.server_config().replicas
        shards = self.folder(k) / "collect-shards"
        return [
            dataclasses.replace(whole, shard=f"{i}/{n}", out=str(shards / str(i))) for i in range(n)
        ]

    def server_config(self) -> ServerConfig:
        return build(ServerConfig, self.server or {}, "server")

    def served(self, iteration: int) -> contextlib.AbstractContextManager[Engine | None]:
        """The served checkpoint of `iteration` (started on first use), or None in-process."""
        server = self.server_config()
        if server.command is None:
            return contextlib.nullcontext(None)
        devices = devices_of_replicas(
            server.replicas,
            server.devices_per_replica,
            server.replica_devices,
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        if server.replicas > 1:
            return ServedReplicas(
                server.command,
                self.model_of(iteration),
                log=self.folder(iteration) / "server.log",
                replicas=server.replicas,
                startup_timeout=server.startup_timeout,
                engine_options=server.engine_options,
                devices=devices,
            )
        return ServedModel(
            server.command,
            self.model_of(iteration),
            log=self.folder(iteration) / "server.log",
            startup_timeout=server.startup_timeout,
            engine_options=server.engine_options,
            env={"CUDA_VISIBLE_DEVICES": devices[0]} if devices[0] is not None else None,
        )


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from a YAML file with `a.b=value` overrides applied, validated."""
    from rise_llm.config import apply_overrides, load_yaml

    try:
        return build(RunConfig, apply_overrides(load_yaml(path), overrides), str(path))
    except RiseError as e:  # a section's error ("collect: turns ...") names the file too
        if str(path) in str(e):
            raise
        raise RiseError(f"{path}: {e}") from None


@dataclass
class RunResult:
    metrics: dict[str, Metrics]
    summary: dict[str, Any]


def _evaluate(config: RunConfig, iteration: int, engine: Engine | None = None) -> Metrics:
    console.rule(f"[bold]{config.label_of(iteration)}: evaluate")
    return evaluate.run(config.evaluate_config(iteration), engine).metrics


def run_settings(config: RunConfig) -> dict[str, Any]:
    """What config.json records and a resumed run must match."""
    settings = dataclasses.asdict(config)
    settings.pop("out")
    settings.pop("report_to")  # where results go, not what they are
    return settings


def _check_settings(config: RunConfig) -> None:
    """Refuse a run folder that holds a run with other settings (the address of a launch, the
    servers' count, devices and client options may change)."""
    free = (
        *RESUME_FREE,
        *(f"train.launch.{name}" for name in launch.ADDRESS),
        *(f"server.{name}" for name in SERVER_RESUME_FREE),
    )
    check_settings(config.root, run_settings(config), "a run", may_grow=("iterations",), free=free)


def run(config: RunConfig) -> RunResult:
    """Run (or resume) all iterations and write the summary, table and plot; on machine h > 0
    of a several-machine `train.launch`, only join each iteration's training (`join`)."""
    root = config.root
    check_out(root, "run")
    launched = config.launch_config()
    if launched is not None and launched.rank > 0:
        join(config, launched)
        return RunResult(metrics={}, summary={})
    settings = run_settings(config)
    _check_settings(config)
    stages = config.server_config().stages
    metrics = {}
    for m in range(config.iterations + 1):  # model m: evaluate it, collect iteration m+1 with it
        with config.served(m) as served:
            engine = served if "evaluate" in stages else None
            metrics[config.label_of(m)] = _evaluate(config, m, engine)
            if m == 0:  # once the base is evaluated: a run that failed before (a bad model
                # path, say) leaves no record that its corrected rerun would have to match
                write_run_record(root, settings)
            if m == config.iterations:
                break
            k = m + 1
            console.rule(f"[bold]iteration {k}: collect with {config.model_of(m)}")
            _collect(config, k, served if "collect" in stages else None)
        console.rule(f"[bold]iteration {k}: build data")
        data.build(config.data_config(k))
        console.rule(f"[bold]iteration {k}: train")
        if launched is None:
            train.run(config.train_config(k))
        else:
            launch.run(config.train_config(k), launched)
    summary = write_summary(config, metrics)
    return RunResult(metrics=metrics, summary=summary)


POLL = 2.0
"""Seconds between two looks of machine h > 0 for the data machine 0 builds."""
STILL_WAITING = 600.0
"""Seconds between two "still waiting" lines of machine h > 0 (machine 0's collection may take
hours, so it waits without a limit, but says so: a machine 0 that died shows as no progress)."""


def join(config: RunConfig, launched: launch.LaunchConfig) -> None:
    """Machine h > 0 of a several-machine run: its part of every iteration's training.

    Iteration k's training starts once machine 0 has built its data (OUT/iterK/data with
    data.jsonl), however long collection takes; a finished training (its train.json) is skipped
    without launching, as on machine 0. The run's config.json, once machine 0 has written it,
    must match this machine's config (its address fields aside), so both train the same thing.
    Nothing but OUT/iterK/train/launch-nodeH.log is written here; the evaluations, the summary
    and the report are machine 0's.
    """
    where = f"machine {launched.rank} of {launched.machines}"
    for k in range(1, config.iterations + 1):
        console.rule(f"[bold]iteration {k}: train ({where})")
        wanted = config.data_config(k)
        since, said = time.monotonic(), None
        while not data.built(wanted):
            _check_settings(config)  # a machine given another config fails before it waits
            waited = time.monotonic() - since
            if said is None:
                message = f"{where}: waiting for machine 0 to build {wanted.out}"
                console.print(message, soft_wrap=True)
                said = waited
            elif waited - said >= STILL_WAITING:
                console.print(
                    f"{where}: still waiting for machine 0 to build {wanted.out} "
                    f"({waited / 60:.0f} min; is machine 0's rise run still going?)",
                    soft_wrap=True,
                )
                said = waited
            time.sleep(POLL)
        _check_settings(config)
        launch.run(config.train_config(k), launched)
    console.print(f"{where}: all {config.iterations} trainings done; machine 0 evaluates them")


def _collect(config: RunConfig, k: int, served: Engine | None) -> None:
    """Iteration k's collection: one `rise collect` (through all replicas, when served), or with
    `server.split_collection` one shard per replica, collected at once, then merged."""
    if not config.server_config().split_collection:
        collect.run(config.collect_config(k), served)
        return
    out = Path(config.collect_config(k).out)
    if (out / merge.MERGE_RECORD).exists():  # written last: the merge finished
        console.print(f"collect: {out} already holds the merged shards", soft_wrap=True)
        return
    assert isinstance(served, ServedReplicas)
    shards = config.shard_configs(k)
    left = [shard for shard in shards if collect.pending(shard)]
    if left:
        # started here, in the main thread, where Ctrl-C and SIGTERM stop the servers
        engines = dict(zip((s.shard for s in shards), served.replica_engines(), strict=True))
        console.print(
            f"collect: {len(left)} of {len(shards)} shards to collect, one per replica, at once"
        )
        failed = _at_once(
            {shard.shard: (lambda s=shard: collect.run(s, engines[s.shard])) for shard in left}
        )
        for shard in (s for s in left if s.shard in failed):
            # its replica died, most likely: it resumes through all of them (the dead one is
            # found down at its first request), with the same samples (each request's seed is
            # its problem's and turn's, whichever replica answers)
            console.print(
                f"collect: shard {shard.shard} failed ({_one_line(failed[shard.shard])}); "
                "resuming it through the replicas that are up",
                soft_wrap=True,
            )
            try:
                collect.run(shard, served)
            except RiseError as e:
                raise RiseError(
                    f"collect shard {shard.shard}: {e} (the other shards are kept; rerun to resume)"
                ) from None
    episodes = merge.run(merge.MergeConfig(shards=[s.out for s in shards], out=str(out)))
    collect.print_collection_summary(episodes)


def _at_once(jobs: dict[str, Callable[[], object]]) -> dict[str, RiseError]:
    """Run the jobs (by shard) in threads at once, without progress bars; once all have ended,
    return, by shard, the RiseError of each job that raised one (a lost server, say), or raise
    the first other failure. The threads are daemons: on Ctrl-C or SIGTERM the main thread leaves
    at once and stops the servers, and the shards resume on a rerun."""
    failed: dict[str, BaseException] = {}

    def work(name: str, job: Callable[[], object]) -> None:
        try:
            with without_bars():
                job()
        except BaseException as e:  # reported by the main thread below
            failed[name] = e

    threads = [
        threading.Thread(target=work, args=item, name=f"shard {item[0]}", daemon=True)
        for item in jobs.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in failed.values():
        if not isinstance(error, RiseError):
            raise error
    return cast(dict[str, RiseError], failed)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def share_base_evaluation(source: RunConfig, target: RunConfig) -> None:
    """Give run `target` the finished base evaluation of run `source` (the same model on the
    same problems with the same settings), so recipes compared against one base share it."""
    theirs, mine = source.evaluate_config(0), target.evaluate_config(0)
    if theirs.model != mine.model:
        raise RiseError(
            f"run: {target.out} starts from {target.base_model}, not {source.base_model}; "
            "only runs from the same base model can share its evaluation"
        )
    done, shared = Path(theirs.out), Path(mine.out)
    if shared.exists() or not (done / "metrics.json").exists():
        return
    if dataclasses.replace(mine, out=theirs.out) != theirs:
        raise RiseError(
            f"run: {target.out} evaluates with other settings than {source.out} "
            "(task, task_options, evaluate or seed); it cannot share the base evaluation"
        )
    shutil.copytree(done, shared)


def write_summary(config: RunConfig, metrics: dict[str, Metrics]) -> dict[str, Any]:
    """summary.json (label -> metrics.json content), comparisons.json, the tables and the plot."""
    root = config.root
    flat = {label: m.to_dict() for label, m in metrics.items()}
    (root / "summary.json").write_text(json.dumps(flat, indent=2) + "\n")
    print_metrics(flat)
    turns = metrics[config.label_of(0)].turns

    def episodes(iteration: int) -> list[Episode]:
        return read_jsonl(config.folder(iteration) / "eval" / "episodes.jsonl", Episode)

    base = episodes(0)
    comparisons, measured = {}, {}
    for k in range(1, len(metrics)):
        label, trained = config.label_of(k), episodes(k)
        claims = measured[label] = rise_claims(base, trained, turns, config.seed)
        comparisons[f"{label}_vs_base"] = [
            dataclasses.asdict(c) | {"holds": c.holds} for c in claims
        ]
        stdout.print(claims_table(claims, f"{label} against base (paired bootstrap, 95%)"))
    (root / "comparisons.json").write_text(json.dumps(comparisons, indent=2) + "\n")
    log_evaluations(config.report_to, root, metrics, measured)
    plot_accuracy_by_turn(flat, root / "accuracy_by_turn.png")
    console.print(f"wrote {root / 'summary.json'}, comparisons.json and accuracy_by_turn.png")
    report_html.run(report_html.ReportConfig(paths=[str(root)], seed=config.seed))
    return flat
