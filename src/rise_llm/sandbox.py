"""Run model-written Python programs under bubblewrap, with limits, many at a time.

A code task's verifier runs what the model wrote; on a user's machine that must not reach the
network, the run folder, the home folder or the rest of the system, and must not outlive its
limits. Rather than a sandbox of our own, each program runs under bubblewrap (`bwrap`, the
sandbox Flatpak uses): new user, pid, network, ipc and uts namespaces, a read-only view of the
system and of the Python interpreter running rise-llm, and a private size-limited tmpfs as its
work folder. A tiny launcher inside the sandbox sets the resource limits (CPU time, address
space, processes, file size) and then execs `python3 -I main.py`; the wall-time and output
limits are ours: the whole process group is killed when either is reached.

Processes are limited by RLIMIT_NPROC, which never binds uid 0 of the host. So when rise-llm
runs as root, bwrap runs without a user namespace (real root, every capability dropped but
setuid/setgid) and the launcher drops to an unused uid of its own before running the program;
otherwise bwrap's user namespace counts the program's processes on their own.

Where bwrap is missing, `Sandbox` refuses to run code unless `allow_unsandboxed=True`: then the
program runs as a plain subprocess in a temporary folder with the same limits and no isolation.

    >>> sandbox = Sandbox(Limits(wall_seconds=2))                    # doctest: +SKIP
    >>> sandbox.run("print(input())", stdin="hi").stdout             # doctest: +SKIP
    'hi\\n'
"""

from __future__ import annotations

import contextlib
import os
import random
import selectors
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
from dataclasses import dataclass, fields

from rise_llm.errors import RiseError

WORK = "/sandbox"
"""The program's private work folder inside the sandbox (a tmpfs; also its HOME and TMPDIR)."""

SYSTEM = ("/usr", "/etc")
"""Bound read-only into the sandbox; /bin, /lib* and /sbin follow as links or binds."""

ROOT_UIDS = range(1_000_000_000, 1_000_000_000 + 2**24)
"""Where a root host picks a fresh uid for each program: far above user and subuid ranges."""

# Runs inside the sandbox before the program: limits that bind the process and its children,
# then (as root on the host) an unused uid, then the program itself as `python3 -I main.py`.
LAUNCHER = """\
import os, resource, sys
cpu, memory, processes, file_bytes, uid = map(int, sys.argv[1:6])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if processes > 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.execv(sys.executable, [sys.executable, "-I", "main.py"])
"""


@dataclass(frozen=True)
class Limits:
    """What one program may use; reaching a limit ends it with that status."""

    wall_seconds: float = 5.0
    """The whole process group is killed at this wall time (status "timeout")."""
    cpu_seconds: int = 5
    """RLIMIT_CPU: SIGXCPU at this much CPU time (status "cpu")."""
    memory_mb: int = 1024
    """RLIMIT_AS: allocations beyond it fail, Python raises MemoryError (status "memory")."""
    processes: int = 32
    """RLIMIT_NPROC: the most processes and threads the program may have at once."""
    output_bytes: int = 64_000
    """stdout+stderr kept; printing more kills the program (status "output")."""
    file_mb: int = 16
    """RLIMIT_FSIZE, and the size of the private work folder."""

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise RiseError(
                    f"sandbox: {field.name} must be positive, got {getattr(self, field.name)}"
                )


@dataclass
class Execution:
    """How one program ended, with what it printed (at most `Limits.output_bytes` together)."""

    status: str
    """"ok" (exit 0), "error" (non-zero exit), "timeout", "cpu", "memory", "output", "killed"."""
    exit_code: int | None
    """The exit status; None when a signal (or we, at a limit) ended it."""
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
        self.limits = limits
        self.concurrency = concurrency or os.cpu_count() or 1
        if self.concurrency < 1:
            raise RiseError(f"sandbox: concurrency must be at least 1, got {concurrency}")
        self._python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self._root = os.geteuid() == 0
        self._uids_in_use: set[int] = set()
        self._lock = threading.Lock()
        self._bwrap = bwrap_path()
        why = None
        if self._bwrap is None:
            why = "bubblewrap (bwrap) is not installed"
        else:
            check = self.run("pass")
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
            source_file.write(source.encode())
            source_file.seek(0)
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            if self.isolated:
                uid = self._take_uid() if self._root else -1
                try:
                    proc = self._start_sandboxed(source_file.fileno(), stdin_file, uid)
                    stdout, stderr, limit_hit = _communicate(proc, self.limits)
                finally:
                    if uid >= 0:
                        with self._lock:
                            self._uids_in_use.discard(uid)
                # bwrap exits with 128 + the signal that ended the program, as shells report it
                code, sig = proc.returncode, None
                if code > 128:
                    code, sig = None, code - 128
            else:
                with tempfile.TemporaryDirectory(prefix="rise-sandbox-") as work:
                    with open(os.path.join(work, "main.py"), "wb") as main:
                        shutil.copyfileobj(source_file, main)
                    proc = self._start_unsandboxed(work, stdin_file)
                    stdout, stderr, limit_hit = _communicate(proc, self.limits)
                code, sig = proc.returncode, None
                if code < 0:
                    code, sig = None, -code
        seconds = time.monotonic() - start
        out = stdout.decode(errors="replace")
        err = stderr.decode(errors="replace")
        status = limit_hit or _status(code, sig, err)
        if limit_hit:
            code = sig = None
        return Execution(status, code, out, err, seconds, sig, self.limits)

    def run_many(
        self, sources: Sequence[str], stdins: Sequence[str] | None = None
    ) -> list[Execution]:
        """Run every source (with its stdin, default empty), `concurrency` at a time; same order."""
        stdins = [""] * len(sources) if stdins is None else list(stdins)
        if len(stdins) != len(sources):
            raise RiseError(f"sandbox: {len(sources)} sources but {len(stdins)} stdins")
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.run, sources, stdins))

    def _take_uid(self) -> int:
        """A uid no other program of this Sandbox is running as (processes count per uid)."""
        with self._lock:
            while (uid := random.choice(ROOT_UIDS)) in self._uids_in_use:
                pass
            self._uids_in_use.add(uid)
            return uid

    def _launch(self, processes: int, uid: int) -> list[str]:
        limits = self.limits
        return [
            self._python,
            "-I",
            "-S",
            "-c",
            LAUNCHER,
            str(limits.cpu_seconds),
            str(limits.memory_mb * 2**20),
            str(processes),
            str(limits.file_mb * 2**20),
            str(uid),
        ]

    def _start_sandboxed(self, source_fd: int, stdin, uid: int) -> subprocess.Popen:
        args = [self._bwrap, "--die-with-parent", "--new-session"]
        if self._root:
            # no user namespace: inside it the program would still be uid 0 of the host, which
            # RLIMIT_NPROC never binds; the launcher drops to `uid` with the two capabilities
            args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
            args += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-all", "--unshare-user", "--disable-userns"]
        for path in SYSTEM:
            args += ["--ro-bind", path, path]
        for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(name):
                args += ["--symlink", os.readlink(name), name]
            elif os.path.isdir(name):
                args += ["--ro-bind", name, name]
        for prefix in _interpreter_prefixes(self._python):
            # its parents, as bwrap would make them, would copy the host's modes (/root: 0700)
            parents = [os.path.dirname(prefix)]
            while parents[-1] != "/":
                parents.append(os.path.dirname(parents[-1]))
            for parent in reversed(parents[:-1]):
                args += ["--perms", "0755", "--dir", parent]
            args += ["--ro-bind", prefix, prefix]
        args += ["--proc", "/proc", "--dev", "/dev", "--hostname", "sandbox"]
        args += ["--perms", "0777", "--size", str(self.limits.file_mb * 2**20), "--tmpfs", WORK]
        args += ["--symlink", WORK, "/tmp", "--file", str(source_fd), f"{WORK}/main.py"]
        args += ["--chdir", WORK, "--clearenv"]
        for name, value in _environment(WORK).items():
            args += ["--setenv", name, value]
        args += ["--", *self._launch(self.limits.processes, uid)]
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(source_fd,),
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            start_new_session=True,
        )

    def _start_unsandboxed(self, work: str, stdin) -> subprocess.Popen:
        # RLIMIT_NPROC counts every process of the user here, and never binds root: allow the
        # system's current task count plus the limit, which still stops a fork bomb's growth
        processes = 0 if self._root else _system_tasks() + self.limits.processes
        return subprocess.Popen(
            self._launch(processes, -1),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env=_environment(work),
            start_new_session=True,
        )


def _environment(work: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "TMPDIR": work,
        "LANG": "C.UTF-8",
    }


def _interpreter_prefixes(python: str) -> list[str]:
    """The folders the interpreter needs beyond the system's: its prefix (not the venv's)."""
    wanted = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(python))}
    covered = [*SYSTEM, "/bin", "/lib", "/lib64"]
    prefixes: list[str] = []
    for path in sorted(os.path.realpath(p) for p in wanted):
        if not any(path == c or path.startswith(c + "/") for c in covered + prefixes):
            prefixes.append(path)
    return prefixes


def _system_tasks() -> int:
    """Processes and threads on the system now (the fourth field of /proc/loadavg), else 1000."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return 1000


def _communicate(proc: subprocess.Popen, limits: Limits) -> tuple[bytes, bytes, str | None]:
    """Read the program's output until it ends or reaches a limit; then kill its process group.

    Returns stdout, stderr (together at most `limits.output_bytes`) and the limit reached
    ("timeout", "output") or None. Reading stops once the program has exited even if a child
    of it still holds the pipes open.
    """
    deadline = time.monotonic() + limits.wall_seconds
    streams = (proc.stdout.fileno(), proc.stderr.fileno())
    chunks: dict[int, list[bytes]] = {fd: [] for fd in streams}
    kept, limit_hit = 0, None
    with selectors.DefaultSelector() as selector:
        for stream in (proc.stdout, proc.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                limit_hit = "timeout"
                break
            ready = selector.select(min(remaining, 0.25))
            if not ready and _exited(proc.pid):
                break
            for key, _ in ready:
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                chunks[key.fd].append(data[: max(0, limits.output_bytes - kept)])
                kept += len(data)
                if kept > limits.output_bytes:
                    limit_hit = "output"
            if limit_hit:
                break
    # the leader is not reaped yet, so its process group id cannot have been reused
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return b"".join(chunks[streams[0]]), b"".join(chunks[streams[1]]), limit_hit


def _exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it."""
    result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return result is not None


def _status(code: int | None, sig: int | None, stderr: str) -> str:
    if code == 0:
        return "ok"
    if sig == signal.SIGXCPU:
        return "cpu"
    lines = stderr.strip().splitlines()
    if lines and lines[-1].startswith("MemoryError"):
        return "memory"
    return "killed" if sig is not None else "error"
