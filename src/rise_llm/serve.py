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

`load_app` builds the application and `listen` serves it, so a test can wrap the application
first (tests/faulty_server.py adds injected faults to test clients).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
        api_key_env: when set, requests must carry this environment variable's value as their
            bearer token (401 otherwise); the key itself is never printed.
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
    api_key_env: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = BATCH_SIZE

    def __post_init__(self) -> None:
        check_at_least("serve", 0, rise_turns=self.rise_turns)
        check_at_least("serve", 1, max_n=self.max_n, batch_size=self.batch_size)
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

    def retry_message(self, problem: Problem) -> Message:
        return self.retry.retry_message(problem)


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

    def step(i: int, t: int, shown: list[Message], completions: list[Completion]) -> str:
        (completion,) = completions
        episodes[i].append(judged_turn(task, problems[i], t, shown, completion))
        return completion.text

    play_turns(prompt, problems, turns, window, params, lambda t: (engine, 1), step, "rise")
    answers = []
    for episode in episodes:
        winner = majority_answer(episode)
        giving = [t for t in episode if winner is not None and t.answer == winner]
        chosen = giving[-1] if giving else episode[-1]
        answers.append(RiseAnswer(chosen=chosen, answer=winner, turns=episode))
    return answers


class ChatMessage(BaseModel):
    role: str
    content: str


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
    seed: int | None = None
    stop: str | list[str] | None = None
    rise_turns: int | None = Field(None, ge=0)  # an extension: RISE mode for this request


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(engine, config: ServeConfig, task: Task):
    """The FastAPI application serving `engine` (an HFEngine: it has a tokenizer)."""
    from fastapi import FastAPI, Header
    from fastapi.concurrency import run_in_threadpool

    from rise_llm.chat import prompt_ids

    app = FastAPI(title="rise serve")
    lock = threading.Lock()  # one request generates at a time: its samples depend on it alone
    key = _api_key(config.api_key_env)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": config.name, "object": "model", "created": 0, "owned_by": "rise-llm"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, authorization: str | None = Header(None)):
        if key is not None and authorization != f"Bearer {key}":
            return _error(401, "missing or wrong API key", "authentication_error")
        if body.model != config.name:
            return _error(
                404,
                f"model {body.model!r} not served; this server has {config.name!r}",
                "not_found",
            )
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
            return _error(400, str(e), "invalid_request_error")
        prompt_tokens = len(prompt_ids(engine.tokenizer, messages))
        completion_tokens = sum(c.pop("_tokens") for c in choices)
        return {
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


def _api_key(variable: str | None) -> str | None:
    import os

    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise RiseError(f"serve: api_key_env names ${variable}, which is not set")
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
        console.print(f"[yellow]rise serve: listening on {config.host}: reachable from the network")
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
