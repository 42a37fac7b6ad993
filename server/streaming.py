"""Server-sent events for chat and text completions, one path for every strategy.

While a strategy runs, the stream carries SSE comments (": ponder {...}") with
its progress and a heartbeat every few seconds. A run that streams its answer
as it is made (`direct`, via `Context.generate(live=...)`) sends those tokens
as ordinary chunks at once; any other run's chosen answer is sent when it is
chosen. Then finish chunks, usage if asked, and `data: [DONE]`. An error after
the stream started is a data chunk with "error", then [DONE]. If the client
goes away, every engine call of the request is cancelled (and so aborted
inside vLLM).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ponder.server import metrics
from ponder.server.errors import APIError, from_exception
from ponder.server.responses import Prepared, chunk, ponder_field, usage_chunk
from ponder.strategies.base import Context, Result

HEARTBEAT_S = 2.0
Done = Callable[[str, "Context | None"], None]


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry on another replica", "service_unavailable",
                    code="server_shutting_down", retry=True)


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def comment(event: Any) -> str:
    return f": ponder {json.dumps(event, default=str)}\n\n"


def stream(p: Prepared, ctx: Context, events: asyncio.Queue, run: Callable[[Context], Awaitable[list[Result]]],
           tok: Any, stopping: asyncio.Event, done: Done) -> AsyncIterator[str]:
    """The SSE body of one request. `ctx` puts ("progress", event) and ("delta", i, Output) on `events`."""
    task = asyncio.ensure_future(run(ctx))
    offsets = [len(prefix) for prefix in p.echo]
    live = [False] * len(p.queries)

    def relay(event: tuple) -> str:
        if event[0] == "progress":
            return comment(event[1])
        _, i, out = event
        live[i] = True
        line = sse(chunk(p, i, out.text, out.logprobs, None, tok, offset=offsets[i]))
        offsets[i] += len(out.text)
        return line

    async def body() -> AsyncIterator[str]:
        yield comment({"strategy": p.strategy.name, "stage": "start"})
        for i, prefix in enumerate(p.echo):
            yield sse(chunk(p, i, prefix, None, None, tok, first=True))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait([task, getter, stop], timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield relay(getter.result())
                else:
                    getter.cancel()
                    if stop.done():
                        raise shutting_down()
                    if not task.done():
                        yield ": ponder heartbeat\n\n"
        finally:
            stop.cancel()
        while not events.empty():
            yield relay(events.get_nowait())
        results: list[Result] = task.result()
        for i, r in enumerate(results):
            if not live[i]:
                for piece, lp in _pieces(r.choice.text, r.choice.token_ids, r.choice.logprobs, tok):
                    yield sse(chunk(p, i, piece, lp, None, tok, offset=offsets[i]))
                    offsets[i] += len(piece)
            last = chunk(p, i, None, None, r.choice.finish_reason, tok)
            if i == len(results) - 1:
                last["ponder"] = ponder_field(p, ctx, results)
            yield sse(last)
        if p.include_usage:
            yield sse(usage_chunk(p, ctx, results))
        yield "data: [DONE]\n\n"

    return _guarded(p, body(), task, ctx, done)


async def _guarded(p: Prepared, body: AsyncIterator[str], task: asyncio.Future, ctx: Context,
                   done: Done) -> AsyncIterator[str]:
    """Relay a stream body. An exception becomes an error chunk and [DONE]; at the end, and
    when the client leaves, the request's task is cancelled (aborting its engine calls)."""
    status = "disconnect"
    try:
        async for line in body:
            yield line
        status = "ok"
    except Exception as e:
        status = "error"
        err = from_exception(e)
        metrics.ERRORS.labels(p.strategy.name, err.type).inc()
        yield sse(err.body())
        yield "data: [DONE]\n\n"
    finally:
        task.cancel()
        await body.aclose()
        done(status, ctx)


def _pieces(text: str, token_ids: tuple[int, ...], logprobs: Any, tok: Any) -> list[tuple[str, Any]]:
    """The text cut at token boundaries (one chunk per token, with its log-prob), or whole if they disagree."""
    pieces, prev = [], ""
    for k in range(1, len(token_ids) + 1):
        now = tok.decode(token_ids[:k], skip_special_tokens=True)
        if now.startswith(prev) and not now.endswith("\ufffd"):
            pieces.append(now[len(prev):])
            prev = now
    if "".join(pieces) != text:
        return [(text, None)]
    lps = logprobs if logprobs and len(logprobs) == len(pieces) else None
    return [(piece, lps[j : j + 1] if lps else None) for j, piece in enumerate(pieces)]
