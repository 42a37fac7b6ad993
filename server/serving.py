"""OpenAIServing: turns a validated request into strategy runs and an OpenAI response.

Routes stay thin; this object owns the models, the limits, the strategy runs,
usage accounting and the drain on shutdown. Response shapes live in
responses.py, the SSE body in streaming.py; neither imports this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ponder import strategies, tasks
from ponder.engine.protocol import Engine, EngineDeadError, render_chat
from ponder.server import metrics, streaming
from ponder.server.errors import APIError, bad_request, from_exception
from ponder.server.protocol import ChatCompletionRequest, CompletionRequest, ModelList, ModelObject
from ponder.server.responses import Prepared, response
from ponder.strategies.base import Context, Query, Result, seeded
from ponder.strategies.params import ParamError, StrategyParams
from ponder.tasks.formats import Task

log = logging.getLogger("ponder.serving")
CHOICE_SEED_STRIDE = 100_003  # choice j of a seeded request uses seed + j * stride
OFF_LOOP_CHARS = 8_192  # prompts longer than this are tokenized in a worker thread


@dataclass(frozen=True)
class Limits:
    max_n: int = 64
    max_request_tokens: int = 262_144
    max_concurrent_requests: int = 256
    default_strategy: str | dict[str, Any] = "direct"
    task: str = tasks.DEFAULT  # for models whose folder declares none (--task)
    # reasoning_effort -> strategy spec; a request's explicit `strategy` wins.
    efforts: dict[str, str | dict[str, Any]] = dataclasses.field(default_factory=lambda: dict(EFFORTS))


# What `reasoning_effort` runs when the server is not told otherwise (--effort LEVEL=SPEC).
EFFORTS: dict[str, str | dict[str, Any]] = {
    "minimal": "direct",
    "low": {"name": "self_consistency", "n": 4},
    "medium": {"name": "self_consistency", "n": 8},
    "high": {"name": "tournament", "n": 8, "k": 2},
}


class OpenAIServing:
    def __init__(self, engines: list[Engine], limits: Limits):
        self.engines = engines
        self.limits = limits
        self.routes: dict[str, tuple[Engine, str | None]] = {}
        self.tasks: dict[str, Task] = {}  # model id -> the task its folder declares, else the server's
        for engine in engines:
            base = limits.task
            for card in engine.models():
                self.routes[card.id] = (engine, card.id if card.parent else None)
                if card.parent is None:
                    base = tasks.declared(card.root) or limits.task
                self.tasks[card.id] = tasks.get(base)  # an adapter shares its base model's task
        self.in_flight = 0
        self.draining = False
        self._stopping = asyncio.Event()  # set when the drain's grace is over: running requests end
        self._idle = asyncio.Event()

    # ---- models and strategies ----

    def route(self, model: str) -> tuple[Engine, str | None]:
        if model not in self.routes:
            raise APIError(404, f"The model `{model}` does not exist. Available: {', '.join(self.routes)}",
                           param="model", code="model_not_found")
        return self.routes[model]

    def models(self) -> ModelList:
        # root: the folder's name, never a local path
        return ModelList(data=[ModelObject(id=c.id, created=c.created, root=Path(c.root).name, parent=c.parent,
                                           max_model_len=c.max_model_len)
                               for e in self.engines for c in e.models()])

    def strategy(self, req: ChatCompletionRequest | CompletionRequest,
                 path_name: str | None) -> tuple[strategies.Strategy, StrategyParams]:
        """The explicit strategy (path or body), else the request's reasoning_effort, else the default."""
        spec = req.strategy
        if path_name is not None:
            named = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
            if named is not None and named != path_name:
                raise bad_request(f"the path names strategy {path_name!r} but the body names {named!r}",
                                  param="strategy")
            spec = {**(spec if isinstance(spec, dict) else {}), "name": path_name}
        effort = getattr(req, "reasoning_effort", None)
        if spec is None and effort is not None:
            spec = self.limits.efforts[effort]
        try:
            return strategies.resolve(spec if spec is not None else self.limits.default_strategy)
        except ParamError as e:
            raise bad_request(str(e), param=e.param, code="invalid_strategy") from e

    def task(self, params: StrategyParams, model: str) -> Task:
        """The request's task (strategy.task), else its model's; checked against what the strategy needs."""
        try:
            if any(p.task is not None for p in list(strategies.tree(params))[1:]):
                raise ParamError("task", "is set once, on the outermost strategy (samplers use the same)")
            try:
                task = tasks.get(params.task) if params.task is not None else self.tasks[model]
            except ValueError as e:
                raise ParamError("task", str(e)) from None
            for p in strategies.tree(params):
                p.check_task(task)
        except ParamError as e:
            raise bad_request(f"strategy.{e}", param=f"strategy.{e.param}", code="invalid_strategy") from e
        return task

    def supported(self, strategy: strategies.Strategy) -> list[str]:
        """The served models a strategy runs on with its default parameters (e.g. critical_tokens:
        those whose contrastive models are served too)."""
        params = strategy.Params()
        return [m for m in self.routes if all(x in self.routes for x in params.models(m))]

    # ---- requests ----

    async def prepare(self, req: ChatCompletionRequest | CompletionRequest, path_strategy: str | None) -> Prepared:
        """Validate everything before any engine call: 4xx here costs nothing."""
        engine, _ = self.route(req.model)
        if any(e.is_dead for e in self.engines):
            raise from_exception(EngineDeadError("the engine process has died; the server is shutting down"))
        if self.draining:
            raise streaming.shutting_down()
        strategy, params = self.strategy(req, path_strategy)
        lim = self.limits
        leaves = strategies.samples(params)
        if req.n > lim.max_n or leaves > lim.max_n:
            raise bad_request(f"n is capped at {lim.max_n} (request n={req.n}, samples per run across the "
                              f"strategy's samplers={leaves})", param="n")
        for p in strategies.tree(params):
            missing = [m for m in p.models(req.model) if m not in self.routes]
            for m in set(missing) & {v for v in p.as_dict().values() if isinstance(v, str)}:
                self.route(m)  # a model the request names and nobody serves: 404, as for `model`
            if missing:  # models derived from the served one (e.g. its -pos/-neg): say how to get them
                hint = p.missing_models_hint
                raise bad_request(f"strategy: model(s) {', '.join(missing)} are not served here (served: "
                                  f"{', '.join(self.routes)}){'; ' + hint if hint else ''}",
                                  param="strategy", code="model_not_found")
        task = self.task(params, req.model)
        prompts = await self._prompts(req, engine.tokenizer)
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
        cost = strategies.budget(params, max_tokens) * req.n * len(prompts)
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
                queries.append(Query(req.model, ids, question, seeded(spec, j * CHOICE_SEED_STRIDE), task,
                                     live=len(queries)))
                echo.append(prefix)
        kind = "chat" if isinstance(req, ChatCompletionRequest) else "completion"
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        return Prepared(kind, rid, req.model, strategy, params, queries, echo, req.logprobs_k(),
                        req.include_usage(), req.return_trace)

    @staticmethod
    async def _prompts(req: ChatCompletionRequest | CompletionRequest,
                       tok: Any) -> list[tuple[tuple[int, ...], str, str]]:
        """(prompt ids, question, echo prefix) per prompt; long texts are tokenized off the event loop."""

        async def encode(text: str) -> tuple[int, ...]:
            if len(text) <= OFF_LOOP_CHARS:
                return tuple(tok.encode(text, add_special_tokens=False))
            return tuple(await asyncio.to_thread(tok.encode, text, add_special_tokens=False))

        if isinstance(req, ChatCompletionRequest):
            chat = req.chat()
            try:
                if sum(len(m["content"]) for m in chat) <= OFF_LOOP_CHARS:
                    ids = render_chat(tok, chat)
                else:
                    ids = await asyncio.to_thread(render_chat, tok, chat)
            except Exception as e:  # template errors are the request's fault
                raise bad_request(f"cannot render messages with the model's chat template: {e}",
                                  param="messages") from e
            return [(tuple(ids), req.question(), "")]
        prompts = []
        for p in req.prompts():
            if isinstance(p, list) and any(t < 0 or t >= len(tok) for t in p):
                raise bad_request(f"token ids must be in [0, {len(tok)})", param="prompt")
            ids = tuple(p) if isinstance(p, list) else await encode(p)
            text = p if isinstance(p, str) else tok.decode(p)
            prompts.append((ids, text, text if req.echo else ""))
        return prompts

    async def handle(self, req: ChatCompletionRequest | CompletionRequest, raw: Request,
                     path_strategy: str | None = None):
        p = await self.prepare(req, path_strategy)
        if self.in_flight >= self.limits.max_concurrent_requests:
            raise APIError(429, "the server is at capacity; retry shortly", "rate_limit_error",
                           code="server_busy")
        name = p.strategy.name
        t0 = time.perf_counter()
        self.in_flight += 1
        self._idle.clear()
        metrics.IN_FLIGHT.inc()

        def done(status: str, ctx: Context | None) -> None:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            metrics.IN_FLIGHT.dec()
            metrics.REQUESTS.labels(p.kind, name, status).inc()
            metrics.LATENCY.labels(name).observe(time.perf_counter() - t0)
            if ctx is not None:
                metrics.record(name, ctx.prompt_tokens, ctx.completion_tokens, ctx.calls, ctx.counts)
                verdicts = {how: n for (kind, how), n in ctx.counts.items() if kind == "verdicts"}
                if verdicts.get("written", 0) < sum(verdicts.values()) / 2:
                    log.warning("request %s: the judge wrote its verdict in the task's format in only %d of %d "
                                "calls (the rest were read from log-probabilities: %s); a task whose judge format "
                                "the model follows reads better", p.id, verdicts.get("written", 0),
                                sum(verdicts.values()), verdicts)

        tok = self.route(p.model)[0].tokenizer
        if req.stream:
            events: asyncio.Queue = asyncio.Queue()
            ctx = Context(self.route, p.id, progress=lambda e: events.put_nowait(("progress", e)),
                          deltas=lambda i, out: events.put_nowait(("delta", i, out)))
            body = streaming.stream(p, ctx, events, lambda c: self.run(c, p), tok, self._stopping, done)
            return StreamingResponse(body, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        ctx = Context(self.route, p.id)
        try:
            results = await _until_disconnect(raw, self.run(ctx, p), self._stopping)
        except BaseException as e:
            err = from_exception(e) if isinstance(e, Exception) else None
            metrics.ERRORS.labels(name, err.type if err else "disconnect").inc()
            done("error" if err else "disconnect", ctx)
            if err is None:
                raise
            raise err from e
        done("ok", ctx)
        return JSONResponse(response(p, ctx, results, tok).model_dump(mode="json"))

    async def run(self, ctx: Context, p: Prepared) -> list[Result]:
        return list(await asyncio.gather(*(p.strategy.run(ctx, q, p.params) for q in p.queries)))

    async def drain(self, grace: float) -> None:
        """Refuse new requests, let running ones finish for up to `grace` seconds, then end the
        rest with a 503 (an error chunk and [DONE] on streams); returns when none is left."""
        self.draining = True
        if self.in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                pass
        self._stopping.set()
        if self.in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), 2.0)
            except TimeoutError:
                pass


async def _until_disconnect(raw: Request, work, stopping: asyncio.Event) -> Any:
    """Run `work`, cancelling it (and so every engine call it made) if the client leaves
    or the drain's grace is over (then a 503)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await raw.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait([task, watch, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])  # every engine call has aborted when this returns
            if stopping.is_set():
                raise streaming.shutting_down()
            raise asyncio.CancelledError("client disconnected")
    return task.result()
