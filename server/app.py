"""The FastAPI app: thin routes over OpenAIServing, wired once here.

Two small ASGI middlewares guard the edge before any routing: with an API key
set, every /v1 path (unknown ones and wrong methods too) answers 401 without it,
so nothing tells a stranger which routes exist; /health, /metrics and the docs
stay open. A body over `max_body_bytes` is a 413. A watchdog notices a dead
engine: /health and requests answer 503 and `on_engine_death` (the CLI's: stop
with exit code 1) runs, so a supervisor restarts ponder.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ponder import strategies, tasks
from ponder.server import errors, metrics
from ponder.server.errors import APIError
from ponder.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelList,
    StrategyList,
    StrategyObject,
    TaskObject,
)
from ponder.server.serving import OpenAIServing

log = logging.getLogger("ponder.app")
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}


class RequireKey:
    """401 for every /v1 path without 'Authorization: Bearer <key>', before routing."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/")):
            given = bearer_token(scope)
            if not (given and hmac.compare_digest(given, self.key)):
                message = ("Incorrect API key provided." if given else
                           "Missing API key: send 'Authorization: Bearer <key>'.")
                err = APIError(401, message, "authentication_error", code="invalid_api_key")
                return await err.response()(scope, receive, send)
        await self.app(scope, receive, send)


def bearer_token(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class BodyTooLarge(Exception):
    pass


class LimitBody:
    """413 for a request body over `max_bytes`: at once when Content-Length says so, else as
    soon as the streamed body grows past it, so no more than the limit is ever buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is over this server's limit of {self.max_bytes} bytes",
                             code="request_too_large", retry=False)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await too_large.response()(scope, receive, send)
        seen, over, started = 0, False, False

        async def counting() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def unless_over(message: Message) -> None:
            # Once over, the app answers (FastAPI: a 400 for the cut-off body); the 413 replaces it.
            nonlocal started
            if not over:
                started = True
                await send(message)

        try:
            await self.app(scope, counting, unless_over)
        except Exception:
            if not over:
                raise
        if over and not started:
            await too_large.response()(scope, receive, send)


def strategy_list(serving: OpenAIServing) -> StrategyList:
    names = list(tasks.TASKS)
    return StrategyList(
        default=serving.limits.default_strategy,
        data=[StrategyObject(name=s.name, description=s.doc, parameters=s.schema(names), models=serving.supported(s))
              for s in strategies.STRATEGIES.values()],
        tasks=[TaskObject(name=t.name, description=t.description) for t in tasks.TASKS.values()],
        model_tasks={m: t.name for m, t in serving.tasks.items()})


def create_app(serving: OpenAIServing, *, api_key: str | None = None,
               on_engine_death: Callable[[], None] | None = None, watch_interval: float = 1.0,
               max_body_bytes: int = 4 * 1024 * 1024) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def watchdog() -> None:
            while True:
                await asyncio.sleep(watch_interval)
                if any(e.is_dead for e in serving.engines):
                    log.error("engine died; answering 503 and shutting down")
                    if on_engine_death is not None:
                        on_engine_death()
                    return

        task = asyncio.create_task(watchdog())
        yield
        task.cancel()

    # No slash redirects: their Location comes from the Host header, and an unknown path is a plain 404.
    app = FastAPI(title="ponder", version="0.1.0", lifespan=lifespan, redirect_slashes=False,
                  description="OpenAI-compatible LLM server with test-time reasoning strategies, on vLLM.")
    app.state.serving = serving
    app.router.route_class = errors.Route
    errors.install(app)
    app.add_middleware(LimitBody, max_bytes=max_body_bytes)
    if api_key is not None:
        app.add_middleware(RequireKey, api_key=api_key)  # added last, so it runs first
    # HTTPBearer only documents the scheme in /openapi.json; RequireKey does the checking.
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(HTTPBearer(auto_error=False))], responses=ERRORS,
                   route_class=errors.Route)

    @v1.get("/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        return request.app.state.serving.models()

    @v1.get("/strategies", response_model=StrategyList)
    async def list_strategies(request: Request) -> StrategyList:
        return strategy_list(request.app.state.serving)

    @v1.post("/chat/completions", response_model=ChatCompletionResponse)
    async def chat(body: ChatCompletionRequest, request: Request):
        return await request.app.state.serving.handle(body, request)

    @v1.post("/completions", response_model=CompletionResponse)
    async def completions(body: CompletionRequest, request: Request):
        return await request.app.state.serving.handle(body, request)

    @v1.post("/strategies/{name}/chat/completions", response_model=ChatCompletionResponse)
    async def strategy_chat(name: str, body: ChatCompletionRequest, request: Request):
        return await request.app.state.serving.handle(body, request, path_strategy=name)

    @v1.post("/strategies/{name}/completions", response_model=CompletionResponse)
    async def strategy_completions(name: str, body: CompletionRequest, request: Request):
        return await request.app.state.serving.handle(body, request, path_strategy=name)

    app.include_router(v1)

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health(request: Request) -> Response:
        for engine in request.app.state.serving.engines:
            try:
                await engine.check_health()
            except Exception as e:
                return errors.from_exception(e).response()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        for engine in serving.engines:
            for card in engine.models()[:1]:
                metrics.ENGINE_UNFINISHED.labels(card.id).set(engine.num_unfinished())
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
