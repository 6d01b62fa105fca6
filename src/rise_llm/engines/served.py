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
"""

from __future__ import annotations

import contextlib
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
            timeout, max_retries, api_key_env).
    """

    command: str | None = None
    stages: list[str] = field(default_factory=lambda: ["collect"])
    startup_timeout: float = 900.0
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise RiseError(f"server.stages: unknown stage {unknown[0]!r}; choose from {STAGES}")
        if self.startup_timeout <= 0:
            raise RiseError(f"server.startup_timeout must be positive, got {self.startup_timeout}")
        build(OpenAIOptions, self.engine_options, "server.engine_options")
        if self.command is not None:
            used = {name for _, name, _, _ in string.Formatter().parse(self.command) if name}
            if used - _FIELDS or "port" not in used or "model" not in used:
                raise RiseError(
                    f"server.command {self.command!r} must use {{model}} and {{port}} "
                    "(and no other {...} field)"
                )


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
    ):
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
        port = free_port()
        argv = [part.format(model=self.model, port=port) for part in shlex.split(self.command)]
        if shutil.which(argv[0]) is None:
            raise RiseError(f"server.command: cannot run {argv[0]!r}: no such program")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        stop_stale(self.pid_file)
        console.print(f"server: {shlex.join(argv)} (log: {self.log})", soft_wrap=True)
        self._catch_sigterm()
        watched = [sys.executable, "-m", "rise_llm.parent_watch", str(os.getpid()), *argv]
        with self.log.open("ab") as log:
            try:
                self.process = subprocess.Popen(
                    watched,  # ends with this process, even one killed by SIGKILL
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() ends all of it
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
        self.engine = OpenAIEngine(model_id, base_url, self.options)
        console.print(f"server: ready at {base_url} serving {model_id!r}", soft_wrap=True)

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
                    f"server command exited with status {status} before answering; "
                    f"see {self.log}: {_last_line(self.log)}"
                )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return json.load(response)["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError):
                pass  # not listening yet (URLError and timeouts are OSErrors)
            if time.monotonic() > deadline:
                raise RiseError(
                    f"server did not answer {base_url}/models within {self.startup_timeout:g} s "
                    f"(server.startup_timeout); see {self.log}"
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
            console.print(f"server: stopped{traffic}", soft_wrap=True)
        self._restore_sigterm()

    def _catch_sigterm(self) -> None:
        """Turn SIGTERM into SystemExit while the server runs, so `with` blocks unwind."""
        if threading.current_thread() is not threading.main_thread():
            return

        def leave(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        self._previous_handler = signal.signal(signal.SIGTERM, leave)

    def _restore_sigterm(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
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


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, sig)


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][-300:] if lines else "(no output)"
