"""Response shapes: the OpenAI objects (pydantic models of protocol.py) and SSE chunks.

The one place where results become what a client reads, for JSON and
streaming alike; serving and streaming both build through here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ponder.engine.protocol import TokenLogprob
from ponder.server.protocol import (
    ChatChoice,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    CompletionTokensDetails,
    ResponseMessage,
    Usage,
)
from ponder.strategies import Strategy
from ponder.strategies.base import Context, Query, Result
from ponder.strategies.params import StrategyParams


@dataclass(frozen=True)
class Prepared:
    """A request after validation: what to run, on what, and how to answer."""

    kind: str  # "chat" | "completion"
    id: str
    model: str
    strategy: Strategy
    params: StrategyParams
    queries: list[Query]  # one per (prompt, choice)
    echo: list[str]  # per query: text to prepend (completions with echo)
    logprobs: int | None
    include_usage: bool
    return_trace: bool

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"


def usage(ctx: Context, results: list[Result]) -> Usage:
    """Every token the request cost; reasoning_tokens: those not in the returned choices."""
    returned = sum(len(r.choice.token_ids) for r in results)
    return Usage(prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
                 total_tokens=ctx.prompt_tokens + ctx.completion_tokens,
                 completion_tokens_details=CompletionTokensDetails(
                     reasoning_tokens=max(0, ctx.completion_tokens - returned)))


def ponder_field(p: Prepared, ctx: Context, results: list[Result]) -> dict[str, Any]:
    out: dict[str, Any] = {"strategy": p.strategy.name, "params": p.params.as_dict(), "task": p.queries[0].task.name,
                           "engine_calls": ctx.calls}
    if any(r.info for r in results):
        out["info"] = [r.info for r in results]
    if p.return_trace:
        out["trace"] = [r.trace for r in results]
    return out


def response(p: Prepared, ctx: Context, results: list[Result], tok: Any) -> ChatCompletionResponse | CompletionResponse:
    common = dict(id=p.id, created=int(time.time()), model=p.model, usage=usage(ctx, results),
                  ponder=ponder_field(p, ctx, results))
    if p.kind == "chat":
        return ChatCompletionResponse(choices=[
            ChatChoice(index=i, message=ResponseMessage(content=r.choice.text), finish_reason=r.choice.finish_reason,
                       logprobs=chat_logprobs(r.choice.logprobs, p.logprobs, tok))
            for i, r in enumerate(results)], **common)
    return CompletionResponse(choices=[
        CompletionChoice(index=i, text=prefix + r.choice.text, finish_reason=r.choice.finish_reason,
                         logprobs=completion_logprobs(r.choice.logprobs, p.logprobs, len(prefix)))
        for i, (r, prefix) in enumerate(zip(results, p.echo))], **common)


def chunk(p: Prepared, index: int, text: str | None, logprobs: tuple[TokenLogprob, ...] | None,
          finish: str | None, tok: Any, *, first: bool = False, offset: int = 0) -> dict[str, Any]:
    """One SSE chunk of choice `index`."""
    if p.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else (
            {"content": text} if text else {})
        choice = {"index": index, "delta": delta, "logprobs": chat_logprobs(logprobs, p.logprobs, tok),
                  "finish_reason": finish}
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish,
                  "logprobs": completion_logprobs(logprobs, p.logprobs, offset)}
    return {"id": p.id, "object": p.chunk_object, "created": int(time.time()), "model": p.model, "choices": [choice]}


def usage_chunk(p: Prepared, ctx: Context, results: list[Result]) -> dict[str, Any]:
    return {"id": p.id, "object": p.chunk_object, "created": int(time.time()), "model": p.model, "choices": [],
            "usage": usage(ctx, results).model_dump()}


def _bytes(s: str) -> list[int]:
    return list(s.encode("utf-8"))


def chat_logprobs(lps: tuple[TokenLogprob, ...] | None, k: int | None, tok: Any) -> dict[str, Any] | None:
    if not lps or k is None:
        return None
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": _bytes(lp.token),
         "top_logprobs": [{"token": t or tok.decode([i]), "logprob": v, "bytes": _bytes(t or tok.decode([i]))}
                          for i, t, v in lp.top[:k]]}
        for lp in lps]}


def completion_logprobs(lps: tuple[TokenLogprob, ...] | None, k: int | None, offset: int) -> dict[str, Any] | None:
    if not lps or k is None:
        return None
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t: v for _, t, v in lp.top[:k]} for lp in lps], "text_offset": offsets}
