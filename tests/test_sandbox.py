"""The code sandbox against hostile programs, under the real bubblewrap (no mocks).

Each hostile program must end with a status other than "ok" and a clear summary line, leave the
host as it was (no file written outside its work folder, nothing read from the home or the run
folder, no connection made, no process left running, this process and a sentinel process alive),
and the next normal program must still run. `.ci/run` installs bubblewrap when it is missing and
sets RISE_SANDBOX_TEST=required, so there these tests fail rather than skip without it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import sandbox_or_skip

from rise_llm import sandbox as sandbox_module
from rise_llm import sandbox_process
from rise_llm.errors import RiseError
from rise_llm.sandbox import Execution, Limits, Sandbox, bwrap_path
from rise_llm.sandbox_process import interpreter_paths

LIMITS = Limits(wall_seconds=2, cpu_seconds=5, memory_mb=512, processes=32, output_bytes=10_000)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return sandbox_or_skip(LIMITS, concurrency=2)


@pytest.fixture
def sentinel():
    """A process of the host, as this user, that a hostile program must not reach."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    assert process.poll() is None, "the sandboxed program killed a process of the host"
    process.kill()
    process.wait()


def _processes_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                pids.append(int(entry.name))
        except OSError:  # the process ended while we looked
            pass
    return pids


def _contained(sandbox: Sandbox, execution: Execution, status: str | set[str], summary: str):
    """The program was stopped as `status` with `summary`, and the sandbox still works."""
    statuses = {status} if isinstance(status, str) else status
    assert execution.status in statuses, (execution.status, execution.stderr[-500:])
    assert summary in execution.summary()
    assert "\n" not in execution.summary()
    after = sandbox.run("print('still fine')")
    assert (after.status, after.stdout) == ("ok", "still fine\n")


def test_normal_program_returns_its_output_and_exit_code(sandbox):
    execution = sandbox.run(
        "import sys\nprint('out', input())\nprint('err', file=sys.stderr)\nsys.exit(3)",
        stdin="given\n",
    )
    assert (execution.status, execution.exit_code) == ("error", 3)
    assert (execution.stdout, execution.stderr) == ("out given\n", "err\n")
    assert execution.summary() == "exited with code 3"
    ok = sandbox.run("import os\nprint(os.getcwd(), sorted(os.listdir('.')))\nexit()")
    assert (ok.status, ok.exit_code, ok.stdout) == ("ok", 0, "/sandbox ['main.py']\n")
    assert sandbox.isolated


def test_ordinary_programs_work(sandbox):
    """What honest code does: threads, a process pool (semaphores in /dev/shm), a temporary
    file, /dev/null, a child interpreter."""
    execution = sandbox.run(
        "import multiprocessing, subprocess, sys, tempfile, threading\n"
        "def square(x):\n    return x * x\n"
        "if __name__ == '__main__':\n"
        "    threads = [threading.Thread(target=square, args=(i,)) for i in range(8)]\n"
        "    [t.start() for t in threads] and None\n"
        "    [t.join() for t in threads] and None\n"
        "    with multiprocessing.Pool(2) as pool:\n"
        "        print(pool.map(square, range(5)))\n"
        "    with tempfile.NamedTemporaryFile('w') as f:\n"
        "        f.write('x')\n"
        "    open('/dev/null', 'w').write('x')\n"
        "    child = [sys.executable, '-c', 'print(42)']\n"
        "    print(subprocess.run(child, capture_output=True, text=True).stdout.strip())\n"
    )
    assert (execution.status, execution.stdout) == ("ok", "[0, 1, 4, 9, 16]\n42\n"), execution


def test_infinite_loop_times_out(sandbox, sentinel):
    execution = sandbox.run("while True:\n    pass")
    _contained(sandbox, execution, "timeout", "timed out after 2 s")
    assert execution.exit_code is None


def test_cpu_limit():
    sandbox = _sandbox(Limits(wall_seconds=30, cpu_seconds=1))
    execution = sandbox.run("while True:\n    pass")
    _contained(sandbox, execution, "cpu", "CPU time limit (1 s) exceeded")


def test_fork_bomb_is_contained_and_leaves_nothing_running(sandbox, sentinel):
    name = f"rb{uuid.uuid4().hex[:12]}"
    execution = sandbox.run(
        f"import os\nopen('/proc/self/comm', 'w').write({name!r})\n"  # children inherit it
        "forked = 0\n"
        "try:\n    while True:\n        os.fork()\n        forked += 1\n"
        "except OSError as error:\n    print('forked', forked, flush=True)\n"
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    _contained(sandbox, execution, "timeout", "timed out after 2 s")
    # no process ever ends here, so each line is one process of the bomb
    forks = [int(line.split()[1]) for line in execution.stdout.splitlines()]
    assert 0 < len(forks) <= LIMITS.processes
    assert 0 < max(forks) < LIMITS.processes
    assert _processes_named(name) == []


def test_allocating_10_gb_hits_the_memory_limit(sandbox, sentinel):
    execution = sandbox.run("block = bytearray(10 * 2**30)")
    _contained(sandbox, execution, "memory", "memory limit (512 MB) exceeded")


def test_printing_100_mb_is_cut_at_the_output_limit(sandbox, sentinel):
    execution = sandbox.run("for _ in range(100):\n    print('x' * 2**20)")
    _contained(sandbox, execution, "output", "printed more than 10000 bytes of output")
    assert len(execution.stdout.encode()) + len(execution.stderr.encode()) <= 10_000


def test_writing_outside_the_work_folder_writes_nothing(sandbox, tmp_path, sentinel):
    unique = f"rise-sandbox-{uuid.uuid4().hex}"
    targets = [
        f"/{unique}",
        f"/dev/{unique}",
        f"/etc/{unique}",
        f"/usr/{unique}",
        str(tmp_path / unique),
        str(Path.cwd() / unique),
        str(Path.home() / unique),
        str(Path(sys.base_prefix) / unique),
    ]
    execution = sandbox.run(
        f"import os\nfor path in {targets!r} + ['inside.txt']:\n"
        "    try:\n"
        "        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)\n"
        "        open(path, 'w').write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('failed', path, type(error).__name__)\n"
    )
    assert "wrote inside.txt" in execution.stdout  # the work folder is writable
    for path in targets:
        assert not Path(path).exists(), path
        if not path.startswith("/tmp/"):  # inside, /tmp is the work folder
            assert f"failed {path}" in execution.stdout


def test_home_and_run_folder_are_not_readable(sandbox, tmp_path, sentinel):
    secret = uuid.uuid4().hex
    in_home = Path.home() / f".rise-sandbox-{secret}"
    in_run_folder = tmp_path / "secret.txt"
    in_run_folder.write_text(secret)
    readme = Path.cwd() / "pyproject.toml"
    try:
        in_home.write_text(secret)
        execution = sandbox.run(
            f"for path in {[str(in_home), str(in_run_folder), str(readme)]!r}:\n"
            "    try:\n        print(open(path).read())\n"
            "    except OSError as error:\n        print('failed', type(error).__name__)\n"
        )
    finally:
        in_home.unlink()
    assert execution.stdout.count("failed") == 3, execution.stdout
    assert secret not in execution.stdout + execution.stderr


def test_no_network(sandbox, sentinel):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        execution = sandbox.run(
            "import socket\n"
            f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
            "    try:\n        socket.create_connection(address, timeout=1)\n"
            "        print('connected')\n"
            "    except OSError as error:\n        print('failed', error)\n"
        )
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing ever connected
            listener.accept()
    assert execution.stdout.count("failed") == 2, execution.stdout


@pytest.mark.parametrize(
    "attack",
    ["os.kill(os.getppid(), 9)", "os.kill(1, 9)", "os.killpg(0, 9)", "os.kill(-1, 9)"],
)
def test_killing_its_parent_or_everything_harms_only_itself(sandbox, sentinel, attack):
    execution = sandbox.run(f"import os\n{attack}\nimport time\ntime.sleep(5)")
    _contained(sandbox, execution, {"killed", "error"}, "")
    assert execution.status != "timeout"


def test_input_fails_at_once_instead_of_waiting(sandbox):
    execution = sandbox.run("input()")
    _contained(sandbox, execution, "error", "exited with code 1")
    assert "EOFError" in execution.stderr


def test_file_size_and_work_folder_are_limited():
    sandbox = _sandbox(Limits(wall_seconds=5, file_mb=1))
    execution = sandbox.run("open('big', 'wb').write(bytes(2 * 2**20))")
    _contained(sandbox, execution, "error", "exited with code 1")


def test_run_many_keeps_order_and_runs_concurrently(sandbox):
    # each program records when it ran; the first sleeps longest, so it finishes last, and
    # the two that start together overlap unless the second is a whole second late
    sources = [
        f"import time\nstart = time.time()\ntime.sleep({sleep})\nprint({i}, start, time.time())"
        for i, sleep in enumerate([1.0, 0.8, 0.1, 0.1])
    ]
    executions = sandbox.run_many(sources)
    runs = [execution.stdout.split() for execution in executions]
    assert [int(run[0]) for run in runs] == [0, 1, 2, 3]
    spans = [(float(run[1]), float(run[2])) for run in runs]
    overlapping = [
        (i, j)
        for i in range(4)
        for j in range(i + 1, 4)
        if spans[i][0] < spans[j][1] and spans[j][0] < spans[i][1]
    ]
    assert overlapping
    assert sandbox.run_many([]) == []


def test_refuses_without_bwrap_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    assert bwrap_path() is None
    with pytest.raises(RiseError, match=r"bubblewrap.*--allow-unsandboxed-code") as refused:
        Sandbox(LIMITS)
    assert "\n" not in str(refused.value)
    with pytest.warns(UserWarning, match="WITHOUT isolation"):
        unsandboxed = Sandbox(LIMITS, allow_unsandboxed=True)
    assert not unsandboxed.isolated
    execution = unsandboxed.run("import os\nprint(input(), len(os.listdir('.')))", stdin="hi")
    assert (execution.status, execution.stdout) == ("ok", "hi 1\n")
    looping = unsandboxed.run("while True:\n    pass")
    _contained(unsandboxed, looping, "timeout", "timed out after 2 s")
    _contained(unsandboxed, unsandboxed.run("bytearray(10 * 2**30)"), "memory", "memory limit")


def test_a_bwrap_that_cannot_sandbox_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox_module, "bwrap_path", lambda: str(fake))
    with pytest.raises(RiseError, match=r"cannot create a sandbox here.*No permissions"):
        Sandbox(LIMITS)


@pytest.mark.parametrize(
    ("status", "code", "signal", "summary"),
    [
        ("ok", 0, None, "exited with code 0"),
        ("error", 1, None, "exited with code 1"),
        ("timeout", None, None, "timed out after 2 s"),
        ("cpu", None, 24, "CPU time limit (5 s) exceeded"),
        ("memory", 1, None, "memory limit (512 MB) exceeded"),
        ("output", None, None, "printed more than 10000 bytes of output"),
        ("killed", None, 9, "killed by signal 9 (SIGKILL)"),
    ],
)
def test_summary_lines(status, code, signal, summary):
    assert Execution(status, code, "", "", 0.1, signal, LIMITS).summary() == summary


def test_limits_and_concurrency_are_checked():
    with pytest.raises(RiseError, match="wall_seconds must be positive, got 0"):
        Limits(wall_seconds=0)
    with pytest.raises(RiseError, match=r"cpu_seconds must be a positive whole number, got 2\.5"):
        Limits(cpu_seconds=2.5)
    with pytest.raises(RiseError, match="concurrency must be at least 1, got 0"):
        Sandbox(LIMITS, concurrency=0)


def _sandbox(limits: Limits) -> Sandbox:
    try:
        return Sandbox(limits)
    except RiseError as error:
        if os.environ.get("RISE_SANDBOX_TEST") == "required":
            pytest.fail(str(error))
        pytest.skip(str(error))


def test_sees_only_the_system_the_interpreter_and_its_work_folder(sandbox):
    execution = sandbox.run("import os\nprint(*sorted(os.listdir('/')))")
    system = {"usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "dev"}
    interpreter = {path.split("/")[1] for path in interpreter_paths(sandbox._python)}
    assert set(execution.stdout.split()) <= system | interpreter | {"tmp", "sandbox"}
    assert {"usr", "etc", "sandbox", "tmp"} <= set(execution.stdout.split())


def test_program_has_no_privileges(sandbox):
    execution = sandbox.run(
        "import os\nprint(os.getuid() != 0 or os.geteuid() != 0)\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "os.setuid(0)"
    )
    assert execution.status == "error" and "PermissionError" in execution.stderr
    assert execution.stdout.split() == ["True", "0000000000000000"]


@pytest.mark.parametrize(
    ("source", "status", "stderr"),
    [
        ("def f():\n    1 / 0\nf()", "error", 'File "/sandbox/main.py", line 3, in <module>'),
        ("def f(\n", "error", '  File "/sandbox/main.py", line 1\n    def f(\n'),
        ("if __name__ == '__main__':\n    quit(4)", "error", ""),
        (
            "import sys\nassert (sys.argv, __file__) == (['main.py'], '/sandbox/main.py')\nexit()",
            "ok",
            "",
        ),
    ],
)
def test_program_runs_as_python_main_py(sandbox, source, status, stderr):
    """main.py runs as `python3 main.py` would: tracebacks and syntax errors show main.py's
    lines and none of the launcher's, exit() and quit() exist, __name__ is "__main__"."""
    execution = sandbox.run(source)
    assert execution.status == status, execution.stderr
    assert execution.stderr.startswith(("Traceback", stderr))
    assert stderr in execution.stderr and "<string>" not in execution.stderr
    assert execution.exit_code == (0 if status == "ok" else 4 if "quit" in source else 1)


def test_main_py_sees_what_a_plain_run_sees(sandbox, tmp_path):
    probe = "import sys\nprint(sorted(globals()), __name__, __cached__, sys.argv)"
    (tmp_path / "main.py").write_text(probe)
    python = os.path.realpath(sys._base_executable)
    plain = subprocess.run([python, "-I", "-S", "main.py"], cwd=tmp_path, capture_output=True)
    assert sandbox.run(probe).stdout == plain.stdout.decode()


def test_readme_example_runs_as_written(sandbox):
    """The README's "Running model-written code" example, its comments checked."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Running model-written code", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    lines = code.splitlines()
    namespace: dict = {}
    exec("\n".join(lines[:3]), namespace)
    echo, sleep, many = (eval(line.split("  #")[0], namespace) for line in lines[3:])
    assert (echo.status, echo.stdout) == ("ok", "cba\n")
    assert sleep == "timed out after 2 s"
    assert [e.status for e in many] == ["ok", "error"]


def test_only_bwraps_own_child_is_killed_at_a_limit():
    """At a limit the sandbox's pid 1 is killed by the pid bwrap reported: never a number cut
    short by a read, nor a process that is not bwrap's child (a pid reused)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = f'{{\n    "child-pid": {child.pid},\n'.encode()
        assert not sandbox_process.kill_pid_1(os.getpid(), info[:-2])  # no end to the number
        assert not sandbox_process.kill_pid_1(child.pid, info)  # not that process's child
        assert child.poll() is None
        assert sandbox_process.kill_pid_1(os.getpid(), info)
        assert child.wait() == -9
    finally:
        child.kill()
        child.wait()
