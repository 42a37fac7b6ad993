"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Invalid bodies are 400 (never FastAPI's 422). Errors that will fail again carry
`x-should-retry: false`, which the openai SDK obeys; without it the SDK retries
5xx and 429 responses, re-running a whole (costly) strategy.

Every exception a route raises becomes a response inside the route (`Route`):
one that reaches Starlette's catch-all handler is re-raised to uvicorn, which
then closes the client's keep-alive connection.
"""

from __future__ import annotations

import json
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ponder.engine.protocol import EngineBusyError, EngineDeadError, EngineError, EngineRequestError
from ponder.strategies.base import StrategyError
from ponder.strategies.params import ParamError

log = logging.getLogger("ponder.errors")
HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", *,
                 param: str | None = None, code: str | None = None, retry: bool | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        # Retrying helps only with overload; the rest fails the same way again.
        self.retry = retry if retry is not None else status == 429

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        # json.dumps escapes to ASCII, so a message quoting invalid Unicode still renders
        # (Starlette's JSONResponse would raise on a lone surrogate).
        headers = {"x-should-retry": "true" if self.retry else "false"}
        return Response(json.dumps(self.body()), status_code=self.status, headers=headers,
                        media_type="application/json")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(e: BaseException) -> APIError:
    """Map any exception raised while serving a request to an APIError."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ParamError):  # e.g. a user's pattern that ran past its time limit on model output
        return bad_request(f"strategy.{e}", param=f"strategy.{e.param}", code="invalid_strategy")
    if isinstance(e, RequestValidationError):
        return _validation_error(e)
    if isinstance(e, StarletteHTTPException):
        kind = HTTP_TYPES.get(e.status_code, "server_error" if e.status_code >= 500 else "invalid_request_error")
        return APIError(e.status_code, str(e.detail), kind)
    if isinstance(e, EngineDeadError):
        return APIError(503, f"the engine is not available: {e}", "service_unavailable",
                        code="engine_dead", retry=False)
    if isinstance(e, EngineBusyError):
        return APIError(429, str(e), "rate_limit_error", code="engine_busy")
    if isinstance(e, (EngineRequestError, StrategyError)):  # the request's input, and nothing else, is at fault
        return bad_request(str(e))
    if isinstance(e, EngineError):
        return APIError(502, f"engine error: {e}", "server_error", retry=False)
    ref = uuid.uuid4().hex[:12]  # the client quotes it, the operator greps the log for it
    log.exception("unexpected error %s", ref, exc_info=e)
    return APIError(500, f"internal error {ref} ({type(e).__name__}); the server log has the details",
                    "server_error", retry=False)


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return bad_request("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return bad_request(f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = "unsupported parameter" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid value")
    return bad_request(f"{param}: {msg}" if param else msg, param=param)


class Route(APIRoute):
    """An APIRoute that answers every exception itself, so the connection stays open."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as e:
                return from_exception(e).response()

        return guarded


def install(app: FastAPI) -> None:
    """Handlers for what is raised outside a Route: the router's 404 and 405, and a last resort."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        err = from_exception(exc)
        if exc.status_code in (404, 405):  # say which URL, as OpenAI does
            err.message = f"{err.message}: {request.method} {request.url.path}"
        return err.response()

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> Response:
        return from_exception(exc).response()
