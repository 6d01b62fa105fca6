"""`rise serve` pieces that need no server: the RISE procedure per request (scripted engine),
the question inside a templated prompt, the seeded fault injector and the settings checks; and
the application in-process (Starlette's TestClient over `create_app` with the tiny model): every
malformed request is a 4xx OpenAI error naming the field, never a 500 or a hang. The HTTP path
itself is tested against real servers in test_openai_engine.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from rise_llm.engines.base import Completion, SamplingParams
from rise_llm.errors import RiseError
from rise_llm.serve import ServeConfig, create_app, field_path, question_of, rise_answers
from rise_llm.tasks import get_task
from rise_llm.tasks.base import REFERENCE_RETRY, PromptFormat


class ScriptedEngine:
    """Answers turn t of every conversation with script[t-1]; records what it was asked."""

    def __init__(self, script: list[str]):
        self.script = script
        self.calls: list[list[list[dict]]] = []

    def generate(self, conversations, n, params, desc="generate", keys=None):
        assert n == 1
        self.calls.append([list(c) for c in conversations])
        text = self.script[len(self.calls) - 1]
        return [
            [Completion(text=text, num_tokens=len(text), finish_reason="stop")]
            for _ in conversations
        ]


REQUEST = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 5?"},
]


@pytest.mark.parametrize(
    ("script", "answer", "chosen_turn"),
    [
        ([r"\boxed{7}", r"\boxed{6}", r"\boxed{7}"], "7", 3),  # 7 has two votes
        ([r"\boxed{7}", r"\boxed{7}", r"\boxed{6}"], "7", 2),  # the most recent attempt giving 7
        ([r"\boxed{6}", r"\boxed{7}", "no answer"], "7", 2),  # 1-1 tie: the most recent answer
        (["none", "still none", "nothing"], None, 3),  # no votes: the last attempt
    ],
)
def test_rise_answers_choose_by_majority_over_turns(script, answer, chosen_turn):
    engine = ScriptedEngine(script)
    task = get_task("arith")
    params = SamplingParams(max_new_tokens=8, seed=3)
    (found,) = rise_answers(engine, task, REQUEST, n=1, turns=3, window=3, params=params)
    assert found.answer == answer
    assert found.chosen.index == chosen_turn
    assert found.chosen.response == script[chosen_turn - 1]
    assert [t.response for t in found.turns] == script
    meta = found.metadata()
    assert meta["chosen_turn"] == chosen_turn and len(meta["attempts"]) == 3
    assert "ties go to the most recent" in meta["majority_rule"]


def test_rise_answers_send_the_retry_message_without_oracle_and_respect_the_window():
    engine = ScriptedEngine([r"\boxed{7}", r"\boxed{8}", r"\boxed{9}"])
    task = get_task("arith")
    found = rise_answers(engine, task, REQUEST, n=2, turns=3, window=2, params=SamplingParams())
    assert len(found) == 2  # n independent episodes, batched per turn
    assert [len(call) for call in engine.calls] == [2, 2, 2]
    retry = {"role": "user", "content": REFERENCE_RETRY.format(question="What is 2 + 5?")}
    # turn 2: the request, attempt 1, the retry message (even though 7 is right: no oracle)
    assert engine.calls[1][0] == [*REQUEST, {"role": "assistant", "content": r"\boxed{7}"}, retry]
    # turn 3 with W=2: only the most recent attempt/feedback pair is shown
    assert engine.calls[2][0] == [*REQUEST, {"role": "assistant", "content": r"\boxed{8}"}, retry]


@pytest.mark.parametrize(
    ("template", "text", "question"),
    [
        ("{question}", "What is 1 + 1?", "What is 1 + 1?"),
        ("Solve: {question}\nEnd with \\boxed{}.", "Solve: 3+4\nEnd with \\boxed{}.", "3+4"),
        ("Solve: {question}!", "something else", "something else"),  # not the template: all
    ],
)
def test_question_of_reads_the_question_inside_the_template(template, text, question):
    assert question_of(PromptFormat(question_template=template), text) == question


def test_fault_injector_is_seeded_and_near_its_rate():
    from faulty_server import FaultInjector

    draws = [FaultInjector(None, 0.3, seed=5, hang=0) for _ in range(2)]
    first, second = ([d.draw() for _ in range(2000)] for d in draws)
    assert first == second
    kinds = Counter(k for k in first if k)
    assert 0.26 < sum(kinds.values()) / 2000 < 0.34
    assert set(kinds) == {"500", "429", "hang"}
    assert [FaultInjector(None, 0.0, seed=0, hang=0).draw() for _ in range(50)] == [None] * 50


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rise_turns": -1}, "rise_turns must be at least 0"),
        ({"max_n": 0}, "max_n must be at least 1"),
        ({"port": 70000}, "port must be in 0..65535"),
        ({"n_limit": 0}, "n_limit must be at least 1"),
        ({"max_tokens_limit": 0}, "max_tokens_limit must be at least 1"),
        ({"rise_turns_limit": 0}, "rise_turns_limit must be at least 1"),
        ({"max_body_bytes": 0}, "max_body_bytes must be at least 1"),
        ({"api_key": "k", "api_key_env": "K"}, "give api_key or api_key_env, not both"),
        ({"api_key": ""}, "api_key is empty"),
    ],
)
def test_serve_settings_are_checked(settings, message):
    with pytest.raises(RiseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ServeConfig(model="m", **settings)


def test_serve_listens_on_loopback_by_default():
    assert ServeConfig(model="m").host == "127.0.0.1"


@pytest.mark.parametrize("task", ["arith", "gsm8k", "math"])
def test_question_of_recovers_the_question_from_each_tasks_first_message(task):
    from rise_llm.records import Problem

    prompt = get_task(task).prompt
    problem = Problem(id="p", question=r"What is {x} if x = \frac{1}{2}?", answer="")
    assert question_of(prompt, prompt.first_messages(problem)[-1]["content"]) == problem.question


def test_the_api_key_is_not_in_the_configs_repr():
    assert "sk-secret" not in repr(ServeConfig(model="m", api_key="sk-secret"))


# --- the application in-process: malformed requests -------------------------------------------

USER = {"role": "user", "content": "What is 1 + 2?"}
KEY = "sk-test-in-process"


def request(**fields) -> dict:
    return {"model": "m", "messages": [USER], "max_tokens": 4, **fields}


@pytest.fixture(scope="module")
def client(tiny_engine):
    from fastapi.testclient import TestClient

    config = ServeConfig(model="m", api_key=KEY, max_body_bytes=4096)
    app = create_app(tiny_engine, config, get_task("arith"))
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers["authorization"] = f"Bearer {KEY}"
        yield c


MALFORMED = [
    # (case, body sent as bytes or JSON, status, param, words of the message)
    ("invalid JSON", b'{"model": "m", messages', 400, None, "not valid JSON"),
    ("empty body", b"", 400, None, "not valid JSON"),
    ("not UTF-8", b'{"model": "\xff\xfe"}', 400, None, "JSON"),
    ("nested too deeply", b"[" * 1500 + b"]" * 1500, 400, None, "nested too deeply"),
    ("NaN temperature", b'{"model": "m", "messages": [], "temperature": NaN}', 400, None, None),
    ("a list, not an object", [USER], 400, None, "must be a JSON object, not list"),
    ("no model", {"messages": [USER]}, 400, "model", "model: Field required"),
    ("no messages", {"model": "m"}, 400, "messages", "messages: Field required"),
    ("empty messages", request(messages=[]), 400, "messages", "at least 1 item"),
    ("messages not a list", request(messages="hi"), 400, "messages", "messages: "),
    (
        "unknown role",
        request(messages=[{"role": "tool", "content": "x"}]),
        400,
        "messages[0].role",
        "'system', 'user' or 'assistant'",
    ),
    (
        "no content",
        request(messages=[USER, {"role": "user"}]),
        400,
        "messages[1].content",
        "Field required",
    ),
    (
        "content parts",
        request(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
        400,
        "messages[0].content",
        "must be text",
    ),
    (
        "an image",
        request(messages=[{"role": "user", "content": {"type": "image_url", "url": "x"}}]),
        400,
        "messages[0].content",
        "must be text",
    ),
    ("content a number", request(messages=[{"role": "user", "content": 7}]), 400, None, "text"),
    ("n 0", request(n=0), 400, "n", "greater than or equal to 1"),
    ("n over n_limit", request(n=129), 400, "n", "n: 129 is above this server's limit of 128"),
    ("n not a number", request(n="many"), 400, "n", "valid integer"),
    ("max_tokens 0", request(max_tokens=0), 400, "max_tokens", "greater than or equal to 1"),
    (
        "max_tokens over its limit",
        request(max_tokens=10**9),
        400,
        "max_tokens",
        "1000000000 is above this server's limit of 4096 (--max-tokens-limit)",
    ),
    (
        "max_completion_tokens over its limit",
        request(max_tokens=None, max_completion_tokens=5000),
        400,
        "max_completion_tokens",
        "above this server's limit of 4096",
    ),
    (
        "prompt beyond the model's context",
        request(messages=[{"role": "user", "content": "9" * 2000}], max_tokens=100),
        400,
        "messages",
        "plus 100 to generate exceed this model's context of 2048 tokens",
    ),
    ("negative temperature", request(temperature=-0.5), 400, "temperature", "greater than"),
    ("temperature above 2", request(temperature=3), 400, "temperature", "less than"),
    ("top_p 0", request(top_p=0), 400, "top_p", "greater than 0"),
    ("top_p above 1", request(top_p=1.5), 400, "top_p", "less than or equal to 1"),
    ("stop a number", request(stop=5), 400, "stop", "a string or a list of strings"),
    ("negative rise_turns", request(rise_turns=-1), 400, "rise_turns", "greater than"),
    ("rise_turns over its limit", request(rise_turns=17), 400, "rise_turns", "limit of 16"),
    ("unknown model", request(model="gpt-4"), 404, "model", "model 'gpt-4' not served"),
    (
        "oversized body",
        request(messages=[{"role": "user", "content": "x" * 5000}]),
        413,
        None,
        "over this server's limit of 4096 bytes (--max-body-bytes)",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_a_malformed_request_is_a_4xx_openai_error_naming_the_field(
    client, body, status, param, words
):
    if isinstance(body, bytes):
        sent = {"content": body, "headers": {"content-type": "application/json"}}
    else:
        sent = {"json": body}
    response = client.post("/v1/chat/completions", **sent)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status or error["code"] == "context_length_exceeded"
    assert error["type"] in ("invalid_request_error", "not_found")
    if param is not None:
        assert error["param"] == param and error["message"].startswith(param)
    if words is not None:
        assert words in error["message"]


def test_an_oversized_body_without_a_length_is_refused_unread(client):
    sent = []

    def chunks():  # a chunked body (no Content-Length): 100 chunks of 1 KiB, limit 4 KiB
        for _ in range(100):
            sent.append(1)
            yield b"x" * 1024

    response = client.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413
    assert "--max-body-bytes" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), ("Bearer wrong", 401), (KEY, 401), (f"Bearer {KEY}", 200)],
)
def test_only_the_bearer_key_gets_in(client, authorization, status):
    headers = {"authorization": authorization} if authorization else {}
    for path, method in [("/v1/models", "GET"), ("/v1/chat/completions", "POST")]:
        with client_without_key(client) as c:
            response = c.request(method, path, json=request(), headers=headers)
        assert response.status_code == status, (path, response.text)
        if status == 401:
            assert response.json()["error"]["type"] == "authentication_error"
            assert KEY not in response.text


def client_without_key(client):
    """`client` without its default authorization header, for the length of a `with`."""
    import contextlib

    @contextlib.contextmanager
    def swapped():
        saved = client.headers.pop("authorization")
        try:
            yield client
        finally:
            client.headers["authorization"] = saved

    return swapped()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("GET", "/v1/chat/completions", 405), ("GET", "/docs", 404)],
)
def test_unknown_paths_and_methods_are_openai_errors(client, method, path, status):
    response = client.request(method, path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == status


def test_a_good_request_with_any_seed_is_answered(client):
    for seed in (None, -1, 2**80):  # seeds.stream_seed hashes every seed for torch
        response = client.post("/v1/chat/completions", json=request(seed=seed, n=2))
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["choices"]) == 2 and body["usage"]["completion_tokens"] >= 2


def test_a_bug_while_generating_is_a_500_openai_error(tiny_engine):
    from fastapi.testclient import TestClient

    class Broken:
        tokenizer = tiny_engine.tokenizer

        def generate(self, *args, **kwargs):
            raise ZeroDivisionError("a bug")

    app = create_app(Broken(), ServeConfig(model="m"), get_task("arith"))
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.post("/v1/chat/completions", json=request())
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal error: ZeroDivisionError",
        "type": "server_error",
        "param": None,
        "code": 500,
    }


@pytest.mark.parametrize(
    ("loc", "path"),
    [(("n",), "n"), (("messages", 2, "role"), "messages[2].role"), ((), "body")],
)
def test_field_path_names_the_field(loc, path):
    assert field_path(loc) == path


def test_a_code_task_is_refused_before_the_model_loads():
    from rise_llm.serve import ServeConfig, load_app

    with pytest.raises(RiseError, match=r"task 'humaneval' judges a response by running its"):
        load_app(ServeConfig(model="no/such-model", task="humaneval"))
