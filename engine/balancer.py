"""A fleet of OpenAI-compatible upstreams (e.g. `vllm serve` replicas): routing, retry, health.

- Routing: each call goes to the healthy replica with the fewest sequences in
  flight (a call with n samples counts n), round-robin among equals.
- One pooled client for every call, sized to the fleet (connections per
  replica x replicas, all kept alive), so a call reuses a connection instead of
  opening one; keep-alive ends before the upstream's (uvicorn: 5 s) so a reused
  connection is never one the server is closing.
- A call that fails before any of its tokens reached the caller (cannot connect,
  connection dropped, 5xx, 429) is sent once more to another replica (to the same
  one only after a dropped connection, when it is the only one): sampling has no
  side effects, and the seed makes the retry's answer the one the first would have
  given.
- A background loop checks every replica's /health; a replica that fails it is
  taken out of routing and put back when it passes again.
- `start()` checks each URL once: a URL whose /v1/models is 404 (a wrong path),
  401/403 (a wrong key) or that does not serve the model is a start-up error.
  It also learns the context length the upstreams serve the model with.

What is sent and what comes back is the caller's (remote.py): this module moves
JSON bodies and answers, and knows nothing of sampling.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ponder.engine.protocol import EngineBusyError, EngineDeadError, EngineError, EngineRequestError

log = logging.getLogger("ponder.engine.balancer")

KEEPALIVE_EXPIRY = 4.0  # s; under uvicorn's (and so vLLM's) default 5 s keep-alive
HEALTH_TIMEOUT = 5.0  # s; a loaded upstream on a small machine answers /health slowly
EJECT_AFTER = 2  # failed health checks in a row that take a replica out (refused: at once)
# A connection that broke before the answer came: the same replica is worth one more try when
# it is the only one (a kept-alive connection the server had just closed looks like this).
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# Errors after which the caller has nothing from the upstream: safe to send the call elsewhere.
RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, *DROPPED)


class UpstreamError(EngineError):
    """An upstream URL that can never work as given (wrong path, key or model): a start-up error."""


class UpstreamReplyError(EngineError):
    """An upstream answered with something that is not the OpenAI (vLLM) JSON it should be (502)."""


def normalize_url(url: str) -> str:
    """The server's root: 'http://h:8000/v1/' and 'http://h:8000' are the same upstream."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class Replica:
    url: str  # the server's root, without /v1
    sequences: int = 0  # in flight here; a call with n samples counts n
    up: bool = True  # taken out of routing while its health checks fail
    failures: int = 0  # health checks failed in a row

    @property
    def completions(self) -> str:
        return self.url + "/v1/completions"


class Balancer:
    def __init__(self, urls: Sequence[str], model: str, *, api_key: str | None = None, timeout: float = 600.0,
                 connections: int = 256, health_interval: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        """`connections`: kept open to each replica. `transport`: for tests (httpx.MockTransport)."""
        if not urls:
            raise ValueError("an upstream fleet needs at least one URL")
        self.model = model
        self.replicas = [Replica(normalize_url(u)) for u in urls]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        pool = connections * len(self.replicas)
        self.client = httpx.AsyncClient(
            headers=headers, transport=transport, timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool,
                                keepalive_expiry=KEEPALIVE_EXPIRY))
        # Health checks get their own connections: a full pool must not make a replica look dead.
        self._health_client = httpx.AsyncClient(headers=headers, transport=transport, timeout=HEALTH_TIMEOUT)
        self.health_interval = health_interval
        self._watch: asyncio.Task | None = None
        self._turn = itertools.count()
        self.max_model_len: int | None = None  # as the upstreams report it (vLLM's /v1/models)

    # ---- lifetime and health ----

    async def start(self) -> None:
        """Check every upstream once and start the health loop. Raises UpstreamError for a URL
        that can never work; one that does not answer yet is only taken out until it does."""
        problems = [p for p in await asyncio.gather(*(self._check_models(r) for r in self.replicas)) if p]
        if problems:
            raise UpstreamError("; ".join(problems))
        self._start_watch()

    async def _check_models(self, r: Replica) -> str | None:
        url = r.url + "/v1/models"
        try:
            resp = await self._health_client.get(url)
        except httpx.HTTPError as e:
            log.warning("upstream %s does not answer yet (%s: %s); routing skips it until its /health "
                        "answers", r.url, type(e).__name__, e)
            r.up = False
            return None
        if resp.status_code == 404:
            return (f"upstream {r.url}: GET {url} answered 404; is that the server's base URL? "
                    f"(give it with or without /v1, e.g. http://host:8000 or http://host:8000/v1)")
        if resp.status_code in (401, 403):
            return f"upstream {r.url}: GET {url} answered {resp.status_code}; check --upstream-api-key"
        if resp.status_code != 200:
            log.warning("upstream %s: GET %s answered %d; routing skips it until its /health answers",
                        r.url, url, resp.status_code)
            r.up = False
            return None
        try:
            served = [m["id"] for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return f"upstream {r.url}: GET {url} did not return an OpenAI model list"
        if self.model not in served:
            return f"upstream {r.url} serves {served}, not the model {self.model!r} (--model names it)"
        entry = next(m for m in resp.json()["data"] if m["id"] == self.model)
        if isinstance(entry.get("max_model_len"), int):
            self.max_model_len = min(self.max_model_len or entry["max_model_len"], entry["max_model_len"])
        return None

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_health())

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self._probe_all()

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(r) for r in self.replicas))

    async def _probe(self, r: Replica) -> None:
        try:
            ok = (await self._health_client.get(r.url + "/health")).status_code == 200
            refused = False
        except httpx.HTTPError as e:
            ok, refused = False, isinstance(e, httpx.ConnectError)
        r.failures = 0 if ok else r.failures + 1
        if ok and not r.up:
            log.warning("upstream %s passes its health check again: back in routing", r.url)
            r.up = True
        elif r.up and (refused or r.failures >= EJECT_AFTER):
            log.warning("upstream %s failed its health check: taken out of routing", r.url)
            r.up = False

    async def check_health(self) -> None:
        if self._watch is None:  # first call (start() was skipped): look now, then keep looking
            await self._probe_all()
            self._start_watch()
        if not any(r.up for r in self.replicas):
            raise EngineDeadError("no upstream is healthy: " + ", ".join(r.url for r in self.replicas))

    def num_unfinished(self) -> int:
        return sum(r.sequences for r in self.replicas)

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.client.aclose()
        await self._health_client.aclose()

    # ---- routing ----

    def _pick(self, exclude: Replica | None = None) -> Replica | None:
        """Fewest sequences in flight among replicas that are up (all, if none is); ties
        round-robin. None when `exclude` is the only replica."""
        self._start_watch()
        others = [r for r in self.replicas if r is not exclude]
        pool = [r for r in others if r.up] or others
        if not pool:
            return None
        turn = next(self._turn)
        n = len(pool)
        return min(pool, key=lambda r: (r.sequences, (pool.index(r) - turn) % n))

    async def request(self, body: dict[str, Any], sequences: int) -> AsyncIterator[dict[str, Any]]:
        """One call: its JSON answer, or each SSE chunk when `body["stream"]`. Sent once more to
        another replica when it fails before anything was passed on (see the module notes)."""
        failed: Replica | None = None
        same_ok = False
        for attempt in range(2):
            r = self._pick(exclude=failed) or (failed if same_ok else None)
            if r is None:
                break
            r.sequences += sequences
            passed = False
            try:
                async with self.client.stream("POST", r.completions, json=body) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        error: EngineError = _error_for(resp, r)
                        if not _retryable_status(resp.status_code):
                            raise error
                    elif not body["stream"]:
                        yield _json(await resp.aread(), r)
                        return
                    else:
                        async for line in resp.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            data = _json(line[6:], r)
                            if "error" in data:
                                raise EngineError(data["error"].get("message", "upstream error"))
                            passed = True
                            yield data
                        return
            except RETRYABLE as e:
                if passed:  # the caller has tokens from this replica: no second try
                    raise EngineDeadError(f"upstream {r.url} failed mid-stream: {type(e).__name__}: {e}") from e
                error = self._lost(r, e)
                same_ok = isinstance(e, DROPPED)
            except httpx.TransportError as e:
                raise EngineDeadError(f"upstream {r.url} failed: {type(e).__name__}: {e}") from e
            finally:
                r.sequences -= sequences
            failed = r
            if attempt == 0:
                log.info("upstream %s: %s; sending the call to another replica", r.url, error)
        raise error

    async def call(self, body: dict[str, Any], sequences: int) -> dict[str, Any]:
        """A non-streamed call's JSON answer."""
        async with contextlib.aclosing(self.request(body, sequences)) as answers:
            async for data in answers:
                return data
        raise EngineError("upstream sent no answer")

    def _lost(self, r: Replica, e: Exception) -> EngineError:
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            r.up = False  # nobody there: out until its health check passes
        return EngineDeadError(f"upstream {r.url} failed: {type(e).__name__}: {e}")


def _json(text: str | bytes, replica: Replica) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise UpstreamReplyError(f"upstream {replica.url} sent invalid JSON: {e}") from None


def _retryable_status(status: int) -> bool:
    """Worth another replica: busy (429) or failing (5xx); a 4xx would fail anywhere."""
    return status == 429 or status >= 500


def _error_for(r: httpx.Response, replica: Replica) -> EngineError:
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = r.text[:500]
    if r.status_code == 429:
        return EngineBusyError(message)
    if r.status_code in (400, 404, 413, 422):
        return EngineRequestError(message)
    if r.status_code >= 500:
        return EngineDeadError(f"upstream {replica.url} answered {r.status_code}: {message}")
    return EngineError(message)
