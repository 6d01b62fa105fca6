"""Sampling from an OpenAI-compatible chat-completions server (OpenAI, `vllm serve`, SGLang,
llama.cpp's server, `rise serve`).

Select it wherever a model is named (`--model`, `--teacher`, a run's `collect.teacher`) with the
spec `openai:MODEL` (OpenAI's API) or `openai:MODEL@BASE_URL` (any other server, e.g.
`openai:meta-llama/Llama-3.1-8B-Instruct@http://127.0.0.1:8000/v1`), or
`openai:MODEL@URL1,URL2,...` for several replicas of the same model; the stage's
`engine_options` tune it (`OpenAIOptions`).

One `generate` call sends one request per conversation for its `n` samples, at most
`max_concurrency` in flight (asyncio). A request that got 408, 409, 429 or a 5xx, timed out or
lost its connection is retried with exponential backoff (0.5 s doubling to 8 s, jittered, or the
server's Retry-After: the `openai` client's schedule), up to `max_retries` times. A server that
returns fewer than `n` choices (some ignore `n`) gets further requests for the rest, each with
its own seed, so every conversation ends with exactly `n` samples, in order, none lost or
repeated.

With several replicas each request goes to the replica with the fewest requests in flight (the
first on a tie). A replica is down when it refuses or drops a connection (its process is gone)
or fails `max_retries + 1` times in a row, while another replica is up: its requests in flight
and all later ones of the call go to the others, at once and without using a retry. A request's
seed depends on its conversation's key and its round only, never on the replica, so the samples
are the same whichever replica answers, and a request moved is asked again, never answered
twice. The last replica up is retried like a single server; when it fails too, the error is
one line naming every replica and how it failed. Replicas down are tried again at the next
`generate` call (the next turn).

The API key is read from the environment variable `api_key_env` when requests are sent; it is
never part of a config, so it is never written to a run folder or a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
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
from rise_llm.progress import console, progress_bar
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
        max_retries: retries of one request after 408, 409, 429, 5xx, a timeout or a lost
            connection; with replicas, also how many failures in a row take one down.
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
    answered: Counter[str] = field(default_factory=Counter)  # answers used, by base URL
    down: Counter[str] = field(default_factory=Counter)  # times each replica was found down

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
        replicas = ""
        if len(self.answered) + len(set(self.down) - set(self.answered)) > 1:
            counts = (f"{url}: {c}" for url, c in sorted(self.answered.items()))
            downs = (f"{url} {c}x" for url, c in sorted(self.down.items()))
            replicas = (
                f"; answered by replica: {', '.join(counts)}; down: {', '.join(downs) or 'none'}"
            )
        return (
            f"{self.sent} requests sent, {self.failed} failed ({statuses or 'no error status'}"
            f"{', ' if statuses else '; '}{self.timeouts} without answer), {self.retried} retried, "
            f"{self.short} short answers, {self.samples} samples received{replicas}"
        )


def parse_spec(spec: str) -> tuple[str, str]:
    """(model, base_url) of a spec `openai:MODEL`, `openai:MODEL@BASE_URL` or
    `openai:MODEL@URL1,URL2,...` (replicas; base_url then holds them comma-separated).

    >>> parse_spec("openai:gpt-3.5-turbo")
    ('gpt-3.5-turbo', 'https://api.openai.com/v1')
    >>> parse_spec("openai:org/m@http://127.0.0.1:8000/v1/")
    ('org/m', 'http://127.0.0.1:8000/v1')
    >>> parse_spec("openai:m@http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1")
    ('m', 'http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1')
    """
    model, _, base_url = spec.removeprefix(SPEC_PREFIX).partition("@")
    if not spec.startswith(SPEC_PREFIX) or not model:
        raise RiseError(f"model {spec!r}: expected openai:MODEL or openai:MODEL@BASE_URL[,URL...]")
    try:
        urls = split_urls(base_url or OPENAI_BASE_URL)
    except RiseError as e:
        raise RiseError(f"model {spec!r}: {e}") from None
    return model, ",".join(urls)


def split_urls(base_url: str | Sequence[str]) -> tuple[str, ...]:
    """The replicas' base URLs of `base_url` (comma-separated or a list), checked."""
    parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = tuple(part.strip().rstrip("/") for part in parts)
    if not urls or not all(url.startswith(("http://", "https://")) for url in urls):
        raise RiseError("every base URL after @ must start with http:// or https://")
    if len(set(urls)) < len(urls):
        raise RiseError(f"a base URL is given twice: {', '.join(urls)}")
    return urls


def request_seed(seed: int, conversation: int, round_: int) -> int:
    """`seeds.request_seed` within the range servers accept."""
    return seeds.request_seed(seed, conversation, round_, _SEED_RANGE)


class Replicas:
    """The replicas of one `generate` call: which is up, how busy, and which to ask next.

    `pick` is the least-outstanding choice: the replica up with the fewest requests in flight,
    the first on a tie. `failed` decides whether a failure takes its replica down (see the
    module docstring): never the last one up, which is then retried like a single server.
    """

    def __init__(self, urls: Sequence[str], max_retries: int):
        self.urls = list(urls)
        self.max_retries = max_retries
        self.in_flight = [0] * len(self.urls)
        self.failures = [0] * len(self.urls)  # in a row, since its last answer
        self.down: list[str | None] = [None] * len(self.urls)  # why it is down

    def pick(self) -> int:
        up = [i for i, why in enumerate(self.down) if why is None]
        return min(up, key=lambda i: self.in_flight[i])

    def answered(self, i: int) -> None:
        self.failures[i] = 0

    def failed(self, i: int, error: openai.OpenAIError) -> bool:
        """Count a retryable failure of replica `i`; whether it is (now) down."""
        if self.down[i] is not None:
            return True
        self.failures[i] += 1
        others_up = sum(why is None for why in self.down) > 1
        lost = isinstance(error, openai.APIConnectionError) and not isinstance(
            error, openai.APITimeoutError
        )
        if others_up and (lost or self.failures[i] > self.max_retries):
            self.down[i] = (
                _short(error)
                if lost
                else f"{self.failures[i]} failures in a row, the last {_short(error)}"
            )
            console.print(
                f"openai engine: replica {self.urls[i]} is down ({self.down[i]}); "
                f"its requests go to the other replicas ({sum(w is None for w in self.down)} up)",
                soft_wrap=True,
            )
            return True
        return False

    def others_down(self, i: int) -> list[str]:
        """'URL (why it is down)' of every replica down but `i`."""
        return [
            f"{url} ({why})"
            for url, why in zip(self.urls, self.down, strict=True)
            if why and url != self.urls[i]
        ]


class OpenAIEngine:
    """The engine protocol over an OpenAI-compatible chat-completions server, or several
    replicas of one model.

    Args:
        model: the model name the server knows (what its /v1/models lists).
        base_url: the API root, e.g. http://127.0.0.1:8000/v1; several replicas as a list or
            comma-separated.
        options: concurrency, timeout, retries and the API key's variable (`OpenAIOptions`).
    """

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str] = OPENAI_BASE_URL,
        options: OpenAIOptions | None = None,
    ):
        self.model = model
        self.base_urls = split_urls(base_url)
        self.options = options or OpenAIOptions()
        self.stats = RequestStats()

    @property
    def base_url(self) -> str:
        """The base URL, or the replicas' comma-separated (as in the spec)."""
        return ",".join(self.base_urls)

    @classmethod
    def from_spec(cls, spec: str, options: dict[str, Any] | None = None) -> OpenAIEngine:
        """The engine of a spec `openai:MODEL[@BASE_URL[,URL...]]` with `engine_options` checked."""
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
        replicas = Replicas(self.base_urls, self.options.max_retries)
        clients = [self._client(url) for url in self.base_urls]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            with progress_bar() as bar:
                task = bar.add_task(desc, total=len(conversations) * n, rate="")

                async def one(i: int) -> None:
                    nonlocal tokens
                    async with gate:
                        results[i] = await self._samples(
                            replicas, clients, conversations[i], keys[i], n, params
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
        replicas: Replicas,
        clients: Sequence[openai.AsyncOpenAI],
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
                # the conversation's key and the round, never the replica: the same samples
                # whichever replica answers, or answers a retry
                "seed": request_seed(params.seed, key, round_),
            }
            if params.stop:
                request["stop"] = list(params.stop)
            url, response = await self._ask(replicas, clients, request)
            new = _completions(response, want)
            if not new:
                raise RiseError(f"{url} answered with no choices for model {self.model!r}")
            self.stats.short += len(new) < want
            self.stats.samples += len(new)
            got.extend(new)
            if len(got) == n:
                break
        return got

    async def _ask(
        self,
        replicas: Replicas,
        clients: Sequence[openai.AsyncOpenAI],
        request: dict[str, Any],
    ) -> tuple[str, Any]:
        """(base URL, answer) of `request` from the least busy replica up, retried with
        backoff and moved to another replica when the one asked is down."""
        retries = 0
        while True:
            i = replicas.pick()
            replicas.in_flight[i] += 1
            try:
                response = await clients[i].chat.completions.create(**request)
            except openai.OpenAIError as e:
                error = e
            else:
                replicas.answered(i)
                self.stats.answered[replicas.urls[i]] += 1
                return replicas.urls[i], response
            finally:
                replicas.in_flight[i] -= 1
            if not _retryable(error):
                raise RiseError(self._explain(error, replicas.urls[i], retries)) from None
            was_up = replicas.down[i] is None
            if replicas.failed(i, error):
                self.stats.down[replicas.urls[i]] += was_up
                continue  # moved to another replica, without using a retry
            if retries == self.options.max_retries:
                others = replicas.others_down(i)
                if not others:
                    raise RiseError(self._explain(error, replicas.urls[i], retries)) from None
                last = f"{replicas.urls[i]} ({_short(error)}, after {retries} retries)"
                raise RiseError(
                    f"all {len(replicas.urls)} replicas of model {self.model!r} failed: "
                    f"{', '.join([*others, last])}; are the servers running?"
                ) from None
            await asyncio.sleep(_backoff(retries, error))
            retries += 1

    def _client(self, base_url: str) -> openai.AsyncOpenAI:
        key = os.environ.get(self.options.api_key_env)
        if not key and base_url == OPENAI_BASE_URL:
            raise RiseError(
                f"openai engine: set the API key of {base_url} in ${self.options.api_key_env}"
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
            base_url=base_url,
            api_key=key or "none",  # a local server started without a key ignores it
            timeout=self.options.timeout,
            max_retries=0,  # retried here (`_ask`), where a replica down can be left
            http_client=http,
        )

    def _explain(self, error: openai.OpenAIError, base_url: str, retries: int) -> str:
        """One line saying what failed and what to do."""
        where = f"{base_url} (model {self.model!r})"
        after = f"after {retries} retries"
        if isinstance(error, openai.AuthenticationError):
            return f"{where} refused the API key (401); set it in ${self.options.api_key_env}"
        if isinstance(error, openai.NotFoundError):
            return f"{where} answered 404: no such model or endpoint; check the spec's MODEL@URL"
        if isinstance(error, openai.APIStatusError):
            return f"{where} answered {error.status_code} {after}: {_short(error)}"
        if isinstance(error, openai.APITimeoutError):
            return f"{where} gave no answer within {self.options.timeout:g} s, {after}"
        if isinstance(error, openai.APIConnectionError):
            return f"could not reach {where} {after}; is the server running?"
        return f"{where}: {type(error).__name__}: {error}"


def _short(error: openai.OpenAIError) -> str:
    """The first line of an error's message (its status first for an error answer)."""
    if isinstance(error, openai.APIStatusError):
        message = str(error.message).splitlines()[0] if error.message else ""
        return f"{error.status_code} {message}".strip()
    if isinstance(error, openai.APITimeoutError):
        return "a timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection refused or lost"
    return type(error).__name__


def _retryable(error: openai.OpenAIError) -> bool:
    """What the `openai` client retries: no answer, or 408, 409, 429 or a 5xx."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return isinstance(error, openai.APIConnectionError)


def _backoff(retries: int, error: openai.OpenAIError) -> float:
    """Seconds before retry `retries + 1`: the server's Retry-After(-ms) up to 60 s, else
    0.5 s doubling to 8 s, less up to 25% (the `openai` client's schedule)."""
    if isinstance(error, openai.APIStatusError):
        for header, unit in (("retry-after-ms", 1000), ("retry-after", 1)):
            try:
                wait = float(error.response.headers.get(header, "")) / unit
            except ValueError:
                continue
            if math.isfinite(wait) and 0 < wait <= 60:
                return wait
    return min(0.5 * 2.0**retries, 8.0) * (1 - 0.25 * random.random())


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
