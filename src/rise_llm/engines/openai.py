"""Sampling from an OpenAI-compatible chat-completions server (OpenAI, `vllm serve`, SGLang,
llama.cpp's server, `rise serve`).

Select it wherever a model is named (`--model`, `--teacher`, a run's `collect.teacher`) with the
spec `openai:MODEL` (OpenAI's API) or `openai:MODEL@BASE_URL` (any other server, e.g.
`openai:meta-llama/Llama-3.1-8B-Instruct@http://127.0.0.1:8000/v1`); the stage's
`engine_options` tune it (`OpenAIOptions`).

One `generate` call sends one request per conversation for its `n` samples, at most
`max_concurrency` in flight (asyncio). The `openai` client retries a request that got 429 or a
5xx, timed out or lost its connection, with exponential backoff (0.5 s doubling to 8 s, jittered,
or the server's Retry-After), up to `max_retries` times. A server that returns fewer than `n`
choices (some ignore `n`) gets further requests for the rest, each with its own seed, so every
conversation ends with exactly `n` samples, in order, none lost or repeated.

The API key is read from the environment variable `api_key_env` when requests are sent; it is
never part of a config, so it is never written to a run folder or a log.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai

from rise_llm import seeds
from rise_llm.engines.base import Completion, SamplingParams, stream_keys
from rise_llm.errors import RiseError
from rise_llm.progress import progress_bar
from rise_llm.records import Message

SPEC_PREFIX = "openai:"
OPENAI_BASE_URL = "https://api.openai.com/v1"
_SEED_RANGE = 2**31 - 1  # servers read the seed as a signed 32- or 64-bit integer


@dataclass
class OpenAIOptions:
    """Options of the openai engine (a stage's `engine_options`).

    Args:
        api_key_env: the environment variable that holds the API key (never stored). Unset is
            fine for a local server started without a key.
        max_concurrency: most requests in flight at once.
        timeout: seconds a request may take before it counts as failed and is retried.
        max_retries: retries of one request after 429, 5xx, a timeout or a lost connection.
    """

    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 64
    timeout: float = 600.0
    max_retries: int = 8

    def __post_init__(self) -> None:
        if not self.api_key_env:
            raise RiseError("engine_options.api_key_env must name an environment variable")
        if self.max_concurrency < 1:
            raise RiseError(
                f"engine_options.max_concurrency must be at least 1, got {self.max_concurrency}"
            )
        if self.timeout <= 0:
            raise RiseError(f"engine_options.timeout must be positive seconds, got {self.timeout}")
        if self.max_retries < 0:
            raise RiseError(f"engine_options.max_retries must be >= 0, got {self.max_retries}")


@dataclass
class RequestStats:
    """What the engine's HTTP traffic did, over its lifetime.

    `calls` counts requests the engine wanted answered (one per conversation, plus one per
    fallback round); `sent` counts HTTP requests, retries included.
    """

    calls: int = 0
    sent: int = 0
    ok: int = 0
    errors: Counter[int] = field(default_factory=Counter)  # error responses by HTTP status
    short: int = 0  # answers with fewer choices than asked
    samples: int = 0

    @property
    def failed(self) -> int:
        """Requests sent that got no 2xx answer: error statuses, timeouts, lost connections."""
        return self.sent - self.ok

    @property
    def timeouts(self) -> int:
        """Failed requests that got no answer at all (timeouts and lost connections)."""
        return self.failed - sum(self.errors.values())

    @property
    def retried(self) -> int:
        return self.sent - self.calls

    def summary(self) -> str:
        statuses = ", ".join(f"{s}: {c}" for s, c in sorted(self.errors.items()))
        return (
            f"{self.sent} requests sent, {self.failed} failed ({statuses or 'no error status'}"
            f"{', ' if statuses else '; '}{self.timeouts} without answer), {self.retried} retried, "
            f"{self.short} short answers, {self.samples} samples received"
        )


def parse_spec(spec: str) -> tuple[str, str]:
    """(model, base_url) of a spec `openai:MODEL` or `openai:MODEL@BASE_URL`.

    >>> parse_spec("openai:gpt-3.5-turbo")
    ('gpt-3.5-turbo', 'https://api.openai.com/v1')
    >>> parse_spec("openai:org/m@http://127.0.0.1:8000/v1")
    ('org/m', 'http://127.0.0.1:8000/v1')
    """
    model, _, base_url = spec.removeprefix(SPEC_PREFIX).partition("@")
    base_url = base_url or OPENAI_BASE_URL
    if not spec.startswith(SPEC_PREFIX) or not model:
        raise RiseError(f"model {spec!r}: expected openai:MODEL or openai:MODEL@BASE_URL")
    if not base_url.startswith(("http://", "https://")):
        raise RiseError(f"model {spec!r}: the base URL after @ must start with http:// or https://")
    return model, base_url.rstrip("/")


def request_seed(seed: int, conversation: int, round_: int) -> int:
    """`seeds.request_seed` within the range servers accept."""
    return seeds.request_seed(seed, conversation, round_, _SEED_RANGE)


class OpenAIEngine:
    """The engine protocol over an OpenAI-compatible chat-completions server.

    Args:
        model: the model name the server knows (what its /v1/models lists).
        base_url: the API root, e.g. http://127.0.0.1:8000/v1.
        options: concurrency, timeout, retries and the API key's variable (`OpenAIOptions`).
    """

    def __init__(
        self, model: str, base_url: str = OPENAI_BASE_URL, options: OpenAIOptions | None = None
    ):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.options = options or OpenAIOptions()
        self.stats = RequestStats()

    @classmethod
    def from_spec(cls, spec: str, options: dict[str, Any] | None = None) -> OpenAIEngine:
        """The engine of a spec `openai:MODEL[@BASE_URL]` with `engine_options` checked."""
        from rise_llm.config import build

        model, base_url = parse_spec(spec)
        return cls(model, base_url, build(OpenAIOptions, dict(options or {}), "engine_options"))

    def __repr__(self) -> str:  # never shows the key: it is not an attribute
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r})"

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        params: SamplingParams,
        desc: str = "generate",
        keys: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        if n < 1:
            raise RiseError(f"n must be at least 1, got {n}")
        if not conversations:
            return []
        keys = stream_keys(conversations, keys)
        work = self._generate_all(conversations, n, params, desc, keys)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(work)
        with ThreadPoolExecutor(1) as pool:  # called from inside an event loop (a notebook)
            return pool.submit(asyncio.run, work).result()

    async def _generate_all(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        params: SamplingParams,
        desc: str,
        keys: Sequence[int],
    ) -> list[list[Completion]]:
        results: list[list[Completion]] = [[] for _ in conversations]
        gate = asyncio.Semaphore(self.options.max_concurrency)
        start, tokens = time.perf_counter(), 0
        async with self._client() as client:
            with progress_bar() as bar:
                task = bar.add_task(desc, total=len(conversations) * n, rate="")

                async def one(i: int) -> None:
                    nonlocal tokens
                    async with gate:
                        results[i] = await self._samples(
                            client, conversations[i], keys[i], n, params
                        )
                    tokens += sum(c.num_tokens for c in results[i])
                    rate = tokens / max(time.perf_counter() - start, 1e-9)
                    bar.update(
                        task, advance=n, rate=f"{rate:,.0f} tok/s, {self.stats.retried} retried"
                    )

                jobs = [asyncio.ensure_future(one(i)) for i in range(len(conversations))]
                try:
                    await asyncio.gather(*jobs)
                except BaseException:
                    for job in jobs:
                        job.cancel()
                    await asyncio.gather(*jobs, return_exceptions=True)
                    raise
        return results

    async def _samples(
        self,
        client: openai.AsyncOpenAI,
        messages: Sequence[Message],
        key: int,
        n: int,
        params: SamplingParams,
    ) -> list[Completion]:
        """Exactly `n` samples for one conversation; at most n requests (each adds >= 1)."""
        got: list[Completion] = []
        for round_ in range(n):
            want = n - len(got)
            self.stats.calls += 1
            request: dict[str, Any] = {
                "model": self.model,
                "messages": list(messages),
                "n": want,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_tokens": params.max_new_tokens,
                "seed": request_seed(params.seed, key, round_),
            }
            if params.stop:
                request["stop"] = list(params.stop)
            try:
                response = await client.chat.completions.create(**request)
            except openai.OpenAIError as e:
                raise RiseError(self._explain(e)) from None
            new = _completions(response, want)
            if not new:
                raise RiseError(
                    f"{self.base_url} answered with no choices for model {self.model!r}"
                )
            self.stats.short += len(new) < want
            self.stats.samples += len(new)
            got.extend(new)
            if len(got) == n:
                break
        return got

    def _client(self) -> openai.AsyncOpenAI:
        key = os.environ.get(self.options.api_key_env)
        if not key and self.base_url == OPENAI_BASE_URL:
            raise RiseError(
                f"openai engine: set the API key of {self.base_url} in ${self.options.api_key_env}"
                " (engine_options.api_key_env names another variable)"
            )

        async def sent(request) -> None:
            self.stats.sent += 1

        async def answered(response) -> None:
            if response.status_code < 400:
                self.stats.ok += 1
            else:
                self.stats.errors[response.status_code] += 1

        http = openai.DefaultAsyncHttpxClient(
            event_hooks={"request": [sent], "response": [answered]}
        )
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=key or "none",  # a local server started without a key ignores it
            timeout=self.options.timeout,
            max_retries=self.options.max_retries,
            http_client=http,
        )

    def _explain(self, error: openai.OpenAIError) -> str:
        """One line saying what failed and what to do."""
        where = f"{self.base_url} (model {self.model!r})"
        retries = f"after {self.options.max_retries} retries"
        if isinstance(error, openai.AuthenticationError):
            return f"{where} refused the API key (401); set it in ${self.options.api_key_env}"
        if isinstance(error, openai.NotFoundError):
            return f"{where} answered 404: no such model or endpoint; check the spec's MODEL@URL"
        if isinstance(error, openai.APIStatusError):
            message = str(error.message).splitlines()[0] if error.message else ""
            return f"{where} answered {error.status_code} {retries}: {message}"
        if isinstance(error, openai.APITimeoutError):
            return f"{where} gave no answer within {self.options.timeout:g} s, {retries}"
        if isinstance(error, openai.APIConnectionError):
            return f"could not reach {where} {retries}; is the server running?"
        return f"{where}: {type(error).__name__}: {error}"


def _completions(response: Any, want: int) -> list[Completion]:
    """The first `want` choices of a chat completion as Completions.

    The API reports only the total of completion tokens over all choices: the count is exact
    for one choice; with several it is split in proportion to their text lengths (an
    estimate), and 0 when the server reports no usage.
    """
    choices = sorted(response.choices, key=lambda c: c.index)[:want]
    texts = [c.message.content or "" for c in choices]
    total = response.usage.completion_tokens if response.usage else 0
    chars = sum(len(t) for t in texts) or 1
    counts = [total] if len(texts) == 1 else [round(total * len(t) / chars) for t in texts]
    return [
        Completion(text=text, num_tokens=count, finish_reason=c.finish_reason or "stop")
        for c, text, count in zip(choices, texts, counts, strict=True)
    ]
