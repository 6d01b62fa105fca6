"""Run a server command that ends when the process that started it ends, even by SIGKILL.

    python -m rise_llm.parent_watch PARENT_PID COMMAND [ARGS...]

`ServedModel` starts its server through this watcher, in a process group of their own, and
`launch.run` its `accelerate launch` of a training the same way. The
watcher runs COMMAND in that group and waits for it; every half second it checks that it is
still the child of PARENT_PID. When the parent is gone (a `rise run` killed with SIGKILL cannot
stop its server itself), it sends SIGTERM to the group, and SIGKILL after `GRACE` seconds, so no
server (nor a server's own workers) outlives the run. A SIGTERM to the group (`ServedModel.stop`)
reaches the server directly; the watcher then waits for it and exits with its status, so the
server shuts down as gracefully as without the watcher. Only the standard library is imported:
it starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

GRACE = 20.0
"""Seconds a server has to stop after SIGTERM before the group gets SIGKILL."""
POLL = 0.5


def _status(code: int) -> int:
    """A shell's exit status for a Popen return code (a signal -N becomes 128 + N)."""
    return 128 - code if code < 0 else code


def watch(parent: int, argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: None)  # the server got it too: wait for it
    signal.signal(signal.SIGINT, lambda *_: None)
    server = subprocess.Popen(argv)
    while True:
        try:
            return _status(server.wait(POLL))
        except subprocess.TimeoutExpired:
            if os.getppid() == parent:
                continue
        os.killpg(os.getpgrp(), signal.SIGTERM)  # the parent is gone
        try:
            status = _status(server.wait(GRACE))
        except subprocess.TimeoutExpired:
            status = 128 + signal.SIGKILL
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the server's workers, and this watcher
        return status


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m rise_llm.parent_watch PARENT_PID COMMAND [ARGS...]")
    sys.exit(watch(int(sys.argv[1]), sys.argv[2:]))


if __name__ == "__main__":
    main()
