"""One program in the sandbox: the command line that starts it (bubblewrap's arguments and the
launcher that sets its limits from inside), and the watch over it until it ends or reaches a
limit.

bubblewrap (`bwrap`) gives the program new pid, network, ipc and uts namespaces (no network but
its own loopback; no other process of the host visible), a root of its own with the system
(/usr, /etc, /bin, /lib*) and the interpreter (its executable and its prefix's lib folder) bound
read-only, a fresh /proc and a minimal read-only /dev, and private size-limited tmpfs at
/sandbox (its work folder, HOME and /tmp) and /dev/shm; the rest of its root is read-only.
Nothing else of the host exists there: not the run folder, not /work, not the host's /tmp, not
the home folder. The environment is cleared. `--die-with-parent` ends the sandbox with its
caller, and `--new-session` keeps it off the caller's terminal.

The launcher is a few lines of Python run inside the sandbox by the interpreter running
rise-llm (its base prefix, not a venv), started `-I -S`: no environment variables, no user or
site packages (nor their .pth files, which can cost more than the program), the standard library
only. It sets RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE and RLIMIT_NPROC, then runs main.py in the
same process as `python3 main.py` would (`__main__`, `__file__`, `sys.argv`, exit() and quit(),
tracebacks and syntax errors printed without the launcher's frames), which saves the startup of
a second interpreter.

RLIMIT_NPROC never binds uid 0 of the host, and bwrap's user namespace maps the program to the
caller's uid, so as root a fork bomb would not be held. As root, then, bwrap runs without a user
namespace, with every capability dropped but setuid/setgid, and the launcher drops to a uid of
its own (unused on the host, one per running program, so programs do not share the count) before
running main.py; no_new_privs (bwrap sets it) keeps setuid files from giving anything back. As
another user, bwrap's user namespace counts the program's processes apart from the user's.

The watch (`communicate`) reads stdout and stderr together up to the output limit; at that limit
or the wall time it kills the sandbox's pid 1 (named by bwrap's --info-fd), whose end takes every
process of the sandbox with it before bwrap exits, so nothing of the program is left when it
returns. Unsandboxed, it kills the process group instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rise_llm.sandbox import Limits

WORK = "/sandbox"
"""The program's private work folder inside the sandbox (a tmpfs; also its HOME and TMPDIR)."""

SYSTEM = ("/usr", "/etc")
"""Bound read-only into the sandbox; /bin, /lib* and /sbin follow as links or binds."""

LIBS = ("lib", "lib64")
"""The folders of the interpreter's prefix bound beside its executable."""

LAUNCHER = """\
def _launch():
    import _sitebuiltins, builtins, os, resource, sys
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
        import ctypes  # a uid change without exec leaves /proc/self to root: PR_SET_DUMPABLE
        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
    for name in ("exit", "quit"):
        setattr(builtins, name, _sitebuiltins.Quitter(name, "Ctrl-D (i.e. EOF)"))
    def excepthook(kind, error, tb, hook=sys.excepthook):
        while tb and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next  # the launcher's own frames
        hook(kind, error.with_traceback(tb), tb)
    sys.excepthook = excepthook
    path = os.path.abspath("main.py")
    sys.argv[:] = ["main.py"]
    main = globals()  # main.py's globals, as a script's, with nothing of the launcher's
    main.update(__file__=path, __cached__=None)
    del main["_launch"]
    with open(path, "rb") as f:
        return compile(f.read(), path, "exec", dont_inherit=True)
exec(_launch())
"""
"""Sets the limits (and, as root, the uid), then runs main.py; the limits bind its children."""


def launcher(python: str, limits: Limits, processes: int, uid: int | None) -> list[str]:
    """`python` running the launcher: `processes` 0 sets no RLIMIT_NPROC, `uid` None keeps it."""
    return [
        python,
        "-I",
        "-S",
        "-c",
        LAUNCHER,
        str(limits.cpu_seconds),
        str(limits.memory_mb * 2**20),
        str(processes),
        str(limits.file_mb * 2**20),
        str(-1 if uid is None else uid),
    ]


def bwrap_command(
    bwrap: str, python: str, limits: Limits, source_fd: int, info_fd: int, uid: int | None
) -> list[str]:
    """bwrap running the launcher on the source read from `source_fd`, writing the sandbox's
    pid 1 (as "child-pid") to `info_fd`; `uid`: see the module docstring."""
    args = [bwrap, "--die-with-parent", "--new-session", "--info-fd", str(info_fd)]
    if uid is None:
        args += ["--unshare-all", "--unshare-user", "--disable-userns"]
    else:
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        args += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    for path in SYSTEM:
        args += ["--ro-bind", path, path]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    for path in interpreter_paths(python):
        # parents that bwrap made itself would copy the host's modes (/root: 0700)
        parents = [os.path.dirname(path)]
        while parents[-1] != "/":
            parents.append(os.path.dirname(parents[-1]))
        for parent in reversed(parents[:-1]):
            args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", path, path]
    size = str(limits.file_mb * 2**20)
    args += ["--proc", "/proc", "--dev", "/dev", "--hostname", "sandbox"]
    args += ["--perms", "0777", "--size", size, "--tmpfs", WORK]
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]  # multiprocessing's
    args += ["--symlink", WORK, "/tmp", "--file", str(source_fd), f"{WORK}/main.py"]
    # bwrap's own tmpfs at / and /dev have no size limit: nothing may be written there
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    args += ["--chdir", WORK, "--clearenv"]
    for name, value in environment(WORK).items():
        args += ["--setenv", name, value]
    return [*args, "--", *launcher(python, limits, limits.processes, uid)]


def environment(work: str) -> dict[str, str]:
    """The program's whole environment."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}


def interpreter_paths(python: str) -> list[str]:
    """What the interpreter needs beyond the system's folders: its executable and its prefix's
    lib folders (standard library, libpython, the libraries it links), not the whole prefix,
    which for `--prefix ~/.local` would be half the home folder; not a venv."""
    prefixes = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(python))}
    wanted = [python] + [
        os.path.join(os.path.realpath(prefix), lib) for prefix in prefixes for lib in LIBS
    ]
    covered = [*SYSTEM, "/bin", "/lib", "/lib64"]
    paths: list[str] = []
    for path in sorted(p for p in wanted if os.path.exists(p)):
        if not any(path == c or path.startswith(c + "/") for c in covered + paths):
            paths.append(path)
    return paths


def system_tasks() -> int:
    """Processes and threads on the system now (the fourth field of /proc/loadavg), else 1000."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return 1000


def communicate(
    proc: subprocess.Popen, limits: Limits, info_fd: int | None = None
) -> tuple[bytes, bytes, str | None]:
    """Read the program's output until it has ended or reached a limit, then end what is left.

    Returns stdout, stderr (together at most `limits.output_bytes`) and the limit reached
    ("timeout", "output") or None. `info_fd` is bwrap's --info-fd: at a limit the sandbox's
    pid 1 is killed, whose end kills every process of the sandbox before bwrap exits, so that
    nothing of the program is left once this returns. Without it (unsandboxed) the process
    group is killed.
    """
    deadline = time.monotonic() + limits.wall_seconds
    streams = (proc.stdout.fileno(), proc.stderr.fileno())
    chunks: dict[int, list[bytes]] = {fd: [] for fd in streams}
    info, kept, limit_hit = b"", 0, None
    with selectors.DefaultSelector() as selector:
        for fd in (*streams, info_fd) if info_fd is not None else streams:
            selector.register(fd, selectors.EVENT_READ)
        while any(fd in selector.get_map() for fd in streams):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                limit_hit = "timeout"
                break
            ready = selector.select(min(remaining, 0.25))
            if not ready and exited(proc.pid):
                break  # a child of an unsandboxed program holds the pipes open
            for key, _ in ready:
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                elif key.fd == info_fd:
                    info += data
                else:
                    chunks[key.fd].append(data[: max(0, limits.output_bytes - kept)])
                    kept += len(data)
                    if kept > limits.output_bytes:
                        limit_hit = "output"
            if limit_hit:
                break
    if limit_hit is None and not wait_exited(proc.pid, deadline):
        limit_hit = "timeout"
    if limit_hit and info_fd is not None and kill_pid_1(proc.pid, info + drain(info_fd)):
        wait_exited(proc.pid, time.monotonic() + 5)
    # the leader is not reaped yet, so its process group id cannot have been reused
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return b"".join(chunks[streams[0]]), b"".join(chunks[streams[1]]), limit_hit


def drain(fd: int) -> bytes:
    """What can be read from `fd` now, without waiting."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    return data


def kill_pid_1(bwrap_pid: int, info: bytes) -> bool:
    """SIGKILL the sandbox's pid 1, named in bwrap's --info-fd output, if it is still bwrap's
    child (through a pidfd, so that a reused pid is never signalled); whether it was sent."""
    found = re.search(rb'"child-pid": (\d+)\D', info)  # the whole number, not a first chunk
    if found is None or not hasattr(os, "pidfd_open"):
        return False
    pid = int(found.group(1))
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        if parent != bwrap_pid:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except (OSError, ValueError, IndexError):
        return False
    finally:
        os.close(pidfd)


def exited(pid: int) -> bool:
    """Whether the child `pid` has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def wait_exited(pid: int, deadline: float) -> bool:
    """Wait, without reaping, until the child `pid` has exited (True) or `deadline` passed."""
    delay = 0.0005
    while not exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.02)
    return True
