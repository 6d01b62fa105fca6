"""`rise serve` with injected faults, to test clients against a real server process.

    python tests/faulty_server.py MODEL [rise serve flags] --fault-rate 0.3 --fault-seed 0
        --fault-hang 8

About `--fault-rate` of the chat requests fail on purpose, drawn in arrival order from
`--fault-seed`: an equal share answer 500, answer 429 with Retry-After, or hang for
`--fault-hang` seconds and then answer 504. Each fault is logged on stderr as
"faulty server: fault KIND on request N". The application is `rise serve`'s own
(`serve.load_app`), wrapped by a middleware: a request that is not failed is served as by
`rise serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from starlette.middleware.base import BaseHTTPMiddleware

from rise_llm import serve
from rise_llm.cli import add_config_flags, config_from_flags

FAULTS = ("500", "429", "hang")


class FaultInjector(BaseHTTPMiddleware):
    """Fails chat requests on purpose, seeded, in arrival order."""

    def __init__(self, app, rate: float, seed: int, hang: float):
        super().__init__(app)
        self.rate, self.hang = rate, hang
        self.rng = random.Random(seed)
        self.requests = 0

    def draw(self) -> str | None:
        """None (answer normally) or one of FAULTS."""
        self.requests += 1
        if self.rng.random() >= self.rate:
            return None
        return self.rng.choice(FAULTS)

    async def dispatch(self, request, call_next):
        if not request.url.path.endswith("/chat/completions"):
            return await call_next(request)
        fault = self.draw()
        if fault is None:
            return await call_next(request)
        print(f"faulty server: fault {fault} on request {self.requests}", file=sys.stderr)
        if fault == "500":
            return serve._error(500, "injected fault", "server_error")
        if fault == "429":
            return serve._error(429, "injected rate limit", "rate_limit", {"retry-after-ms": "100"})
        await asyncio.sleep(self.hang)
        return serve._error(504, "injected hang", "timeout")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    add_config_flags(parser, serve.ServeConfig, skip=("model",))
    parser.add_argument("--fault-rate", type=float, required=True)
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--fault-hang", type=float, default=30.0)
    args = parser.parse_args(argv)
    rate, seed, hang = args.fault_rate, args.fault_seed, args.fault_hang
    for name in ("fault_rate", "fault_seed", "fault_hang"):
        delattr(args, name)
    config = config_from_flags(serve.ServeConfig, args, "serve")
    app = serve.load_app(config)
    app.add_middleware(FaultInjector, rate=rate, seed=seed, hang=hang)
    serve.listen(app, config, note=f", faults {rate:.0%} (seed {seed})")


if __name__ == "__main__":
    main()
