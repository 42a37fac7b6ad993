"""`ponder serve`: build the engines, then run the app under uvicorn with ponder's drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ponder.server.config import ServeConfig, parse_args

log = logging.getLogger("ponder")


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn with ponder's shutdown. The first SIGTERM/SIGINT stops accepting connections and
        runs `drain` (running requests get a grace to finish, the rest end with an error) while
        uvicorn waits for the connections; a second signal stops waiting. Unlike uvicorn, it does
        not re-raise the signal afterwards, which would kill the process before ponder closes its
        engines: here a signal means stop, clean up, exit 0."""

        def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]] | None = None):
            super().__init__(config)
            self.drain = drain

        @contextlib.contextmanager
        def capture_signals(self):
            handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        async def shutdown(self, sockets=None) -> None:
            steps = [asyncio.ensure_future(super().shutdown(sockets))]
            if self.drain is not None:
                steps.append(asyncio.ensure_future(self.drain()))
            # Both are bounded (uvicorn by timeout_graceful_shutdown, the drain by its grace); the
            # deadline only guards against a drain that never returns.
            loop = asyncio.get_running_loop()
            limit = self.config.timeout_graceful_shutdown
            deadline = loop.time() + (limit + 1 if limit is not None else math.inf)
            while not all(s.done() for s in steps) and not self.force_exit and loop.time() < deadline:
                await asyncio.sleep(0.1)
            for step in steps:
                step.cancel()
            if self.force_exit:  # cancelling a request aborts its engine calls before the engines close
                for task in self.server_state.tasks:
                    task.cancel()
            for outcome in await asyncio.gather(*steps, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("shutdown step failed", exc_info=outcome)

    return Server


async def build_engines(cfg: ServeConfig) -> list:
    if cfg.upstream:
        from ponder.engine.remote import RemoteEngine, UpstreamError

        remote = RemoteEngine(cfg.upstream, cfg.model[0], cfg.tokenizer or cfg.model[0],
                              adapters=[s.split("=", 1)[0] for s in cfg.lora], api_key=cfg.upstream_api_key,
                              max_model_len=cfg.max_model_len,
                              connections=cfg.upstream_connections or cfg.max_concurrent_requests,
                              health_interval=cfg.upstream_health_interval)
        try:
            await remote.start()
        except UpstreamError as e:
            await remote.aclose()
            raise SystemExit(f"ponder: {e}") from None
        return [remote]
    from ponder.engine.vllm_engine import VllmConfig, start_engines

    configs = []
    for i, path in enumerate(cfg.model):
        if not Path(path).exists():
            raise SystemExit(f"ponder: model folder {path} does not exist")
        loras = tuple(tuple(s.split("=", 1)) for s in cfg.lora) if i == 0 else ()
        configs.append(VllmConfig(
            model=path, name=cfg.served_model_name[i] if cfg.served_model_name else None,
            loras=loras, max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager,
            max_logprobs=cfg.max_logprobs, kv_cache_gib=cfg.kv_cache_gib, engine_args=cfg.engine_kwargs()))
    return await start_engines(configs)


def strategy_flags(cfg: ServeConfig) -> tuple[str | dict, dict[str, str | dict]]:
    """The default strategy and the reasoning_effort table, checked before the engine's slow start."""
    from ponder import strategies
    from ponder.server.serving import EFFORTS

    default: str | dict = cfg.default_strategy
    try:
        if default.startswith("{"):
            default = json.loads(default)
        strategies.resolve(default)
    except ValueError as e:  # JSONDecodeError and ParamError are ValueErrors
        raise SystemExit(f"ponder: bad --default-strategy: {e}") from e
    efforts = {**EFFORTS, **cfg.efforts()}
    for level, spec in efforts.items():
        try:
            strategies.resolve(spec)
        except ValueError as e:
            raise SystemExit(f"ponder: bad --effort {level}: {e}") from e
    return default, efforts


async def serve(cfg: ServeConfig) -> int:
    import uvicorn

    from ponder.server.app import create_app
    from ponder.server.serving import Limits, OpenAIServing

    default, efforts = strategy_flags(cfg)
    log.info("reasoning_effort runs: %s", json.dumps(efforts))
    engines = await build_engines(cfg)
    exit_code = 0
    try:
        serving = OpenAIServing(engines, Limits(max_n=cfg.max_n, max_request_tokens=cfg.max_request_tokens,
                                                max_concurrent_requests=cfg.max_concurrent_requests,
                                                default_strategy=default, task=cfg.task, efforts=efforts))
        server = None

        def on_engine_death() -> None:
            nonlocal exit_code
            exit_code = 1
            # Keep answering 503 for a moment so callers see why, then stop.
            asyncio.get_running_loop().call_later(2.0, lambda: setattr(server, "should_exit", True))

        app = create_app(serving, api_key=cfg.api_key, on_engine_death=on_engine_death,
                         max_body_bytes=cfg.max_body_bytes)
        # uvicorn's own time-out only backs up the drain, which ends every request within the grace.
        config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                timeout_graceful_shutdown=cfg.drain_grace + 2)
        server = _server_class()(config, drain=lambda: serving.drain(cfg.drain_grace))
        names = ", ".join(c.id for e in engines for c in e.models())
        log.info("serving %s on http://%s:%d", names, cfg.host, cfg.port)
        await server.serve()
    finally:
        await asyncio.gather(*(e.aclose() for e in engines))  # side by side: SIGTERM must stop us in seconds
    return exit_code


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print("ponder serve config: " + json.dumps(cfg.public()), flush=True)
    sys.exit(asyncio.run(serve(cfg)))
