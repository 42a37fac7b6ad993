"""The FastAPI app: thin routes over OpenAIServing, wired once here.

Every /v1 path (strategy paths included) needs the API key when one is set;
/health and /metrics stay open. A watchdog notices a dead engine: /health and
requests answer 503 and `on_engine_death` (the CLI's: stop with exit code 1)
runs, so a supervisor restarts ponder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter

from ponder import strategies
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
)
from ponder.server.serving import OpenAIServing

log = logging.getLogger("ponder.app")
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def require_key(api_key: str | None):
    bearer = HTTPBearer(auto_error=False)

    async def check(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        given = cred.credentials if cred is not None else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided." if given else "Missing API key: send "
                           "'Authorization: Bearer <key>'.", "authentication_error", code="invalid_api_key")

    return check


def params_schema(params: type) -> dict:
    """JSON schema of a params dataclass, with each field's help text as its description."""
    schema = TypeAdapter(params).json_schema()
    for f in dataclasses.fields(params):
        if "help" in f.metadata:
            schema["properties"][f.name]["description"] = f.metadata["help"]
    schema["additionalProperties"] = False
    return schema


def strategy_list(default: str | dict) -> StrategyList:
    return StrategyList(default=default, data=[
        StrategyObject(name=s.name, description=s.doc, parameters=params_schema(s.Params))
        for s in strategies.STRATEGIES.values()])


def create_app(serving: OpenAIServing, *, api_key: str | None = None,
               on_engine_death: Callable[[], None] | None = None, watch_interval: float = 1.0) -> FastAPI:
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

    app = FastAPI(title="ponder", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible LLM server with test-time reasoning strategies, on vLLM.")
    app.state.serving = serving
    errors.install(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key(api_key))], responses=ERRORS)

    @v1.get("/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        return request.app.state.serving.models()

    @v1.get("/strategies", response_model=StrategyList)
    async def list_strategies(request: Request) -> StrategyList:
        return strategy_list(request.app.state.serving.limits.default_strategy)

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
