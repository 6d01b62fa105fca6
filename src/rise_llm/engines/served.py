"""A checkpoint behind its own server process (vLLM, SGLang, `rise serve`), sampled through the
openai engine: how `rise run` collects with a server (its `server:` section).

The server command starts at the first `generate`, so a resumed run whose stages are already
done starts none. It runs in its own process group with its output in a log file, is given
`startup_timeout` seconds to answer `GET /v1/models`, and is stopped when the `with` block ends,
however it ends: SIGTERM to the whole group, SIGKILL after a grace period. While it runs, a
SIGTERM to this process ends the block like Ctrl-C does, so the server is not left behind. A
SIGKILL cannot be caught: the server runs under `rise_llm.parent_watch`, which ends its group
when this process is gone. `OUT/.../server.pid` names the group while it runs, and the next
start stops any server still left in it (one whose watcher was killed too).

With `replicas: N` (N > 1), `ServedReplicas` starts N such servers of the same checkpoint at
once, each on its own port with its own log (`server-1.log`, ...) and, on GPUs, its own devices
(`CUDA_VISIBLE_DEVICES` from `devices_per_replica` or `replica_devices`), and samples from all
of them through one openai engine over their URLs: requests go to the least busy replica, and a
replica that dies hands its requests to the others (`engines/openai.py`). With
`split_collection`, a run's collection is instead one shard per replica, each through an engine
of its own replica (`ServedReplicas.replica_engines`, `pipeline.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rise_llm.config import build
from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.engines.openai import OpenAIEngine, OpenAIOptions
from rise_llm.errors import RiseError
from rise_llm.progress import console
from rise_llm.records import Message

STAGES = ("collect", "evaluate")
_FIELDS = {"model", "port"}


SERVER_RESUME_FREE = (
    "replicas",
    "devices_per_replica",
    "replica_devices",
    "startup_timeout",
    "engine_options",
)
"""`ServerConfig` fields a resumed run may change: how many servers sample, on which devices,
and how the client talks to them, not what they sample (every request's seed is its problem's
and turn's, whichever replica answers); with `split_collection`, a shard collected with another
count refuses to resume on its own."""


@dataclass
class ServerConfig:
    """The `server:` section of a run config: serve each checkpoint and sample through it.

    Args:
        command: the server command, run without a shell, with {model} (the checkpoint) and
            {port} (a free port on 127.0.0.1) filled in, e.g. `vllm serve {model} --port
            {port}` or `rise serve {model} --port {port}`; none samples in-process.
        stages: the stages that sample through the server (collect, evaluate).
        startup_timeout: seconds to wait for the server to answer GET /v1/models.
        engine_options: options of the openai engine that talks to it (max_concurrency,
            timeout, max_retries, api_key_env); with replicas, the concurrency is over all.
        replicas: how many servers of each checkpoint to start, each on its own port; the
            stages sample from all of them, the least busy first, and carry on while one
            is left (`engines/openai.py`).
        devices_per_replica: GPUs per replica: replica r gets devices r*k .. r*k+k-1 in its
            CUDA_VISIBLE_DEVICES (counted within this process's CUDA_VISIBLE_DEVICES if set).
        replica_devices: or each replica's CUDA_VISIBLE_DEVICES spelled out, e.g.
            ["0,1", "2,3"]; neither (on CPU) leaves the variable as it is.
        split_collection: with replicas N > 1, a run collects its problems as N shards
            (`rise collect --shard I/N`), shard I from replica I alone, in threads at once,
            into OUT/iterK/collect-shards/I, and joins them with `rise merge` into
            OUT/iterK/collect: the same episodes as one collection over all replicas. A
            shard whose replica dies resumes through the replicas still up.
    """

    command: str | None = None
    stages: list[str] = field(default_factory=lambda: ["collect"])
    startup_timeout: float = 900.0
    engine_options: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    devices_per_replica: int | None = None
    replica_devices: list[str] | None = None
    split_collection: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise RiseError(f"server.stages: unknown stage {unknown[0]!r}; choose from {STAGES}")
        if self.startup_timeout <= 0:
            raise RiseError(f"server.startup_timeout must be positive, got {self.startup_timeout}")
        build(OpenAIOptions, self.engine_options, "server.engine_options")
        if self.replicas < 1:
            raise RiseError(f"server.replicas must be at least 1, got {self.replicas}")
        if self.devices_per_replica is not None and self.replica_devices is not None:
            raise RiseError("server: set devices_per_replica or replica_devices, not both")
        if self.devices_per_replica is not None and self.devices_per_replica < 1:
            raise RiseError(
                f"server.devices_per_replica must be at least 1, got {self.devices_per_replica}"
            )
        if self.replica_devices is not None and len(self.replica_devices) != self.replicas:
            raise RiseError(
                f"server.replica_devices lists {len(self.replica_devices)} entries for "
                f"{self.replicas} replicas; give one CUDA_VISIBLE_DEVICES value per replica"
            )
        if self.split_collection and (
            self.command is None or self.replicas < 2 or "collect" not in self.stages
        ):
            raise RiseError(
                "server.split_collection splits the collection over the replicas: it needs a "
                "command, replicas >= 2 and collect in server.stages; remove it or set them"
            )
        if self.command is not None:
            used = {name for _, name, _, _ in string.Formatter().parse(self.command) if name}
            if used - _FIELDS or "port" not in used or "model" not in used:
                raise RiseError(
                    f"server.command {self.command!r} must use {{model}} and {{port}} "
                    "(and no other {...} field)"
                )


def devices_of_replicas(
    replicas: int,
    devices_per_replica: int | None = None,
    replica_devices: Sequence[str] | None = None,
    visible: str | None = None,
) -> list[str | None]:
    """Each replica's CUDA_VISIBLE_DEVICES (None: leave it as it is).

    `visible` is this process's CUDA_VISIBLE_DEVICES: replica r gets its devices r*k .. r*k+k-1.

    >>> devices_of_replicas(2, devices_per_replica=2)
    ['0,1', '2,3']
    >>> devices_of_replicas(2, devices_per_replica=1, visible="4,5,6")
    ['4', '5']
    >>> devices_of_replicas(2)
    [None, None]
    """
    if replica_devices is not None:
        return list(replica_devices)
    if devices_per_replica is None:
        return [None] * replicas
    k = devices_per_replica
    pool = visible.split(",") if visible else [str(d) for d in range(replicas * k)]
    if len(pool) < replicas * k:
        raise RiseError(
            f"server: {replicas} replicas x {k} devices need {replicas * k} GPUs, but "
            f"CUDA_VISIBLE_DEVICES={visible} names {len(pool)}"
        )
    return [",".join(pool[r * k : (r + 1) * k]) for r in range(replicas)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedModel:
    """The engine protocol over `command` serving `model`, started on first use.

    Use it as a context manager: leaving the block stops the server.
    """

    def __init__(
        self,
        command: str,
        model: str,
        log: str | Path,
        startup_timeout: float = 900.0,
        engine_options: dict[str, Any] | None = None,
        grace: float = 20.0,
        name: str = "server",
        env: dict[str, str] | None = None,
    ):
        self.name = name  # how its console lines start ("server 2/4" for a replica)
        self.env = dict(env or {})  # set for the server command (CUDA_VISIBLE_DEVICES)
        self.command = command
        self.model = model
        self.log = Path(log)
        self.startup_timeout = startup_timeout
        self.options = build(OpenAIOptions, dict(engine_options or {}), "engine_options")
        self.grace = grace
        self.process: subprocess.Popen | None = None
        self.engine: OpenAIEngine | None = None
        self._previous_handler: Any = None

    @property
    def pid_file(self) -> Path:
        """Beside the log: the process group of the server while it runs (`stop_stale`)."""
        return self.log.with_suffix(".pid")

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        params: SamplingParams,
        desc: str = "generate",
        keys: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        if self.engine is None:
            self.start()
        assert self.engine is not None
        return self.engine.generate(conversations, n, params, desc, keys)

    def start(self) -> None:
        """Start the server and wait until it lists a model; stop it again on any failure."""
        self._catch_sigterm()
        try:
            model_id, base_url = self.launch()
        except BaseException:
            self._restore_sigterm()
            raise
        self.engine = OpenAIEngine(model_id, base_url, self.options)

    def launch(self) -> tuple[str, str]:
        """Start the server; (model id, base URL) once it lists a model. Stopped on failure."""
        port = free_port()
        argv = [part.format(model=self.model, port=port) for part in shlex.split(self.command)]
        if shutil.which(argv[0]) is None:
            raise RiseError(f"server.command: cannot run {argv[0]!r}: no such program")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        stop_stale(self.pid_file)
        where = " ".join(f"{k}={v}" for k, v in self.env.items())
        console.print(
            f"{self.name}: {where + ' ' if where else ''}{shlex.join(argv)} (log: {self.log})",
            soft_wrap=True,
        )
        watched = [sys.executable, "-m", "rise_llm.parent_watch", str(os.getpid()), *argv]
        with self.log.open("ab") as log:
            try:
                self.process = subprocess.Popen(
                    watched,  # ends with this process, even one killed by SIGKILL
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() ends all of it
                    env={**os.environ, **self.env} if self.env else None,
                )
            except OSError as e:
                self._restore_sigterm()
                raise RiseError(f"server.command: cannot run {argv[0]!r}: {e.strerror}") from None
        self.pid_file.write_text(json.dumps({"group": self.process.pid, "argv": argv}) + "\n")
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            model_id = self._wait(base_url)
        except BaseException:
            self.stop()
            raise
        console.print(f"{self.name}: ready at {base_url} serving {model_id!r}", soft_wrap=True)
        return model_id, base_url

    def _wait(self, base_url: str) -> str:
        """The first model id of GET /v1/models, polled until it answers."""
        deadline = time.monotonic() + self.startup_timeout
        request = urllib.request.Request(f"{base_url}/models")
        key = os.environ.get(self.options.api_key_env)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        assert self.process is not None
        while True:
            status = self.process.poll()
            if status is not None:
                raise RiseError(
                    f"{self.name} command exited with status {status} before answering; "
                    f"see {self.log}: {_last_line(self.log)}"
                )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return json.load(response)["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError):
                pass  # not listening yet (URLError and timeouts are OSErrors)
            if time.monotonic() > deadline:
                raise RiseError(
                    f"{self.name} did not answer {base_url}/models within "
                    f"{self.startup_timeout:g} s (server.startup_timeout); see {self.log}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace` seconds."""
        process, self.process, engine, self.engine = self.process, None, self.engine, None
        if process is not None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(self.grace)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
            _signal_group(process, signal.SIGKILL)  # children that outlived the leader
            self.pid_file.unlink(missing_ok=True)
            traffic = f"; {engine.stats.summary()}" if engine else ""
            console.print(f"{self.name}: stopped{traffic}", soft_wrap=True)
        self._restore_sigterm()

    def _catch_sigterm(self) -> None:
        self._previous_handler = _catch_sigterm()

    def _restore_sigterm(self) -> None:
        _restore_sigterm(self._previous_handler)
        self._previous_handler = None


class ServedReplicas:
    """The engine protocol over `replicas` servers of `model`, all started on first use, each
    with its own port, log (`server-1.log`, ... beside `log`) and devices; sampled through one
    openai engine over all their URLs (least busy first; a replica that dies hands its
    requests to the others). Use it as a context manager: leaving the block stops them all.
    """

    def __init__(
        self,
        command: str,
        model: str,
        log: str | Path,
        replicas: int,
        startup_timeout: float = 900.0,
        engine_options: dict[str, Any] | None = None,
        devices: Sequence[str | None] | None = None,
        grace: float = 20.0,
    ):
        log = Path(log)
        devices = list(devices) if devices is not None else [None] * replicas
        if len(devices) != replicas:
            raise RiseError(f"{len(devices)} device sets for {replicas} replicas")
        self.options = build(OpenAIOptions, dict(engine_options or {}), "engine_options")
        self.members = [
            ServedModel(
                command,
                model,
                log.with_name(f"{log.stem}-{r + 1}{log.suffix}"),
                startup_timeout,
                engine_options,
                grace,
                name=f"server {r + 1}/{replicas}",
                env={"CUDA_VISIBLE_DEVICES": d} if d is not None else None,
            )
            for r, d in enumerate(devices)
        ]
        self.engine: OpenAIEngine | None = None
        self._previous_handler: Any = None

    @property
    def logs(self) -> list[Path]:
        return [member.log for member in self.members]

    def __enter__(self) -> ServedReplicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        params: SamplingParams,
        desc: str = "generate",
        keys: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        if self.engine is None:
            self.start()
        assert self.engine is not None
        return self.engine.generate(conversations, n, params, desc, keys)

    def replica_engines(self) -> list[OpenAIEngine]:
        """One openai engine per replica, each sending only to its own server (the shards of a
        split collection), started here if they are not running yet; the concurrency of
        `engine_options` is shared out between them. Each replica reports its own traffic
        when it stops."""
        if self.engine is None:
            self.start()
        assert self.engine is not None
        share = max(1, -(-self.options.max_concurrency // len(self.members)))
        options = dataclasses.replace(self.options, max_concurrency=share)
        for member, url in zip(self.members, self.engine.base_urls, strict=True):
            member.engine = OpenAIEngine(self.engine.model, url, options)
        return [member.engine for member in self.members]

    def start(self) -> None:
        """Start every replica at once and wait for all; stop them all on any failure."""
        self._previous_handler = _catch_sigterm()  # the members start in threads: caught here
        try:
            with ThreadPoolExecutor(len(self.members)) as pool:
                launched = [pool.submit(member.launch) for member in self.members]
                answers = [job.result() for job in launched]  # the first failure, if any
        except BaseException:
            self.stop()
            raise
        models = {model_id for model_id, _ in answers}
        if len(models) > 1:
            self.stop()
            raise RiseError(f"the server replicas serve different models: {sorted(models)}")
        self.engine = OpenAIEngine(models.pop(), [url for _, url in answers], self.options)

    def stop(self) -> None:
        """Stop every replica (at once), then report the traffic of each."""
        engine, self.engine = self.engine, None
        with ThreadPoolExecutor(len(self.members)) as pool:
            list(pool.map(ServedModel.stop, self.members))
        if engine is not None:
            console.print(f"servers: stopped; {engine.stats.summary()}", soft_wrap=True)
        _restore_sigterm(self._previous_handler)
        self._previous_handler = None


def stop_stale(pid_file: Path) -> None:
    """Kill what is left of the server that `pid_file` names, if any process of its group still
    runs one of its two command lines (the server's, or the watcher's around it): a server
    whose watcher was killed too (by an OOM killer, say) must not hold the port and the memory
    of the next one. A reused process id whose command differs is left alone."""
    if not pid_file.exists():
        return
    try:
        record = json.loads(pid_file.read_text())
        group, argv = int(record["group"]), list(record["argv"])
    except (ValueError, KeyError, TypeError):
        pid_file.unlink()
        return
    ours = ("\0".join(argv), "rise_llm.parent_watch")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == group and any(c in command for c in ours):
            console.print(f"server: stopping a server left by an earlier run (group {group})")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            break
    pid_file.unlink()


def _catch_sigterm() -> Any:
    """Turn SIGTERM into SystemExit while servers run, so `with` blocks unwind; the handler
    it replaced (None off the main thread, where signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, leave)


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, sig)


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][-300:] if lines else "(no output)"
