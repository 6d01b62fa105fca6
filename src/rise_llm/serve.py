"""`rise serve MODEL`: an OpenAI-compatible server over the Hugging Face engine.

Endpoints: `GET /v1/models` and `POST /v1/chat/completions` (messages, n, temperature, top_p,
max_tokens, seed, stop), so every OpenAI client, and this project's `openai` engine, can sample
from a local checkpoint. Requests are generated one at a time (the engine batches each
request's `n` samples), so a request's samples depend only on its messages, parameters and
seed, never on which other requests arrived with it.

RISE mode (`--rise-turns K`, or the request field `rise_turns`) answers each request with the
paper's inference procedure without oracle (METHOD.md, "Metrics": m1@tK): K attempts, each
followed by the task's retry message whatever its truth, the final answer chosen by majority
over the turns (`metrics.majority_answer`). The chosen attempt is the choice's message; all
attempts come with it under `rise`. Test-time self-improvement as a service.

Abuse is refused, never served with a 500 or a hang: invalid JSON, a missing or mistyped field,
a role other than system/user/assistant, content that is not text, n, max_tokens or rise_turns
beyond the server's limits, a prompt beyond the model's context get 400, an unknown model 404,
a body over `max_body_bytes` 413 before it is read, each as an OpenAI error body whose `param`
and message name the field. With an API key (`api_key`, `api_key_env`) every endpoint wants it
as the bearer token; listening beyond loopback prints a warning.

`load_app` builds the application and `listen` serves it, so a test can wrap the application
first (tests/faulty_server.py adds injected faults to test clients).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rise_llm.engines.base import BATCH_SIZE, Completion, Engine, SamplingParams
from rise_llm.errors import RiseError, check_at_least, check_context_window, check_device
from rise_llm.metrics import MAJORITY_RULE, majority_answer
from rise_llm.records import Message, Problem, Turn
from rise_llm.rollout import default_context_window, judged_turn, play_turns
from rise_llm.tasks import get_task
from rise_llm.tasks.base import PromptFormat, Task

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """Settings of `rise serve`.

    Args:
        model: the model folder, .gguf file or Hub id to serve.
        chat_template: a Jinja file or text replacing the model's chat template.
        host: the address to listen on; loopback by default, so only this machine can reach it.
        port: the TCP port.
        served_model_name: the model id clients send and /v1/models lists (default: model).
        task: in RISE mode, the task whose retry message follows each turn and whose
            verifier reads the answers for the majority.
        task_options: the task's options.
        rise_turns: K > 0 answers every request by RISE over K turns without oracle (majority
            over turns); 0 samples plainly. A request's `rise_turns` field overrides it.
        context_window: W in RISE mode (default min(2, K), as `rise evaluate`).
        max_n: most choices per answer; below a request's n it imitates a server that ignores
            n (for testing clients).
        n_limit: a request asking for more choices than this is refused (400).
        max_tokens_limit: a request's max_tokens above this is refused (400), as is a prompt
            plus max_tokens beyond the model's context.
        rise_turns_limit: a request's rise_turns above this is refused (400).
        max_body_bytes: a request body larger than this is refused (413) without being read.
        api_key: requests must carry this key as their bearer token (401 otherwise); never
            printed, but visible to other users of this machine in `ps`: prefer api_key_env.
        api_key_env: the environment variable holding the API key (instead of api_key).
        device: "auto" (CUDA when present, else CPU), "cpu" or "cuda".
        dtype: "auto" (bfloat16 on a GPU that has it, else float32) or a dtype name.
        batch_size: most sequences the engine generates together.
    """

    model: str
    chat_template: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    rise_turns: int = 0
    context_window: int | None = None
    max_n: int = 128
    n_limit: int = 128
    max_tokens_limit: int = 4096
    rise_turns_limit: int = 16
    max_body_bytes: int = 1 << 20
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = BATCH_SIZE

    def __post_init__(self) -> None:
        check_at_least("serve", 0, rise_turns=self.rise_turns)
        check_at_least("serve", 1, max_n=self.max_n, batch_size=self.batch_size)
        check_at_least(
            "serve",
            1,
            n_limit=self.n_limit,
            max_tokens_limit=self.max_tokens_limit,
            rise_turns_limit=self.rise_turns_limit,
            max_body_bytes=self.max_body_bytes,
        )
        if self.api_key is not None and self.api_key_env is not None:
            raise RiseError("serve: give api_key or api_key_env, not both")
        if self.api_key == "":
            raise RiseError("serve: api_key is empty; give a key or leave it out")
        check_at_least("serve", 1, context_window=self.context_window)
        if self.rise_turns and self.context_window is not None:
            check_context_window("serve", self.context_window, self.rise_turns)
        check_device("serve", self.device)
        if not 0 <= self.port <= 65535:
            raise RiseError(f"serve: port must be in 0..65535, got {self.port}")

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


def question_of(prompt: PromptFormat, text: str) -> str:
    """The question inside a first user message written by `prompt.question_template`; the
    whole text when it does not follow the template.

    >>> question_of(PromptFormat(question_template="Q: {question}\\nA:"), "Q: 2+2?\\nA:")
    '2+2?'
    """
    template = getattr(prompt, "question_template", "{question}")
    before, _, after = template.partition("{question}")  # `tasks.base.fill` replaces literally
    fits = len(text) >= len(before) + len(after)
    if fits and text.startswith(before) and text.endswith(after):
        return text[len(before) : len(text) - len(after)]
    return text


@dataclass
class _RequestPrompt:
    """A request's messages open every episode; the task's retry message follows each turn."""

    messages: list[Message]
    retry: PromptFormat

    def first_messages(self, problem: Problem) -> list[Message]:
        return [dict(m) for m in self.messages]

    def retry_message(self, problem: Problem, feedback: str | None = None) -> Message:
        return self.retry.retry_message(problem, feedback)


@dataclass
class RiseAnswer:
    """One RISE episode of a request: the chosen attempt and all of them."""

    chosen: Turn
    answer: str | None
    turns: list[Turn]

    def metadata(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "chosen_turn": self.chosen.index,
            "majority_rule": MAJORITY_RULE,
            "attempts": [
                {
                    "turn": t.index,
                    "content": t.response,
                    "answer": t.answer,
                    "finish_reason": t.finish_reason,
                    "completion_tokens": t.num_tokens,
                }
                for t in self.turns
            ],
        }


def rise_answers(
    engine: Engine,
    task: Task,
    messages: Sequence[Message],
    n: int,
    turns: int,
    window: int,
    params: SamplingParams,
) -> list[RiseAnswer]:
    """`n` independent RISE episodes for a request: K turns without oracle (the task's retry
    message after each), the answer by majority over the turns; the chosen attempt is the most
    recent one giving it (the last attempt when none gave an answer)."""
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    question = question_of(task.prompt, last_user)
    prompt = _RequestPrompt(list(messages), task.prompt)
    # a request has no ground truth: `answer` is empty and the task's verdict is read only
    # for the answer it extracts (its reward means nothing and is not returned)
    problems = [Problem(id=str(k), question=question, answer="") for k in range(n)]
    episodes: list[list[Turn]] = [[] for _ in problems]

    def step(
        i: int, t: int, shown: list[Message], completions: list[Completion], verdicts: list
    ) -> tuple[str, None]:
        ((completion,), (verdict,)) = completions, verdicts
        episodes[i].append(judged_turn(t, shown, completion, verdict))
        # a request has no checks to give feedback from: the plain retry message follows
        return completion.text, None

    play_turns(
        prompt, problems, turns, window, params, lambda t: (engine, 1), task.verify, step, "rise"
    )
    answers = []
    for episode in episodes:
        winner = majority_answer(episode)
        giving = [t for t in episode if winner is not None and t.answer == winner]
        chosen = giving[-1] if giving else episode[-1]
        answers.append(RiseAnswer(chosen=chosen, answer=winner, turns=episode))
    return answers


class ChatMessage(BaseModel):
    """One message of a request: text from a system, user or assistant."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str  # text only: content parts (images, audio, lists of parts) are refused


class ChatRequest(BaseModel):
    """The fields of a chat-completions request this server reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None  # any integer: `seeds.stream_seed` hashes it for torch
    stop: str | list[str] | None = None
    rise_turns: int | None = Field(None, ge=0)  # an extension: RISE mode for this request


_FIELDS = set(ChatRequest.model_fields) | set(ChatMessage.model_fields)


class RequestError(Exception):
    """A request this server refuses, answered with `status` and an OpenAI error body whose
    `param` names the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind, self.code = kind, code

    def response(self):
        return _error(self.status, self.message, self.kind, param=self.param, code=self.code)


def _error(
    status: int,
    message: str,
    kind: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    code: str | int | None = None,
):
    """An error response in OpenAI's format; `code` is the status unless given."""
    from fastapi.responses import JSONResponse

    error = {"message": message, "type": kind, "param": param, "code": code or status}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def field_path(loc: Sequence[str | int]) -> str:
    """A validation error's location as the field it names; pydantic's union-member tags
    (`str`, `list[str]`) are dropped.

    >>> field_path(("messages", 0, "content"))
    'messages[0].content'
    >>> field_path(("stop", "list[str]", 1))
    'stop[1]'
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _FIELDS:
            path += f".{part}" if path else part
    return path or "body"


def _invalid(error: ValidationError) -> RequestError:
    """The 400 naming each invalid field (the first three), its param the first of them."""
    found: dict[str, str] = {}
    for e in error.errors(include_url=False, include_input=False):
        path = field_path(e["loc"])
        message = e["msg"]
        if path.endswith(".content") and e["type"] == "string_type":
            message = "must be text (a string): content parts such as images are not served"
        elif path == "stop" and e["type"] in ("string_type", "list_type"):
            message = "must be a string or a list of strings"
        found.setdefault(path, message)
    listed = "; ".join(f"{path}: {message}" for path, message in list(found.items())[:3])
    return RequestError(400, listed, param=next(iter(found)))


async def read_request(request, limit: int) -> ChatRequest:
    """The request body as a ChatRequest. A body over `limit` bytes is refused (413) as soon
    as its Content-Length or its bytes so far say so, so it is never read whole; invalid
    JSON, anything but an object, and invalid fields are refused (400)."""
    too_large = RequestError(
        413, f"the request body is over this server's limit of {limit} bytes (--max-body-bytes)"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        reason = str(e) if isinstance(e, ValueError) else "nested too deeply"
        raise RequestError(400, f"the request body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise RequestError(
            400, f"the request body must be a JSON object, not {type(data).__name__}"
        )
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        raise _invalid(e) from None


def check_limits(body: ChatRequest, config: ServeConfig) -> None:
    """Refuse (400) a request asking for more than the server's limits allow."""
    asked = {
        "n": (body.n, config.n_limit, "--n-limit"),
        "max_tokens": (body.max_tokens, config.max_tokens_limit, "--max-tokens-limit"),
        "max_completion_tokens": (
            body.max_completion_tokens,
            config.max_tokens_limit,
            "--max-tokens-limit",
        ),
        "rise_turns": (body.rise_turns, config.rise_turns_limit, "--rise-turns-limit"),
    }
    for name, (value, limit, flag) in asked.items():
        if value is not None and value > limit:
            raise RequestError(
                400, f"{name}: {value} is above this server's limit of {limit} ({flag})", name
            )


def check_context(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    """Refuse (400) a prompt that, with the tokens to generate, exceeds the model's context."""
    if context and prompt_tokens + max_new_tokens > context:
        raise RequestError(
            400,
            f"messages: {prompt_tokens} tokens plus {max_new_tokens} to generate exceed "
            f"this model's context of {context} tokens",
            "messages",
            code="context_length_exceeded",
        )


def create_app(engine, config: ServeConfig, task: Task):
    """The FastAPI application serving `engine` (an HFEngine: it has a tokenizer).

    Every refusal and failure is an OpenAI error body: malformed requests 400 (413 for an
    oversized body), a missing or wrong key 401, an unknown model or path 404, a bug 500.
    """
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from rise_llm.chat import prompt_ids

    app = FastAPI(title="rise serve", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one request generates at a time: its samples depend on it alone
    key = _api_key(config)
    context = getattr(getattr(engine, "model", None), "config", None)
    context = getattr(context, "max_position_embeddings", None)

    @app.exception_handler(RequestError)
    async def refused(request, error: RequestError):
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):  # an unknown path, a wrong method
        return _error(error.status_code, str(error.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(request, error: Exception):  # a bug: logged, answered 500
        return _error(500, f"internal error: {type(error).__name__}", "server_error")

    @app.middleware("http")
    async def authenticate(request, call_next):
        given = request.headers.get("authorization", "")
        if key is not None and not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return _error(401, "missing or wrong API key", "authentication_error")
        return await call_next(request)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": config.name, "object": "model", "created": 0, "owned_by": "rise-llm"}
        return {"object": "list", "data": [card]}

    async def chat(request):  # a plain Starlette route: the body is read and checked here
        body = await read_request(request, config.max_body_bytes)
        if body.model != config.name:
            raise RequestError(
                404,
                f"model {body.model!r} not served; this server has {config.name!r}",
                "model",
                kind="not_found",
            )
        check_limits(body, config)
        messages = [m.model_dump() for m in body.messages]
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        params = SamplingParams(
            temperature=body.temperature,
            top_p=body.top_p,
            max_new_tokens=body.max_tokens
            or body.max_completion_tokens
            or task.default_max_new_tokens,
            stop=tuple(stop),
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        )
        prompt_tokens = len(prompt_ids(engine.tokenizer, messages))
        check_context(prompt_tokens, params.max_new_tokens, context)
        n = min(body.n, config.max_n)
        turns = config.rise_turns if body.rise_turns is None else body.rise_turns

        def generate() -> list[dict[str, Any]]:
            with lock:
                if turns == 0:
                    completions = engine.generate([messages], n, params, desc="serve")[0]
                    return [_choice(k, c) for k, c in enumerate(completions)]
                window = config.context_window or default_context_window(turns)
                if window > turns:
                    raise RiseError(f"context_window {window} exceeds rise_turns {turns}")
                found = rise_answers(engine, task, messages, n, turns, window, params)
                return [_rise_choice(k, a) for k, a in enumerate(found)]

        try:
            choices = await run_in_threadpool(generate)
        except RiseError as e:
            raise RequestError(400, str(e)) from None
        completion_tokens = sum(c.pop("_tokens") for c in choices)
        answer = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": config.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return JSONResponse(answer)

    app.add_route("/v1/chat/completions", chat, methods=["POST"])
    return app


def _choice(index: int, c: Completion) -> dict[str, Any]:
    message = {"role": "assistant", "content": c.text}
    return {
        "index": index,
        "message": message,
        "finish_reason": c.finish_reason,
        "_tokens": c.num_tokens,
    }


def _rise_choice(index: int, a: RiseAnswer) -> dict[str, Any]:
    chosen = a.chosen
    return {
        "index": index,
        "message": {"role": "assistant", "content": chosen.response},
        "finish_reason": chosen.finish_reason,
        "rise": a.metadata(),
        "_tokens": sum(t.num_tokens for t in a.turns),
    }


def _api_key(config: ServeConfig) -> str | None:
    """The key requests must carry: api_key, or the value of api_key_env (which must be set)."""
    import os

    if config.api_key_env is None:
        return config.api_key
    key = os.environ.get(config.api_key_env)
    if not key:
        raise RiseError(f"serve: api_key_env names ${config.api_key_env}, which is not set")
    return key


def load_app(config: ServeConfig):
    """Load the model and the task; the application serving them (not yet listening)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise RiseError(
            "rise serve needs fastapi and uvicorn: pip install 'rise-llm[serve]'"
        ) from None

    from rise_llm.engines.hf import HFEngine

    task = get_task(config.task, **config.task_options)
    if hasattr(task, "ready"):  # a code task: its verdicts run the problem's own tests
        raise RiseError(
            f"rise serve: task {config.task!r} judges a response by running its problem's "
            "tests, which a request does not carry; serve with a task that reads the answer "
            "(arith, gsm8k, math, jsonl)"
        )
    engine = HFEngine.load(
        config.model,
        device=config.device,
        dtype=config.dtype,
        chat_template=config.chat_template,
        batch_size=config.batch_size,
    )
    return create_app(engine, config, task)


def listen(app, config: ServeConfig, note: str = "") -> None:
    """Serve `app` on the config's host and port until interrupted; `note` joins the banner."""
    import uvicorn

    from rise_llm.progress import console

    if config.host not in LOOPBACK:
        unlocked = "" if config.api_key or config.api_key_env else ", and no API key is required"
        console.print(
            f"[yellow]rise serve: listening on {config.host}: reachable from the network{unlocked}"
        )
    mode = f"RISE over {config.rise_turns} turns" if config.rise_turns else "plain sampling"
    console.print(
        f"rise serve: {config.name!r} on http://{config.host}:{config.port}/v1 ({mode}{note})",
        soft_wrap=True,
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )


def run(config: ServeConfig) -> None:
    """Load the model and serve it until interrupted."""
    listen(load_app(config), config)
