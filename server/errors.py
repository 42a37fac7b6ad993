"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Invalid bodies are 400 (never FastAPI's 422). Errors that will fail again carry
`x-should-retry: false`, which the openai SDK obeys; without it the SDK retries
5xx and 429 responses, re-running a whole (costly) strategy.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ponder.strategies.engine import EngineBusyError, EngineDeadError, EngineError, EngineRequestError

log = logging.getLogger("ponder.errors")


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", *,
                 param: str | None = None, code: str | None = None, retry: bool | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        # Retrying helps only with overload; the rest fails the same way again.
        self.retry = retry if retry is not None else status == 429

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"x-should-retry": "true" if self.retry else "false"}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(e: BaseException) -> APIError:
    """Map any exception raised while serving a request to an APIError."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, EngineDeadError):
        return APIError(503, f"the engine is not available: {e}", "service_unavailable",
                        code="engine_dead", retry=False)
    if isinstance(e, EngineBusyError):
        return APIError(429, str(e), "rate_limit_error", code="engine_busy")
    if isinstance(e, (EngineRequestError, ValueError)):
        return bad_request(str(e))
    if isinstance(e, EngineError):
        return APIError(502, f"engine error: {e}", "server_error", retry=False)
    log.exception("unexpected error", exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}", "server_error", retry=False)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unsupported parameter"
    elif first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", None
    return (f"{param}: {msg}" if param else msg), param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return bad_request(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {401: "authentication_error", 404: "invalid_request_error", 405: "invalid_request_error"}
        return APIError(exc.status_code, str(exc.detail), kind.get(exc.status_code, "server_error"),
                        retry=False).response()

    @app.exception_handler(json.JSONDecodeError)
    async def _json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return bad_request(f"request body is not valid JSON: {exc}").response()

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).response()
