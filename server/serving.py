"""OpenAIServing: turns a validated request into strategy runs and an OpenAI response.

Routes stay thin; this object owns the models, the limits, the strategy runs,
usage accounting and the response shapes (JSON and SSE).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ponder import strategies
from ponder.server import metrics
from ponder.server.errors import APIError, bad_request, from_exception
from ponder.server.protocol import ChatCompletionRequest, CompletionRequest, ModelList, ModelObject
from ponder.server.streaming import stream_direct, stream_strategy
from ponder.strategies.base import Context, Query, Result, seeded
from ponder.strategies.engine import Engine, EngineDeadError, TokenLogprob

CHOICE_SEED_STRIDE = 100_003  # choice j of a seeded request uses seed + j * stride


@dataclass(frozen=True)
class Limits:
    max_n: int = 64
    max_request_tokens: int = 262_144
    max_concurrent_requests: int = 256
    default_strategy: str | dict[str, Any] = "direct"


@dataclass(frozen=True)
class Prepared:
    """A request after validation: what to run, on what, and how to answer."""

    kind: str  # "chat" | "completion"
    id: str
    model: str
    strategy: strategies.Strategy
    params: Any
    queries: list[Query]  # one per (prompt, choice)
    echo: list[str]  # per query: text to prepend (completions with echo)
    logprobs: int | None
    include_usage: bool
    return_trace: bool


class OpenAIServing:
    def __init__(self, engines: list[Engine], limits: Limits):
        self.engines = engines
        self.limits = limits
        self.routes: dict[str, tuple[Engine, str | None]] = {}
        for engine in engines:
            for card in engine.models():
                self.routes[card.id] = (engine, card.id if card.parent else None)
        self.in_flight = 0

    # ---- models and strategies ----

    def route(self, model: str) -> tuple[Engine, str | None]:
        if model not in self.routes:
            raise APIError(404, f"The model `{model}` does not exist. Available: {', '.join(self.routes)}",
                           param="model", code="model_not_found")
        return self.routes[model]

    def models(self) -> ModelList:
        return ModelList(data=[ModelObject(id=c.id, created=c.created, root=c.root, parent=c.parent,
                                           max_model_len=c.max_model_len)
                               for e in self.engines for c in e.models()])

    def strategy(self, spec: Any, path_name: str | None) -> tuple[strategies.Strategy, Any]:
        if path_name is not None:
            if spec is not None and (spec if isinstance(spec, str) else spec.get("name")) != path_name:
                raise bad_request(f"the path names strategy {path_name!r} but the body names another",
                                  param="strategy")
            spec = {"name": path_name, **(spec if isinstance(spec, dict) else {})}
        try:
            return validate_strategy(spec if spec is not None else self.limits.default_strategy)
        except ValueError as e:
            raise bad_request(str(e), param="strategy", code="invalid_strategy") from e

    # ---- requests ----

    def prepare(self, req: ChatCompletionRequest | CompletionRequest, path_strategy: str | None) -> Prepared:
        engine, _ = self.route(req.model)
        if any(e.is_dead for e in self.engines):
            raise from_exception(EngineDeadError("the engine process has died; the server is shutting down"))
        strategy, params = self.strategy(req.strategy, path_strategy)
        lim = self.limits
        if req.n > lim.max_n or getattr(params, "n", 1) > lim.max_n:
            raise bad_request(f"n is capped at {lim.max_n} (request n={req.n}, strategy n={getattr(params, 'n', 1)})",
                              param="n")
        self._check_models(params)
        prompts = self._prompts(req, engine.tokenizer)
        longest = max(len(ids) for ids, _, _ in prompts)
        room = engine.max_model_len - longest
        asked = req.requested_max_tokens()
        if room <= 0 or (asked is not None and asked > room):
            raise bad_request(
                f"This model's maximum context length is {engine.max_model_len} tokens. However, you "
                f"requested {longest + (asked or 0)} tokens ({longest} in the prompt, {asked or 0} in the "
                "completion). Please reduce the length of the prompt or completion.",
                param="max_tokens" if room > 0 else "messages", code="context_length_exceeded")
        max_tokens = asked or room
        cost = strategies.budget(strategy, params, max_tokens) * req.n * len(prompts)
        if cost > lim.max_request_tokens:
            raise bad_request(f"this request may generate up to {cost} tokens, over the server's cap of "
                              f"{lim.max_request_tokens} (--max-request-tokens); lower max_tokens or n",
                              param="max_tokens", code="request_too_large")
        spec = req.spec(max_tokens, req.logprobs_k())
        vocab = len(engine.tokenizer)
        if any(t >= vocab for t, _ in spec.logit_bias):
            raise bad_request(f"logit_bias token ids must be < {vocab}", param="logit_bias")
        queries, echo = [], []
        for ids, question, prefix in prompts:
            for j in range(req.n):
                queries.append(Query(req.model, ids, question, seeded(spec, j * CHOICE_SEED_STRIDE)))
                echo.append(prefix)
        kind = "chat" if isinstance(req, ChatCompletionRequest) else "completion"
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        return Prepared(kind, rid, req.model, strategy, params, queries, echo, req.logprobs_k(),
                        req.include_usage(), req.return_trace)

    @staticmethod
    def _prompts(req: ChatCompletionRequest | CompletionRequest, tok: Any) -> list[tuple[tuple[int, ...], str, str]]:
        """(prompt ids, question, echo prefix) per prompt of the request."""
        if isinstance(req, ChatCompletionRequest):
            try:
                text = tok.apply_chat_template(req.chat(), tokenize=False, add_generation_prompt=True)
            except Exception as e:  # template errors are the request's fault
                raise bad_request(f"cannot render messages with the model's chat template: {e}",
                                  param="messages") from e
            return [(tuple(tok.encode(text, add_special_tokens=False)), req.question(), "")]
        prompts = []
        for p in req.prompts():
            if isinstance(p, list) and any(t < 0 or t >= len(tok) for t in p):
                raise bad_request(f"token ids must be in [0, {len(tok)})", param="prompt")
            ids = tuple(p) if isinstance(p, list) else tuple(tok.encode(p, add_special_tokens=False))
            text = p if isinstance(p, str) else tok.decode(p)
            prompts.append((ids, text, text if req.echo else ""))
        return prompts

    def _check_models(self, params: Any) -> None:
        """Models a strategy names (judge_model, positive_model, ...) must exist: 404 before any work."""
        for f in dataclasses.fields(params):
            value = getattr(params, f.name)
            if f.name.endswith("_model") and value is not None:
                self.route(value)
            elif f.name == "sampler" and value is not None:
                self._check_models(strategies.resolve(value)[1])

    async def handle(self, req: ChatCompletionRequest | CompletionRequest, raw: Request,
                     path_strategy: str | None = None):
        p = self.prepare(req, path_strategy)
        if self.in_flight >= self.limits.max_concurrent_requests:
            raise APIError(429, "the server is at capacity; retry shortly", "rate_limit_error",
                           code="server_busy")
        endpoint = p.kind
        name = p.strategy.name
        t0 = time.perf_counter()
        self.in_flight += 1
        metrics.IN_FLIGHT.inc()

        def done(status: str, ctx: Context | None) -> None:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()
            metrics.REQUESTS.labels(endpoint, name, status).inc()
            metrics.LATENCY.labels(name).observe(time.perf_counter() - t0)
            if ctx is not None:
                metrics.record(name, ctx.prompt_tokens, ctx.completion_tokens, ctx.calls)

        if req.stream:
            if name == "direct":
                body = stream_direct(self, p, done)
            else:
                body = stream_strategy(self, p, done)
            return StreamingResponse(body, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        ctx = Context(self.route, p.id)
        try:
            results = await _until_disconnect(raw, self.run(ctx, p))
        except BaseException as e:
            err = from_exception(e) if isinstance(e, Exception) else None
            metrics.ERRORS.labels(name, err.type if err else "disconnect").inc()
            done("error" if err else "disconnect", ctx)
            if err is None:
                raise
            raise err from e
        done("ok", ctx)
        return JSONResponse(self.response(p, ctx, results))

    async def run(self, ctx: Context, p: Prepared) -> list[Result]:
        return list(await asyncio.gather(*(p.strategy.run(ctx, q, p.params) for q in p.queries)))

    # ---- response shapes ----

    def response(self, p: Prepared, ctx: Context, results: list[Result]) -> dict[str, Any]:
        tok = self.route(p.model)[0].tokenizer
        choices = []
        for i, (r, prefix) in enumerate(zip(results, p.echo)):
            lps = r.choice.logprobs if p.logprobs is not None else None
            if p.kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": r.choice.text},
                                "logprobs": chat_logprobs(lps, p.logprobs or 0, tok) if lps else None,
                                "finish_reason": r.choice.finish_reason})
            else:
                choices.append({"index": i, "text": prefix + r.choice.text,
                                "logprobs": completion_logprobs(lps, p.logprobs or 0, len(prefix)) if lps else None,
                                "finish_reason": r.choice.finish_reason})
        return {"id": p.id, "object": "chat.completion" if p.kind == "chat" else "text_completion",
                "created": int(time.time()), "model": p.model, "choices": choices,
                "usage": usage(ctx, results), "ponder": ponder_field(p, ctx, results)}


async def _until_disconnect(raw: Request, work) -> Any:
    """Run `work`, cancelling it (and so every engine call it made) if the client leaves."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await raw.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait([task, watch], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])  # every engine call has aborted when this returns
            raise asyncio.CancelledError("client disconnected")
    return task.result()


def validate_strategy(spec: Any) -> tuple[strategies.Strategy, Any]:
    """Resolve and type-check a strategy spec with pydantic, samplers included."""
    from pydantic import TypeAdapter, ValidationError

    def construct(cls: type, kwargs: dict) -> Any:
        try:
            return TypeAdapter(cls).validate_python(kwargs)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise ValueError(f"{where + ': ' if where else ''}{err['msg']}") from None

    strategy, params = strategies.resolve(spec, construct)
    sampler = getattr(params, "sampler", None)
    if sampler is not None:
        inner, inner_params = validate_strategy(sampler)
        params = dataclasses.replace(params, sampler=strategies.as_dict(inner, inner_params))
    return strategy, params


def usage(ctx: Context, results: list[Result]) -> dict[str, Any]:
    returned = sum(len(r.choice.token_ids) for r in results)
    return {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens,
            "total_tokens": ctx.prompt_tokens + ctx.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": max(0, ctx.completion_tokens - returned)}}


def ponder_field(p: Prepared, ctx: Context, results: list[Result]) -> dict[str, Any]:
    out: dict[str, Any] = {"strategy": p.strategy.name, "params": dataclasses.asdict(p.params),
                           "engine_calls": ctx.calls}
    if any(r.info for r in results):
        out["info"] = [r.info for r in results]
    if p.return_trace:
        out["trace"] = [r.trace for r in results]
    return out


def _bytes(s: str) -> list[int]:
    return list(s.encode("utf-8"))


def chat_logprobs(lps: tuple[TokenLogprob, ...], k: int, tok: Any) -> dict[str, Any]:
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": _bytes(lp.token),
         "top_logprobs": [{"token": t or tok.decode([i]), "logprob": v, "bytes": _bytes(t or tok.decode([i]))}
                          for i, t, v in lp.top[:k]]}
        for lp in lps]}


def completion_logprobs(lps: tuple[TokenLogprob, ...], k: int, offset: int) -> dict[str, Any]:
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t: v for _, t, v in lp.top[:k]} for lp in lps], "text_offset": offsets}
