"""A small typed client for ponder's extensions (sync and async, on httpx).

Plain OpenAI calls are best made with the official `openai` SDK; this client is
for what the SDK does not type: listing strategies with their parameter
schemas, choosing a strategy with parameters, and reading the trace.

    from ponder.clients import PonderClient
    with PonderClient("http://localhost:8000/v1") as c:
        r = c.chat("Tom has 3 apples. He buys 4 more. How many?", strategy={"name": "tournament", "n": 8},
                   return_trace=True)
        print(r.text, r.info, r.trace["rounds"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

Messages = str | list[dict[str, Any]]


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema


@dataclass(frozen=True)
class PonderResult:
    text: str
    finish_reason: str | None
    strategy: str
    params: dict[str, Any]
    engine_calls: int
    usage: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def reasoning_tokens(self) -> int:
        return (self.usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)


class PonderError(Exception):
    def __init__(self, status: int, error: dict[str, Any]):
        super().__init__(f"{status}: {error.get('message')}")
        self.status, self.error = status, error


def _body(messages: Messages, model: str | None, strategy: str | dict[str, Any] | None, return_trace: bool,
          sampling: dict[str, Any]) -> dict[str, Any]:
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    body: dict[str, Any] = {"model": model, "messages": msgs, "return_trace": return_trace, **sampling}
    if strategy is not None:
        body["strategy"] = strategy
    return body


def _result(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
        except (ValueError, KeyError):
            err = {"message": r.text}
        raise PonderError(r.status_code, err)
    return r.json()


def _parse(data: dict[str, Any]) -> PonderResult:
    p = data.get("ponder") or {}
    choice = data["choices"][0]
    return PonderResult(
        text=choice["message"]["content"] or "", finish_reason=choice.get("finish_reason"),
        strategy=p.get("strategy", "direct"), params=p.get("params", {}), engine_calls=p.get("engine_calls", 0),
        usage=data.get("usage", {}), info=(p.get("info") or [{}])[0], trace=(p.get("trace") or [None])[0], raw=data)


def _strategies(data: dict[str, Any]) -> list[StrategyInfo]:
    return [StrategyInfo(s["name"], s["description"], s["parameters"]) for s in data["data"]]


class PonderClient:
    def __init__(self, base_url: str = "http://localhost:8000/v1", api_key: str | None = None,
                 timeout: float = 600.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._model: str | None = None

    def model(self) -> str:
        if self._model is None:
            self._model = _result(self.http.get("/models"))["data"][0]["id"]
        return self._model

    def strategies(self) -> list[StrategyInfo]:
        return _strategies(_result(self.http.get("/strategies")))

    def chat(self, messages: Messages, *, model: str | None = None, strategy: str | dict[str, Any] | None = None,
             return_trace: bool = False, **sampling: Any) -> PonderResult:
        body = _body(messages, model or self.model(), strategy, return_trace, sampling)
        return _parse(_result(self.http.post("/chat/completions", json=body)))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PonderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPonderClient:
    def __init__(self, base_url: str = "http://localhost:8000/v1", api_key: str | None = None,
                 timeout: float = 600.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._model: str | None = None

    async def model(self) -> str:
        if self._model is None:
            self._model = _result(await self.http.get("/models"))["data"][0]["id"]
        return self._model

    async def strategies(self) -> list[StrategyInfo]:
        return _strategies(_result(await self.http.get("/strategies")))

    async def chat(self, messages: Messages, *, model: str | None = None,
                   strategy: str | dict[str, Any] | None = None, return_trace: bool = False,
                   **sampling: Any) -> PonderResult:
        body = _body(messages, model or await self.model(), strategy, return_trace, sampling)
        return _parse(_result(await self.http.post("/chat/completions", json=body)))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncPonderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
