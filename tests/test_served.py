"""Served checkpoints (`engines/served.py`): a server command is started on a free loopback port,
waited for, and stopped with its whole process group, also when the block fails or the process
gets SIGTERM. These use a few-line stand-in server (no model); the real `rise serve` path is in
test_openai_engine.py and the `rise run` test below.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rise_llm.engines.served import ServedModel, ServerConfig
from rise_llm.errors import RiseError

RISE = str(Path(sys.executable).parent / "rise")

STAND_IN = """
import http.server, json, sys
class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": sys.argv[1]}]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Models).serve_forever()
"""


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie awaiting its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether process `pid` has ended within `within` seconds."""
    deadline = time.monotonic() + within
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


@pytest.fixture
def stand_in(tmp_path) -> str:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return f"{sys.executable} {script} {{model}} {{port}}"


def test_served_model_starts_on_first_use_and_stops_with_the_block(stand_in, tmp_path):
    served = ServedModel(stand_in, "my-checkpoint", tmp_path / "server.log", startup_timeout=30)
    with served:
        assert served.process is None  # nothing started until something samples
        served.start()
        pid = served.process.pid
        assert served.engine.model == "my-checkpoint"
        assert served.engine.base_url.startswith("http://127.0.0.1:")
    assert served.process is None and gone(pid)


def test_a_failing_block_still_stops_the_server(stand_in, tmp_path):
    served = ServedModel(stand_in, "m", tmp_path / "server.log", startup_timeout=30)
    with pytest.raises(ZeroDivisionError), served:
        served.start()
        pid = served.process.pid
        1 / 0  # noqa: B018
    assert gone(pid)


def test_sigterm_while_serving_unwinds_the_block_and_stops_the_server(stand_in, tmp_path):
    served = ServedModel(stand_in, "m", tmp_path / "server.log", startup_timeout=30)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, served:
        served.start()
        pid = served.process.pid
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
    assert info.value.code == 128 + signal.SIGTERM
    assert gone(pid)
    assert signal.getsignal(signal.SIGTERM) == before


def group_members(group: int) -> list[int]:
    """The live processes of process group `group`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def empty_within(group: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not group_members(group)


HOLDER = """
import sys, time
from rise_llm.engines.served import ServedModel
served = ServedModel(sys.argv[1], "m", sys.argv[2], startup_timeout=60)
served.start()
print(served.process.pid, flush=True)
time.sleep(600)
"""


def test_a_server_ends_with_a_process_killed_by_sigkill(stand_in, tmp_path):
    """`rise run` killed with SIGKILL cannot stop its server; the watcher around it does."""
    holder = tmp_path / "holder.py"
    holder.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(holder), stand_in, str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    group = int(proc.stdout.readline())
    assert len(group_members(group)) == 2  # the watcher and the server
    proc.kill()
    proc.wait()
    assert empty_within(group, 10)


def test_a_server_left_by_an_earlier_run_is_stopped_at_the_next_start(stand_in, tmp_path):
    first = ServedModel(stand_in, "m", tmp_path / "server.log", startup_timeout=30)
    first.start()
    group = first.process.pid
    os.kill(group, signal.SIGKILL)  # the watcher too: its server is left running
    first.process.wait()
    first.process = None
    assert len(group_members(group)) == 1
    assert json.loads((tmp_path / "server.pid").read_text())["group"] == group
    with ServedModel(stand_in, "m", tmp_path / "server.log", startup_timeout=30) as second:
        second.start()
        assert empty_within(group, 5)
        assert second.engine.model == "m"  # the new one serves
    assert not (tmp_path / "server.pid").exists()


def test_a_command_that_exits_is_reported_with_its_log(tmp_path):
    command = f"{sys.executable} -c 'import sys; print(\"no gpu\"); sys.exit(3)' {{model}} {{port}}"
    served = ServedModel(command, "m", tmp_path / "server.log", startup_timeout=30)
    with pytest.raises(RiseError, match=r"exited with status 3 .*server\.log: no gpu"):
        served.start()


def test_a_server_that_never_answers_times_out_and_its_whole_group_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    # the command starts a child of its own and never listens
    command = "bash -c 'sleep 60 & echo $! > \"$0\"; wait' {model} {port}"
    served = ServedModel(command, str(pid_file), tmp_path / "server.log", startup_timeout=1.5)
    with pytest.raises(RiseError, match=r"did not answer .* within 1.5 s"):
        served.start()
    assert gone(int(pid_file.read_text()))


def test_a_missing_program_is_one_line(tmp_path):
    served = ServedModel("no-such-server {model} {port}", "m", tmp_path / "log")
    with pytest.raises(RiseError, match="cannot run 'no-such-server'"):
        served.start()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"command": "vllm serve {model}"}, "must use {model} and {port}"),
        ({"command": "serve {model} --port {port} --gpu {gpu}"}, "no other"),
        ({"stages": ["train"]}, "unknown stage 'train'"),
        ({"engine_options": {"bogus": 1}}, "server.engine_options.bogus: unknown setting"),
        ({"startup_timeout": 0}, "startup_timeout must be positive"),
    ],
)
def test_server_settings_are_checked(settings, message):
    from rise_llm.config import build

    with pytest.raises(RiseError, match=message.replace("{", r"\{").replace("}", r"\}")):
        build(ServerConfig, settings, "server")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in found if running(pid)]


@pytest.mark.slow
def test_rise_run_collects_and_evaluates_through_rise_serve(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "served.yaml"
    config.write_text(
        f"""# a served-checkpoint run on the tiny toy model
base_model: {tiny_model_dir}
out: {out}
iterations: 1
device: cpu
collect: {{limit: 6, turns: 2, samples: 3, max_new_tokens: 24}}
train: {{lr: 1.0e-3, max_steps: 2, batch_size: 4, save_steps: 2}}
evaluate: {{limit: 4, turns: 2, max_new_tokens: 24}}
server:
  command: {RISE} serve {{model}} --port {{port}} --device cpu --batch-size 16
  stages: [collect, evaluate]
  startup_timeout: 300
  engine_options: {{max_concurrency: 4, timeout: 120}}
"""
    )
    start = time.monotonic()
    done = subprocess.run([RISE, "run", str(config)], capture_output=True, text=True, timeout=900)
    print(f"rise run with served checkpoints: {time.monotonic() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"base", "iter1"}
    # each checkpoint was served and stopped; its server answered the requests
    assert done.stderr.count("server: ready at http://127.0.0.1:") == 2
    assert done.stderr.count("server: stopped;") == 2
    for label, model in (("base", str(tiny_model_dir)), ("iter1", str(out / "iter1/train/model"))):
        assert (out / label / "server.log").exists()
        assert f"rise serve: '{model}'" in (out / label / "server.log").read_text()
    # the run records the checkpoint, never the ephemeral server URL
    record = json.loads((out / "iter1/collect/config.json").read_text())["config"]
    assert record["model"] == str(tiny_model_dir)
    assert "127.0.0.1" not in (out / "iter1/collect/config.json").read_text()
    assert len((out / "iter1/collect/episodes.jsonl").read_text().splitlines()) == 6
    assert not _processes_mentioning(str(out))  # no server left behind
