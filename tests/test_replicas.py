"""Several replicas of one model behind the openai engine (`openai:MODEL@URL1,URL2`) and a run's
`server: {replicas: N}`: the least-outstanding choice, a replica killed in the middle of a
collection (real `rise serve` processes on 127.0.0.1 with the tiny toy model), a quick
`rise run` that starts two servers, samples from both and stops both, and one that splits its
collection into a shard per replica (`server.split_collection`) and merges them itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from rise_llm import collect
from rise_llm.config import build
from rise_llm.engines.load import load_engine
from rise_llm.engines.openai import Replicas, parse_spec
from rise_llm.engines.served import ServedModel, ServerConfig, devices_of_replicas
from rise_llm.errors import RiseError

RISE = str(Path(sys.executable).parent / "rise")
# float64: the two collections batch requests differently at the servers; in float32 that
# changes rounding by ~1e-7 of a logit, enough to flip a near-tie on some CPUs (conftest.py's
# exact_engine), in float64 not
SERVE = f"{RISE} serve {{model}} --port {{port}} --device cpu --dtype float64 --batch-size 16"
CLIENT = {"timeout": 60.0, "max_retries": 3, "max_concurrency": 4}


def _request():
    import httpx2  # the HTTP library of this openai client

    return httpx2.Request("POST", "http://x/v1")


def _lost() -> openai.APIConnectionError:
    # what a refused or reset connection raises (openai 3.60 reads the request's headers)
    return openai.APIConnectionError(request=_request())


def _error_500() -> openai.InternalServerError:
    import httpx2

    response = httpx2.Response(500, request=_request())
    return openai.InternalServerError("boom", response=response, body=None)


def test_each_request_goes_to_the_replica_with_the_fewest_in_flight():
    replicas = Replicas(["a", "b", "c"], max_retries=2)
    chosen = []
    for _ in range(5):  # five requests sent, none answered yet
        i = replicas.pick()
        replicas.in_flight[i] += 1
        chosen.append(i)
    assert chosen == [0, 1, 2, 0, 1]  # the least busy, the first on a tie
    replicas.in_flight[2] -= 1  # c answers (now a: 2, b: 2, c: 0)
    assert replicas.pick() == 2
    replicas.in_flight = [3, 1, 5]  # a slow replica keeps its requests: the others get more
    assert replicas.pick() == 1


def test_a_replica_down_is_left_and_the_last_one_is_never_marked_down():
    replicas = Replicas(["a", "b"], max_retries=2)
    assert replicas.failed(0, _lost())  # a refused connection: down at once
    assert replicas.down == ["connection refused or lost", None]
    assert [replicas.pick() for _ in range(3)] == [1, 1, 1]
    assert replicas.failed(0, _error_500())  # a request still in flight there: moved too
    for _ in range(5):  # the last one up is retried like a single server, never left
        assert not replicas.failed(1, _lost())
    assert replicas.others_down(1) == ["a (connection refused or lost)"]


def test_a_replica_that_keeps_failing_goes_down_after_max_retries_in_a_row():
    replicas = Replicas(["a", "b"], max_retries=2)
    assert not replicas.failed(0, _error_500())
    replicas.answered(0)  # an answer resets the count
    assert not replicas.failed(0, _error_500()) and not replicas.failed(0, _error_500())
    assert replicas.failed(0, _error_500())  # the third in a row: more than max_retries
    assert replicas.down[0].startswith("3 failures in a row, the last 500")


def test_specs_with_several_urls():
    a, b = "http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"
    assert parse_spec(f"openai:m@{a}/, {b}") == ("m", f"{a},{b}")
    engine = load_engine(f"openai:m@{a},{b}")
    assert engine.base_urls == (a, b) and engine.base_url == f"{a},{b}"
    with pytest.raises(RiseError, match="given twice"):
        parse_spec(f"openai:m@{a},{a}")
    with pytest.raises(RiseError, match="must start with http"):
        parse_spec(f"openai:m@{a},127.0.0.1:8001")


def test_replica_devices_and_settings():
    assert devices_of_replicas(4, devices_per_replica=2) == ["0,1", "2,3", "4,5", "6,7"]
    assert devices_of_replicas(2, devices_per_replica=2, visible="4,5,6,7") == ["4,5", "6,7"]
    assert devices_of_replicas(2, replica_devices=["3", "1"]) == ["3", "1"]
    assert devices_of_replicas(2) == [None, None]  # on CPU: nothing set
    with pytest.raises(RiseError, match="need 4 GPUs"):
        devices_of_replicas(2, devices_per_replica=2, visible="0,1")
    for settings, message in [
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"replicas": 2, "replica_devices": ["0"]}, "1 entries for 2 replicas"),
        ({"devices_per_replica": 1, "replica_devices": ["0"]}, "not both"),
        ({"command": SERVE, "split_collection": True}, "needs a command, replicas >= 2"),
        ({"replicas": 2, "split_collection": True}, "needs a command"),
        (
            {"command": SERVE, "replicas": 2, "stages": ["evaluate"], "split_collection": True},
            "collect in server.stages",
        ),
    ]:
        with pytest.raises(RiseError, match=message):
            build(ServerConfig, settings, "server")
    split = {"command": SERVE, "replicas": 2, "split_collection": True}
    assert build(ServerConfig, split, "server").split_collection
    from rise_llm.pipeline import RunConfig

    with pytest.raises(RiseError, match="give an openai: teacher"):  # one per shard thread
        RunConfig(base_model="m", out="o", collect={"teacher": "big"}, server=split)
    RunConfig(base_model="m", out="o", collect={"teacher": "openai:big@http://h/v1"}, server=split)


def _collect(spec: str, out: Path, learner=None) -> list:
    config = collect.CollectConfig(
        model=spec,
        out=str(out),
        limit=24,
        turns=2,
        samples=3,
        max_new_tokens=24,
        engine_options=CLIENT,
    )
    return collect.run(config, learner=learner)


def test_a_replica_killed_in_the_middle_of_a_collection(tiny_model_dir, tmp_path):
    """Two `rise serve` processes; the second is SIGKILLed (its whole process group) once it
    has answered 3 requests. The collection completes with every episode once, equal to the
    same collection from one server: each request's seed is its conversation's and round's,
    whichever replica answers it, and `rise serve` samples each request from its own seeded
    stream (float64: no rounding flip between batches), so two server processes give the same
    tokens for the same request."""
    servers = [
        ServedModel(SERVE, str(tiny_model_dir), tmp_path / f"server-{r}.log", 300, CLIENT)
        for r in (1, 2)
    ]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServedModel.start, servers))
        first, second = (s.engine.base_url for s in servers)
        model = servers[0].engine.model
        start = time.monotonic()
        reference = _collect(f"openai:{model}@{first}", tmp_path / "one")
        print(f"\none healthy server: {time.monotonic() - start:.1f} s")

        spec = f"openai:{model}@{first},{second}"
        engine = load_engine(spec, CLIENT)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["episodes"] = _collect(spec, tmp_path / "two", learner=engine)
            except BaseException as e:  # reported by the assertion below
                outcome["error"] = e

        start = time.monotonic()
        worker = threading.Thread(target=run)
        worker.start()
        while engine.stats.answered[second] < 3 and worker.is_alive():
            time.sleep(0.02)  # polling for the condition, not asserting on time
        answered_at_kill = dict(engine.stats.answered)
        os.killpg(servers[1].process.pid, signal.SIGKILL)
        worker.join()
        print(
            f"two replicas, one killed: {time.monotonic() - start:.1f} s; {engine.stats.summary()}"
        )
    finally:
        for server in servers:
            server.stop()

    assert "error" not in outcome, outcome.get("error")
    assert answered_at_kill[second] >= 3  # it was killed after answering, during the collection
    assert engine.stats.down[second] >= 1  # found down: its requests went to the other
    assert engine.stats.answered[first] > answered_at_kill[first]  # which answered after the kill
    episodes = outcome["episodes"]
    ids = [e.problem_id for e in episodes]
    assert len(ids) == len(set(ids)) == len(reference) == 24  # every episode once
    for episode in episodes:  # every state has its samples: 1 on-policy, then 3 improved
        assert [len(t.attempts) for t in episode.turns] == [1, 3][: len(episode.turns)]
    assert sorted(episodes, key=_key) == sorted(reference, key=_key)  # the same samples
    written = (tmp_path / "two" / "episodes.jsonl").read_text().splitlines()
    assert len(written) == len(reference)


def _key(episode) -> str:
    return episode.problem_id


def test_all_replicas_down_is_one_line_naming_them():
    from rise_llm.engines.base import SamplingParams
    from rise_llm.engines.served import free_port

    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]  # nothing listens there
    engine = load_engine(f"openai:m@{','.join(urls)}", {"max_retries": 1, "timeout": 5})
    messages = [[{"role": "user", "content": "1 + 1?"}]]
    with pytest.raises(RiseError) as info:
        engine.generate(messages, n=1, params=SamplingParams(max_new_tokens=4))
    line = str(info.value)
    assert "\n" not in line and urls[0] in line and urls[1] in line
    assert line.startswith("all 2 replicas of model 'm' failed: ")
    assert line.endswith("(connection refused or lost, after 1 retries); are the servers running?")


@pytest.mark.slow
def test_rise_run_with_two_server_replicas(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "replicas.yaml"
    config.write_text(
        f"""# a run whose collection samples from two rise serve replicas
base_model: {tiny_model_dir}
out: {out}
iterations: 1
device: cpu
collect: {{limit: 8, turns: 2, samples: 2, max_new_tokens: 16}}
train: {{lr: 1.0e-3, max_steps: 1, batch_size: 4, save_steps: 1}}
evaluate: {{limit: 2, turns: 2, max_new_tokens: 8}}
server:
  command: {RISE} serve {{model}} --port {{port}} --device cpu --batch-size 16
  replicas: 2
  startup_timeout: 300
  engine_options: {{max_concurrency: 4, timeout: 120}}
"""
    )
    start = time.monotonic()
    done = subprocess.run([RISE, "run", str(config)], capture_output=True, text=True, timeout=600)
    print(f"\nrise run with 2 replicas: {time.monotonic() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    # the base checkpoint's two servers (collect only: the trained one is never served)
    assert err.count("server 1/2: ready at http://127.0.0.1:") == 1
    assert err.count("server 2/2: ready at http://127.0.0.1:") == 1
    assert err.count("server 1/2: stopped") == err.count("server 2/2: stopped") == 1
    urls = [
        line.split("ready at ")[1].split()[0] for line in err.splitlines() if "ready at" in line
    ]
    traffic = next(line for line in err.splitlines() if line.startswith("servers: stopped;"))
    for url in urls:  # both answered requests
        assert int(traffic.split(f"{url}: ")[1].split(",")[0].split(";")[0]) > 0
    for r in (1, 2):
        assert f"rise serve: '{tiny_model_dir}'" in (out / "base" / f"server-{r}.log").read_text()
        assert not (out / "base" / f"server-{r}.pid").exists()  # stopped
    assert len((out / "iter1/collect/episodes.jsonl").read_text().splitlines()) == 8
    assert json.loads((out / "summary.json").read_text()).keys() == {"base", "iter1"}


STAND_IN = """
import http.server, json, os, sys
print("devices:", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
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


def test_replicas_start_with_their_own_port_log_and_devices_and_all_stop(tmp_path):
    from rise_llm.engines.served import ServedReplicas

    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    command = f"{sys.executable} {script} {{model}} {{port}}"
    served = ServedReplicas(
        command, "m", tmp_path / "server.log", 2, startup_timeout=30, devices=["0,1", "2,3"]
    )
    with served:
        served.start()
        groups = [member.process.pid for member in served.members]
        urls = served.engine.base_urls
        assert len(set(urls)) == 2 and served.engine.model == "m"
    assert [log.name for log in served.logs] == ["server-1.log", "server-2.log"]
    for log, devices in zip(served.logs, ["0,1", "2,3"], strict=True):
        assert f"devices: {devices}" in log.read_text()
        assert not log.with_suffix(".pid").exists()
    assert _empty_within(groups, 10)  # every process of both groups has ended


def _empty_within(groups: list[int], seconds: float) -> bool:
    """Whether no live (non-zombie) process is left in `groups` within `seconds`."""

    def live() -> list[int]:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in groups and fields[0] != "Z":
                members.append(int(stat.parent.name))
        return members

    deadline = time.monotonic() + seconds
    while live() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not live()


def _split_run_config(tiny_model_dir, out: Path) -> Path:
    config = out.parent / "split.yaml"
    config.write_text(
        f"""# a run whose collection is one shard per rise serve replica, merged
base_model: {tiny_model_dir}
out: {out}
iterations: 1
device: cpu
collect: {{limit: 8, turns: 2, samples: 2, max_new_tokens: 16}}
train: {{lr: 1.0e-3, max_steps: 1, batch_size: 4, save_steps: 1}}
evaluate: {{limit: 2, turns: 2, max_new_tokens: 8}}
server:
  command: {SERVE}
  replicas: 2
  split_collection: true
  startup_timeout: 300
  engine_options: {{max_concurrency: 4, timeout: 120}}
"""
    )
    return config


@pytest.fixture(scope="module")
def split_run(tiny_model_dir, tmp_path_factory):
    """A quick `rise run` with `server.split_collection` over two float64 replicas: (config
    file, run folder, its stderr)."""
    out = tmp_path_factory.mktemp("split") / "run"
    config = _split_run_config(tiny_model_dir, out)
    start = time.monotonic()
    done = subprocess.run([RISE, "run", str(config)], capture_output=True, text=True, timeout=600)
    print(f"\nrise run, split collection: {time.monotonic() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return config, out, done.stderr


def _lines(err: str) -> str:
    """Console output with rich's line wrapping undone (lines are joined by spaces)."""
    return " ".join(err.split())


@pytest.mark.slow
def test_rise_run_splits_its_collection_over_the_replicas(split_run):
    """`server.split_collection`: iteration 1 collects as two shards, shard I from replica I
    alone, at once, and the run itself merges them into iter1/collect (`rise merge`)."""
    from rise_llm.records import CollectedEpisode, read_jsonl
    from rise_llm.tasks.arith import ArithTask

    _, out, err = split_run
    err = _lines(err)
    merged = read_jsonl(out / "iter1/collect/episodes.jsonl", CollectedEpisode)
    order = [p.id for p in ArithTask().problems("train", 8)]
    assert [ep.problem_id for ep in merged] == order  # every problem once, in order
    for i in (0, 1):  # shard i holds problems i, i+2, ... and came from replica i+1 alone
        shard = read_jsonl(out / f"iter1/collect-shards/{i}/episodes.jsonl", CollectedEpisode)
        assert [ep.problem_id for ep in shard] == order[i::2]
        assert f"collect (shard {i}/2): 4/4 problems" in err
        sent = err.split(f"server {i + 1}/2: stopped; ")[1].split()[0]
        assert int(sent) > 0  # its requests sent
    assert "merge: 8 problems from 2 shards" in err
    assert not list((out / "base").glob("server-*.pid"))  # both stopped
    assert json.loads((out / "summary.json").read_text()).keys() == {"base", "iter1"}


@pytest.mark.slow
def test_a_split_collection_resumes_and_equals_the_unsplit_one(split_run, tmp_path, capsys):
    """A finished merge is skipped; a shard cut short resumes and the merge is made again, the
    same. The merged collection equals the unsharded collection of the same problems and seeds
    through both replicas (the run's collection without split_collection): every request's seed
    is its problem's and turn's (`seeds.request_seed`), whichever replica answers; float64
    servers, see SERVE."""
    from rise_llm import pipeline
    from rise_llm.records import CollectedEpisode, read_jsonl

    config_file, out, _ = split_run
    config = pipeline.load_run_config(config_file)
    merged_path = out / "iter1/collect/episodes.jsonl"
    merged = read_jsonl(merged_path, CollectedEpisode)

    pipeline._collect(config, 1, served=None)  # finished: nothing collected, no server needed
    assert "already holds the merged shards" in _lines(capsys.readouterr().err)

    cut = out / "iter1/collect-shards/1/episodes.jsonl"  # killed after its first episode
    cut.write_text(cut.read_text().splitlines(keepends=True)[0])
    shutil.rmtree(out / "iter1/collect")
    whole = dataclasses.replace(config.collect_config(1), out=str(tmp_path / "whole"))
    start = time.monotonic()
    with config.served(0) as served:
        pipeline._collect(config, 1, served)
        err = _lines(capsys.readouterr().err)
        unsplit = collect.run(whole, learner=served)
    print(f"\nresumed shard, merge, unsplit collection: {time.monotonic() - start:.1f} s")
    assert "collect (shard 1/2): resuming, 1 of 4 problems already done" in err
    assert "collect (shard 0/2)" not in err  # finished: not run again
    assert read_jsonl(merged_path, CollectedEpisode) == merged
    assert unsplit == merged


@pytest.mark.slow
def test_a_replica_killed_in_a_split_collection_hands_its_shard_to_the_others(
    split_run, tmp_path, capsys
):
    """Replica 2 is SIGKILLed (its process group) once it has answered a request of shard 1.
    Shard 0 finishes on replica 1; shard 1 fails, then resumes through the replicas that are up
    (replica 1), and the merge equals the split run's own collection: every problem once, the
    same samples (each request's seed is its problem's and turn's; float64 servers)."""
    from rise_llm import pipeline
    from rise_llm.records import CollectedEpisode, read_jsonl

    config_file, out, _ = split_run
    merged = read_jsonl(out / "iter1/collect/episodes.jsonl", CollectedEpisode)
    config = dataclasses.replace(pipeline.load_run_config(config_file), out=str(tmp_path / "run"))
    with config.served(0) as served:
        served.start()
        victim = served.members[1]
        url = served.engine.base_urls[1]

        def kill_after_an_answer() -> None:
            while victim.engine is None or victim.engine.stats.answered[url] < 1:
                time.sleep(0.005)  # polling for the condition, not asserting on time
            os.killpg(victim.process.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_after_an_answer, daemon=True)
        killer.start()
        pipeline._collect(config, 1, served)
        killer.join(timeout=5)
        err = _lines(capsys.readouterr().err)
    assert not killer.is_alive()  # it was killed during the collection
    assert "collect: shard 1/2 failed (" in err
    assert "resuming it through the replicas that are up" in err
    assert "collect: shard 0/2 failed" not in err
    assert read_jsonl(tmp_path / "run/iter1/collect/episodes.jsonl", CollectedEpisode) == merged


def test_shards_run_at_once_and_their_failures_are_named_after_all_ended():
    from rise_llm.pipeline import _at_once
    from rise_llm.progress import progress_bar

    finished, hidden = [], []

    def shard(name: str, error: BaseException | None):
        def job() -> None:
            hidden.append(progress_bar().disable)  # no live display per thread
            if error is not None:
                raise error
            finished.append(name)

        return job

    lost = RiseError("all 1 replicas of model 'm' failed")
    failed = _at_once({"0/2": shard("0/2", lost), "1/2": shard("1/2", None)})
    assert failed == {"0/2": lost}
    assert finished == ["1/2"] and hidden == [True, True]  # the other shard finished
    assert not progress_bar().disable  # the main thread keeps its bars
    with pytest.raises(ZeroDivisionError):  # not a RiseError: a bug, raised as it is
        _at_once({"0/2": shard("0/2", ZeroDivisionError()), "1/2": shard("1/2", lost)})
