"""Server-sent events for chat and text completions.

`direct` streams tokens as the engine makes them. Any other strategy sends SSE
comments (": ponder {...}") with its progress, and a heartbeat every few seconds,
while it runs; then the chosen answer as ordinary chunks, usage if asked, and
`data: [DONE]`. An error after the stream started is a data chunk with "error".
If the client goes away, every engine call of the request is cancelled (and so
aborted inside vLLM).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ponder.server import metrics
from ponder.server.errors import from_exception
from ponder.strategies.base import Context, Result
from ponder.strategies.engine import TokenLogprob

if TYPE_CHECKING:
    from ponder.server.serving import OpenAIServing, Prepared

HEARTBEAT_S = 2.0
Done = Callable[[str, "Context | None"], None]


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def chunk(p: Prepared, index: int, text: str | None, logprobs: tuple[TokenLogprob, ...] | None,
          finish: str | None, tok: Any, *, first: bool = False, offset: int = 0) -> dict[str, Any]:
    from ponder.server.serving import chat_logprobs, completion_logprobs

    if p.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else (
            {"content": text} if text else {})
        lp = chat_logprobs(logprobs, p.logprobs or 0, tok) if logprobs and p.logprobs is not None else None
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        lp = (completion_logprobs(logprobs, p.logprobs or 0, offset)
              if logprobs and p.logprobs is not None else None)
        choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        obj = "text_completion"
    return {"id": p.id, "object": obj, "created": int(time.time()), "model": p.model, "choices": [choice]}


def _closing(p: Prepared, usage: dict[str, Any] | None) -> list[str]:
    out = []
    if p.include_usage and usage is not None:
        obj = "chat.completion.chunk" if p.kind == "chat" else "text_completion"
        out.append(sse({"id": p.id, "object": obj, "created": int(time.time()), "model": p.model,
                        "choices": [], "usage": usage}))
    return out + ["data: [DONE]\n\n"]


def _error(p: Prepared, e: BaseException) -> str:
    err = from_exception(e)
    metrics.ERRORS.labels(p.strategy.name, err.type).inc()
    return sse(err.body())


async def _guarded(p: Prepared, body: AsyncIterator[str], tasks: list[asyncio.Future], ctx: Context,
                   done: Done) -> AsyncIterator[str]:
    """Relay a stream body. An exception becomes an error chunk and [DONE]; at the end, and
    when the client leaves, every task of the request is cancelled (aborting its engine calls)."""
    status = "disconnect"
    try:
        async for line in body:
            yield line
        status = "ok"
    except Exception as e:
        status = "error"
        yield _error(p, e)
        yield "data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        await body.aclose()
        done(status, ctx)


def stream_direct(serving: OpenAIServing, p: Prepared, done: Done) -> AsyncIterator[str]:
    """Plain decoding: every choice streams its engine deltas as they come."""
    ctx = Context(serving.route, p.id)
    engine, adapter = serving.route(p.model)
    tok = engine.tokenizer
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int) -> None:
        q = p.queries[i]
        try:
            n = 0
            async for out in engine.generate(list(q.prompt_ids), q.spec, f"{p.id}-{i}", model=adapter):
                n = out.completion_tokens
                await queue.put((i, out))
            ctx.prompt_tokens += len(q.prompt_ids)
            ctx.completion_tokens += n
            ctx.calls += 1
        except BaseException as e:
            await queue.put((i, e))
            raise

    tasks = [asyncio.ensure_future(pump(i)) for i in range(len(p.queries))]

    async def body() -> AsyncIterator[str]:
        for i, prefix in enumerate(p.echo):
            yield sse(chunk(p, i, prefix, None, None, tok, first=True))
        offsets = [len(prefix) for prefix in p.echo]
        finished = 0
        while finished < len(tasks):
            i, out = await queue.get()
            if isinstance(out, BaseException):
                raise out
            yield sse(chunk(p, i, out.text, out.logprobs, out.finish_reason, tok, offset=offsets[i]))
            offsets[i] += len(out.text)
            finished += out.finish_reason is not None
        await asyncio.gather(*tasks)
        for line in _closing(p, _usage(ctx)):
            yield line

    return _guarded(p, body(), tasks, ctx, done)


def stream_strategy(serving: OpenAIServing, p: Prepared, done: Done) -> AsyncIterator[str]:
    """Heartbeats with progress while the strategy runs, then the chosen answer."""
    events: asyncio.Queue = asyncio.Queue()
    ctx = Context(serving.route, p.id, progress=events.put_nowait)
    task = asyncio.ensure_future(serving.run(ctx, p))
    tok = serving.route(p.model)[0].tokenizer

    async def body() -> AsyncIterator[str]:
        from ponder.server.serving import ponder_field, usage

        yield f": ponder {json.dumps({'strategy': p.strategy.name, 'stage': 'start'})}\n\n"
        while not task.done():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait([task, getter], timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield f": ponder {json.dumps(getter.result(), default=str)}\n\n"
            else:
                getter.cancel()
                yield ": ponder heartbeat\n\n"
        results: list[Result] = task.result()
        for i, (r, prefix) in enumerate(zip(results, p.echo)):
            yield sse(chunk(p, i, prefix, None, None, tok, first=True))
            pieces = _pieces(r.choice.text, r.choice.token_ids, tok)
            lps = r.choice.logprobs if r.choice.logprobs and len(r.choice.logprobs) == len(pieces) else None
            offset = len(prefix)
            for j, piece in enumerate(pieces):
                yield sse(chunk(p, i, piece, lps[j : j + 1] if lps else None, None, tok, offset=offset))
                offset += len(piece)
            last = chunk(p, i, None, None, r.choice.finish_reason, tok)
            if i == len(results) - 1:
                last["ponder"] = ponder_field(p, ctx, results)
            yield sse(last)
        for line in _closing(p, usage(ctx, results)):
            yield line

    return _guarded(p, body(), [task], ctx, done)


def _pieces(text: str, token_ids: tuple[int, ...], tok: Any) -> list[str]:
    """The text cut at token boundaries (one chunk per token), or whole if they disagree."""
    pieces, prev = [], ""
    for k in range(1, len(token_ids) + 1):
        now = tok.decode(token_ids[:k], skip_special_tokens=True)
        if now.startswith(prev) and not now.endswith("\ufffd"):
            pieces.append(now[len(prev):])
            prev = now
    return pieces if "".join(pieces) == text else [text]


def _usage(ctx: Context) -> dict[str, Any]:
    return {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
            "total_tokens": ctx.prompt_tokens + ctx.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": 0}}
