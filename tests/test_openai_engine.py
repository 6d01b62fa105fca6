"""The openai engine against real `rise serve` processes on 127.0.0.1 (the HTTP path a vLLM server
takes), with the tiny toy model.

Two servers run for the module: a clean one, and a faulty one (`faulty_server.py`: rise serve's
application behind a fault injector) that fails about 30% of requests on purpose (500, 429, or
a hang past the client's timeout; seeded), returns at most 2 choices per request (a server that
ignores larger n) and requires an API key. The same requests must give
exactly the same samples from both: nothing lost, duplicated or reordered by the retries.
"""

from __future__ import annotations

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from rise_llm.engines.base import SamplingParams
from rise_llm.engines.load import load_engine
from rise_llm.engines.openai import OpenAIEngine, OpenAIOptions, parse_spec
from rise_llm.engines.served import ServedModel, free_port
from rise_llm.errors import RiseError
from rise_llm.tasks import get_task

RISE = str(Path(sys.executable).parent / "rise")
KEY_ENV = "RISE_TEST_SERVER_KEY"
KEY = "sk-test-4f1c9a7e-never-written"
FLAGS = "{model} --port {port} --device cpu --dtype float32 --batch-size 16"
SERVE = f"{RISE} serve {FLAGS}"
# rise serve's application with injected faults (the injector lives with the tests)
FAULTY = (
    f"{sys.executable} {Path(__file__).parent / 'faulty_server.py'} {FLAGS} "
    f"--fault-rate 0.3 --fault-seed 0 --fault-hang 8 --max-n 2 --api-key-env {KEY_ENV}"
)
# the client gives up on a request after 5 s; a hung request answers after 8 s
CLIENT = {"timeout": 5.0, "max_retries": 12, "max_concurrency": 3}


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv(KEY_ENV, KEY)  # the faulty server reads it at start, the client per request
    logs = tmp_path_factory.mktemp("servers")
    clean = ServedModel(SERVE, str(tiny_model_dir), logs / "clean.log", 300, CLIENT)
    faulty = ServedModel(
        FAULTY,
        str(tiny_model_dir),
        logs / "faulty.log",
        300,
        CLIENT | {"api_key_env": KEY_ENV},
    )
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServedModel.start, (clean, faulty)))
        yield clean, faulty
    finally:
        clean.stop()
        faulty.stop()
        patch.undo()


def conversations(count: int) -> list[list[dict[str, str]]]:
    task = get_task("arith")
    return [task.prompt.first_messages(p) for p in task.problems("train", count)]


def fresh(served: ServedModel) -> OpenAIEngine:
    """A new engine (with its own request counts) for the served model."""
    return OpenAIEngine(served.engine.model, served.engine.base_url, served.engine.options)


PARAMS = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)


def test_the_same_requests_give_the_same_samples_despite_30_percent_faults(servers):
    clean, faulty = servers
    convs = conversations(40)
    expected = clean.engine.generate(convs, n=2, params=PARAMS)
    faults_before = _injected(faulty)
    engine = fresh(faulty)
    got = engine.generate(convs, n=2, params=PARAMS)
    stats = engine.stats
    injected = _injected(faulty) - faults_before

    lost = sum(max(0, 2 - len(g)) for g in got)
    duplicated = sum(max(0, len(g) - 2) for g in got)
    print(
        f"\nfault injection (rate 0.3, seed 0, 40 conversations x n=2): {stats.summary()}; "
        f"server injected {injected['500']} x 500, {injected['429']} x 429, {injected['hang']} "
        f"hangs; samples lost {lost}, duplicated {duplicated}"
    )
    assert got == expected  # every sample, in order: none lost, duplicated or reordered
    assert lost == duplicated == 0 and stats.samples == 80
    assert sum(injected.values()) >= 5  # the faults did happen (12 expected)
    assert stats.errors[500] == injected["500"] and stats.errors[429] == injected["429"]
    assert stats.timeouts >= injected["hang"]
    assert stats.retried == stats.failed  # every failed request was retried until it succeeded
    assert stats.calls == 40 and stats.sent == 40 + stats.retried


def test_a_server_that_returns_fewer_choices_gets_repeated_requests(servers):
    clean, faulty = servers
    convs = conversations(6)
    engine = fresh(faulty)
    got = engine.generate(convs, n=5, params=PARAMS)  # the server returns 2 at most
    first_two = clean.engine.generate(convs, n=2, params=PARAMS)
    for samples, reference in zip(got, first_two, strict=True):
        assert len(samples) == 5
        assert samples[:2] == reference  # round 0 is the same request as on the clean server
        assert len({s.text for s in samples}) == 5  # later rounds draw with new seeds
    assert engine.stats.short == 6 * 2  # 5 = 2 + 2 + 1: two short answers each
    assert engine.stats.calls == 6 * 3


def test_the_api_key_comes_from_the_environment_only(servers, monkeypatch):
    _, faulty = servers
    monkeypatch.delenv(KEY_ENV)
    engine = OpenAIEngine(faulty.engine.model, faulty.engine.base_url, OpenAIOptions(KEY_ENV))
    with pytest.raises(RiseError, match=rf"refused the API key \(401\); set it in \${KEY_ENV}"):
        engine.generate(conversations(1), n=1, params=PARAMS)


def test_collect_with_a_served_teacher_writes_no_key(servers, tiny_engine, tmp_path):
    from rise_llm import collect

    _, faulty = servers
    spec = f"openai:{faulty.engine.model}@{faulty.engine.base_url}"
    config = collect.CollectConfig(
        model="in-process learner",
        teacher=spec,
        out=str(tmp_path / "collect"),
        limit=5,
        samples=3,
        max_new_tokens=16,
        engine_options=CLIENT | {"api_key_env": KEY_ENV},
    )
    episodes = collect.run(config, learner=tiny_engine)
    assert sorted(e.problem_id for e in episodes) == sorted(
        p.id for p in get_task("arith").problems("train", 5)
    )
    for episode in episodes:
        for turn in episode.turns[1:]:
            assert turn.source == "teacher" and len(turn.attempts) == 3
    written = [p for p in (tmp_path / "collect").rglob("*") if p.is_file()]
    assert written and not any(KEY in p.read_text() for p in written)
    recorded = json.loads((tmp_path / "collect" / "config.json").read_text())["config"]
    assert recorded["teacher"] == spec and recorded["engine_options"]["api_key_env"] == KEY_ENV


def test_evaluate_a_served_model_through_its_spec(servers, tmp_path):
    from rise_llm import evaluate

    clean, _ = servers
    spec = f"openai:{clean.engine.model}@{clean.engine.base_url}"
    config = evaluate.EvaluateConfig(
        model=spec, limit=3, turns=2, max_new_tokens=16, out=str(tmp_path / "eval")
    )
    result = evaluate.run(config)
    assert result.metrics.n == 3 and len(result.metrics.acc) == 2
    assert len(result.episodes) == 3 + 3 + 3 * 2  # no oracle, oracle, 2 parallel samples


def test_rise_mode_returns_the_majority_choice_with_its_attempts(servers):
    clean, _ = servers
    client = openai.OpenAI(base_url=clean.engine.base_url, api_key="none", max_retries=0)
    response = client.chat.completions.create(
        model=clean.engine.model,
        messages=conversations(1)[0],
        n=2,
        max_tokens=16,
        seed=4,
        extra_body={"rise_turns": 3},
    )
    assert len(response.choices) == 2
    for choice in response.choices:
        rise = choice.model_extra["rise"]
        assert [a["turn"] for a in rise["attempts"]] == [1, 2, 3]
        chosen = rise["attempts"][rise["chosen_turn"] - 1]
        assert choice.message.content == chosen["content"]
        assert chosen["answer"] == rise["answer"] or rise["answer"] is None
    assert response.usage.completion_tokens == sum(
        a["completion_tokens"] for c in response.choices for a in c.model_extra["rise"]["attempts"]
    )


def test_malformed_requests_to_a_real_server_are_4xx_and_it_serves_on(servers):
    clean, _ = servers
    url = f"{clean.engine.base_url}/chat/completions"
    good = {"model": clean.engine.model, "messages": conversations(1)[0], "max_tokens": 8}
    bad = [
        (b"{not json", 400),
        ({**good, "messages": []}, 400),
        ({**good, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
        ({**good, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400),
        ({**good, "n": 10_000}, 400),
        ({**good, "max_tokens": 10**9}, 400),
        ({**good, "temperature": -1}, 400),
        ({**good, "model": "no-such-model"}, 404),
    ]
    for body, status in bad:
        answered, error = _post(url, body)
        assert answered == status, error
        assert set(error["error"]) == {"message", "type", "param", "code"}
    # a body of 3 MiB announced, 1 KiB of it sent: refused from its Content-Length, unread
    head, _, error = _announce(url, 3 << 20, b"x" * 1024).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"--max-body-bytes" in error
    # and it still answers: a seeded good request gets its choice (the tiny model may sample an
    # end of turn first, so the text itself can be empty)
    answered, answer = _post(url, {**good, "seed": 3})
    assert answered == 200 and len(answer["choices"]) == 1, answer
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] >= 1


def _announce(url: str, length: int, part: bytes) -> bytes:
    """The raw answer to a POST that announces a body of `length` bytes and sends only `part`."""
    import socket
    import urllib.parse

    where = urllib.parse.urlsplit(url)
    head = (
        f"POST {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection((where.hostname, where.port), timeout=30) as s:
        s.sendall(head.encode() + part)
        answer = b""
        while not answer.endswith(b"}}") and (chunk := s.recv(65536)):
            answer += chunk
    return answer


def _post(url: str, body: dict | bytes) -> tuple[int, dict]:
    """The status and JSON answer of a POST of `body` (bytes as given, else as JSON)."""
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_an_unknown_model_is_a_one_line_error(servers):
    clean, _ = servers
    engine = OpenAIEngine("no-such-model", clean.engine.base_url, OpenAIOptions(max_retries=0))
    with pytest.raises(RiseError, match="answered 404: no such model"):
        engine.generate(conversations(1), n=1, params=PARAMS)


def test_an_unreachable_server_is_a_one_line_error():
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = OpenAIEngine("m", base_url, OpenAIOptions(max_retries=1, timeout=5))
    with pytest.raises(
        RiseError, match=r"could not reach .* after 1 retries; is the server running"
    ):
        engine.generate(conversations(1), n=1, params=PARAMS)
    assert engine.stats.sent == 2 and engine.stats.failed == 2


def test_openai_without_a_key_is_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine = load_engine("openai:gpt-3.5-turbo")
    with pytest.raises(
        RiseError, match=r"set the API key of https://api.openai.com/v1 in \$OPENAI_API_KEY"
    ):
        engine.generate(conversations(1), n=1, params=PARAMS)
    assert engine.stats.sent == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("openai:", "expected openai:MODEL or openai:MODEL@BASE_URL"),
        ("openai:@http://127.0.0.1:8000/v1", "expected openai:MODEL"),
        ("openai:m@127.0.0.1:8000", "must start with http:// or https://"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(RiseError, match=re.escape(message)):
        parse_spec(spec)


def test_engine_options_are_validated():
    with pytest.raises(RiseError, match=r"engine_options\.bogus: unknown setting"):
        load_engine("openai:m@http://127.0.0.1:1/v1", engine_options={"bogus": 1})
    with pytest.raises(RiseError, match="max_concurrency must be at least 1"):
        load_engine("openai:m@http://127.0.0.1:1/v1", engine_options={"max_concurrency": 0})


def _injected(served: ServedModel):
    """The faults the server reports in its log so far, by kind."""
    from collections import Counter

    return Counter(re.findall(r"faulty server: fault (\w+) on request", served.log.read_text()))
