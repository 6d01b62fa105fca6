"""Run model-written Python programs in a sandbox, with limits, many at a time.

A code task's verifier runs what the model wrote; on a user's machine that must not reach the
network, the run folder, the home folder or the rest of the system, and must not outlive its
limits. Rather than a sandbox of our own, each program runs under bubblewrap (`bwrap`, the
sandbox Flatpak uses; `sandbox_process.py` starts and watches each program) as main.py in a
private work folder, with the standard library of the interpreter running rise-llm. CPU time,
memory, processes and file size are rlimits set inside the sandbox; wall time and output are
watched here, and every process of the program is killed when either is reached. `run_many` runs
programs in a pool of threads, each waiting on one process.

Where bwrap is missing, `Sandbox` refuses to run code unless `allow_unsandboxed=True`: then the
program runs as a plain subprocess in a temporary folder with the same limits and no isolation.

    >>> sandbox = Sandbox(Limits(wall_seconds=2))                    # doctest: +SKIP
    >>> sandbox.run("print(input())", stdin="hi").stdout             # doctest: +SKIP
    'hi\\n'
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

from rise_llm.errors import RiseError
from rise_llm.sandbox_process import bwrap_command, communicate, environment, launcher, system_tasks

ROOT_UIDS = range(1_000_000_000, 1_000_000_000 + 2**24)
"""Where a root host picks a fresh uid for each program: far above user and subuid ranges."""


@dataclass(frozen=True)
class Limits:
    """What one program may use; reaching a limit ends it with that status."""

    wall_seconds: float = 5.0
    """The whole process group is killed at this wall time (status "timeout")."""
    cpu_seconds: int = 5
    """RLIMIT_CPU: SIGXCPU at this much CPU time (status "cpu")."""
    memory_mb: int = 1024
    """RLIMIT_AS: allocations beyond it fail, Python raises MemoryError (status "memory").
    Each process's own: a program of `processes` processes may use that many times more."""
    processes: int = 32
    """RLIMIT_NPROC: the most processes and threads the program may have at once."""
    output_bytes: int = 64_000
    """stdout+stderr kept; printing more kills the program (status "output")."""
    file_mb: int = 16
    """RLIMIT_FSIZE, and the size of the private work folder (and of /dev/shm)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            whole = field.name != "wall_seconds"  # rlimits and byte counts are integers
            if not isinstance(value, int if whole else (int, float)) or not value > 0:
                kind = "a positive whole number" if whole else "positive"
                raise RiseError(f"sandbox: {field.name} must be {kind}, got {value!r}")


@dataclass
class Execution:
    """How one program ended, with what it printed (at most `Limits.output_bytes` together)."""

    status: str
    """"ok" (exit 0), "error" (non-zero exit), "timeout", "cpu", "memory", "output", "killed"."""
    exit_code: int | None
    """The exit status; None when a signal (or we, at a limit) ended it. Under bwrap a status
    above 128 reads as the signal 128 + N, as a shell reports it (bwrap gives no other way)."""
    stdout: str
    stderr: str
    seconds: float
    """Wall time from start to end."""
    signal: int | None = None
    """The signal that ended it, for status "killed" and "cpu"."""
    limits: Limits | None = None
    """The limits it ran under, named by `summary`."""

    def summary(self) -> str:
        """One line saying how the program ended, fit for feedback to a model."""
        limits = self.limits or Limits()
        if self.status == "timeout":
            return f"timed out after {limits.wall_seconds:g} s"
        if self.status == "cpu":
            return f"CPU time limit ({limits.cpu_seconds} s) exceeded"
        if self.status == "memory":
            return f"memory limit ({limits.memory_mb} MB) exceeded"
        if self.status == "output":
            return f"printed more than {limits.output_bytes} bytes of output"
        if self.status == "killed":
            try:
                name = f" ({signal.Signals(self.signal).name})"
            except ValueError:
                name = ""
            return f"killed by signal {self.signal}{name}"
        return f"exited with code {self.exit_code}"


def bwrap_path() -> str | None:
    """bubblewrap's executable on PATH, or None."""
    return shutil.which("bwrap")


class Sandbox:
    """Runs Python programs under bubblewrap (or, if allowed, unsandboxed) with `limits`.

    Raises RiseError when bwrap is missing or cannot create a sandbox here and
    `allow_unsandboxed` is False. `concurrency` bounds `run_many`'s pool (default: CPU count).
    """

    def __init__(
        self,
        limits: Limits = Limits(),
        allow_unsandboxed: bool = False,
        concurrency: int | None = None,
    ):
        if concurrency is not None and concurrency < 1:
            raise RiseError(f"sandbox: concurrency must be at least 1, got {concurrency}")
        self.limits = limits
        self.concurrency = concurrency or os.cpu_count() or 1
        self._python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self._root = os.geteuid() == 0
        self._uids_in_use: set[int] = set()
        self._random = random.SystemRandom()  # not the global stream a user may have seeded
        self._lock = threading.Lock()
        self._bwrap = bwrap_path()
        why = None
        if self._bwrap is None:
            why = "bubblewrap (bwrap) is not installed"
        else:
            self.limits = replace(limits, wall_seconds=max(limits.wall_seconds, 30.0))
            check = self.run("pass")  # a busy machine may start it slowly: not a failure
            self.limits = limits
            if check.status != "ok":
                last = (check.stderr.strip().splitlines() or ["no message"])[-1]
                why = f"bubblewrap cannot create a sandbox here ({last})"
        if why is None:
            return
        self._bwrap = None
        advice = (
            "install it (Debian/Ubuntu package `bubblewrap`)"
            if "not installed" in why
            else "allow unprivileged user namespaces or run as root"
        )
        if not allow_unsandboxed:
            raise RiseError(
                f"sandbox: {why}, so model-written code cannot run safely: {advice}, or pass "
                "--allow-unsandboxed-code (config allow_unsandboxed_code: true) to run it "
                "without isolation"
            )
        warnings.warn(f"sandbox: {why}; running model-written code WITHOUT isolation", stacklevel=2)

    @property
    def isolated(self) -> bool:
        """True when programs run under bubblewrap."""
        return self._bwrap is not None

    def run(self, source: str, stdin: str = "") -> Execution:
        """Run `source` as main.py in a fresh private work folder, `stdin` on its standard input."""
        start = time.monotonic()
        with tempfile.TemporaryFile() as source_file, tempfile.TemporaryFile() as stdin_file:
            # a lone surrogate reaches the program as the invalid UTF-8 it is
            source_file.write(source.encode(errors="surrogatepass"))
            stdin_file.write(stdin.encode(errors="surrogatepass"))
            source_file.seek(0)
            stdin_file.seek(0)
            if self.isolated:
                stdout, stderr, limit_hit, code = self._run_sandboxed(source_file, stdin_file)
            else:
                stdout, stderr, limit_hit, code = self._run_unsandboxed(source_file, stdin_file)
        seconds = time.monotonic() - start
        out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        if limit_hit:
            return Execution(limit_hit, None, out, err, seconds, None, self.limits)
        # a negative code is a signal, as subprocess reports it
        sig, code = (-code, None) if code < 0 else (None, code)
        return Execution(_status(code, sig, err), code, out, err, seconds, sig, self.limits)

    def run_many(
        self, sources: Sequence[str], stdins: Sequence[str] | None = None
    ) -> list[Execution]:
        """Run every source (with its stdin, default empty), `concurrency` at a time; same order."""
        stdins = [""] * len(sources) if stdins is None else list(stdins)
        if len(stdins) != len(sources):
            raise RiseError(f"sandbox: {len(sources)} sources but {len(stdins)} stdins")
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            return list(pool.map(self.run, sources, stdins))
        finally:  # on Ctrl-C, start no more programs; those running end within wall_seconds
            pool.shutdown(cancel_futures=True)

    def _take_uid(self) -> int:
        """A uid no other program of this Sandbox is running as (processes count per uid)."""
        with self._lock:
            while (uid := self._random.choice(ROOT_UIDS)) in self._uids_in_use:
                pass
            self._uids_in_use.add(uid)
            return uid

    def _run_sandboxed(self, source_file, stdin_file) -> tuple[bytes, bytes, str | None, int]:
        uid = self._take_uid() if self._root else None
        info_read, info_write = os.pipe()
        try:
            proc = subprocess.Popen(
                bwrap_command(
                    self._bwrap, self._python, self.limits, source_file.fileno(), info_write, uid
                ),
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(source_file.fileno(), info_write),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                start_new_session=True,
            )
            os.close(info_write)
            info_write = -1
            stdout, stderr, limit_hit = communicate(proc, self.limits, info_read)
        finally:
            os.close(info_read)
            if info_write >= 0:
                os.close(info_write)
            if uid is not None:
                with self._lock:
                    self._uids_in_use.discard(uid)
        # bwrap exits with 128 + the signal that ended the program, as shells report it
        code = proc.returncode
        return stdout, stderr, limit_hit, 128 - code if code > 128 else code

    def _run_unsandboxed(self, source_file, stdin_file) -> tuple[bytes, bytes, str | None, int]:
        # RLIMIT_NPROC counts every process of the user here, and never binds root: allow the
        # system's current task count plus the limit, which still stops a fork bomb's growth
        processes = 0 if self._root else system_tasks() + self.limits.processes
        with tempfile.TemporaryDirectory(prefix="rise-sandbox-") as work:
            with open(os.path.join(work, "main.py"), "wb") as main:
                shutil.copyfileobj(source_file, main)
            proc = subprocess.Popen(
                launcher(self._python, self.limits, processes, None),
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work,
                env=environment(work),
                start_new_session=True,
            )
            stdout, stderr, limit_hit = communicate(proc, self.limits)
        return stdout, stderr, limit_hit, proc.returncode


def _status(code: int | None, sig: int | None, stderr: str) -> str:
    if code == 0:
        return "ok"
    if sig == signal.SIGXCPU:
        return "cpu"
    lines = stderr.strip().splitlines()
    if lines and lines[-1].startswith("MemoryError"):
        return "memory"
    return "killed" if sig is not None else "error"
