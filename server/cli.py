"""The `ponder` command: serve, eval, train."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from ponder.server.config import ServeConfig, parse_args

log = logging.getLogger("ponder")
USAGE = """usage: ponder <command> [options]

commands:
  serve     OpenAI-compatible server with per-request strategies (ponder serve --help)
  eval      accuracy of a strategy on a built-in task (ponder eval --help)
  train     train ponder's models: pretrain | cdpo-contrast (ponder train pretrain --help)
"""


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, which would kill the
        process before ponder closes its engines; here a signal means: stop, clean up, exit 0."""

        @contextlib.contextmanager
        def capture_signals(self):
            handlers = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

    return Server


def build_engines(cfg: ServeConfig) -> list:
    if cfg.upstream:
        from ponder.server.engine.remote import RemoteEngine

        return [RemoteEngine(cfg.upstream, cfg.model[0], cfg.tokenizer or cfg.model[0],
                             adapters=[s.split("=", 1)[0] for s in cfg.lora], api_key=cfg.upstream_api_key,
                             max_model_len=cfg.max_model_len or 4096)]
    from ponder.server.engine.vllm_engine import VllmConfig, VllmEngine

    engines = []
    for i, path in enumerate(cfg.model):
        if not Path(path).exists():
            raise SystemExit(f"ponder: model folder {path} does not exist")
        loras = tuple(tuple(s.split("=", 1)) for s in cfg.lora) if i == 0 else ()
        engines.append(VllmEngine(VllmConfig(
            model=path, name=cfg.served_model_name[i] if cfg.served_model_name else None,
            loras=loras, max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager,
            max_logprobs=cfg.max_logprobs, kv_cache_gib=cfg.kv_cache_gib, engine_args=cfg.engine_kwargs())))
    return engines


async def serve(cfg: ServeConfig) -> int:
    import uvicorn

    from ponder.server.app import create_app
    from ponder.server.serving import Limits, OpenAIServing, validate_strategy

    try:  # fail before the engine's slow start, not on the first request
        default = json.loads(cfg.default_strategy) if cfg.default_strategy.startswith("{") else cfg.default_strategy
        validate_strategy(default)
    except ValueError as e:
        raise SystemExit(f"ponder: bad --default-strategy: {e}") from e
    engines = build_engines(cfg)
    exit_code = 0
    try:
        serving = OpenAIServing(engines, Limits(max_n=cfg.max_n, max_request_tokens=cfg.max_request_tokens,
                                                max_concurrent_requests=cfg.max_concurrent_requests,
                                                default_strategy=default))
        server = None

        def on_engine_death() -> None:
            nonlocal exit_code
            exit_code = 1
            # Keep answering 503 for a moment so callers see why, then stop.
            asyncio.get_running_loop().call_later(2.0, lambda: setattr(server, "should_exit", True))

        app = create_app(serving, api_key=cfg.api_key, on_engine_death=on_engine_death)
        server = _server_class()(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                                timeout_graceful_shutdown=5))
        names = ", ".join(c.id for e in engines for c in e.models())
        log.info("serving %s on http://%s:%d", names, cfg.host, cfg.port)
        await server.serve()
    finally:
        await asyncio.gather(*(e.aclose() for e in engines))  # side by side: SIGTERM must stop us in seconds
    return exit_code


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "serve":
        cfg = parse_args(rest)
        logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        print("ponder serve config: " + json.dumps(cfg.public()), flush=True)
        sys.exit(asyncio.run(serve(cfg)))
    elif command == "eval":
        from ponder.tasks.eval import main as eval_main

        eval_main(rest)
    elif command == "train":
        from ponder.trainers import main as train_main

        train_main(rest)
    else:
        print(USAGE, file=sys.stderr)
        sys.exit(f"ponder: unknown command {command!r}")


if __name__ == "__main__":
    main()
