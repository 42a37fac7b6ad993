"""What every strategy works with: the query, candidates, results, and a Context.

A strategy is `async def run(ctx, query, params) -> Result`. It reaches engines
only through its Context, which counts every token and call (for `usage` and
metrics), reports progress (SSE heartbeats), and renders chat prompts with the
model's own template. Calls issued together with asyncio.gather are batched by
vLLM; prompts that share a prefix share vLLM's prefix cache; n candidates of one
prompt are one engine call (`Engine.sample`, vLLM's parallel sampling).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ponder.engine.protocol import Engine, Output, SamplingSpec, TokenLogprob, collect, render_chat
from ponder.strategies.params import Sampler

Router = Callable[[str], tuple[Engine, str | None]]  # model id -> (engine, adapter or None)
Deltas = Callable[[int, Output], None]  # (choice index, delta) as the engine makes it


class Task(Protocol):
    """What a strategy asks of the request's task (ponder.tasks implements it; no strategy names a task).

    extract: a reply's answer, normalised (None: none, or the task has none). judge_messages: the
    judge's chat prompt for (question, solution 1, solution 2). read_verdict: the written verdict,
    1, 2, 0 (tie) or None (none in the task's format). verdict_slots: (the reply's reasoning, the
    verdict for solution 1, for solution 2), to read a verdict from log-probabilities.
    backward_question: (question with a number masked, that number) or None; backward_prompt: the
    message that asks to solve it; backward_question_prompt / masked_quantity: the same for a backward
    question the model writes (RevThink), where the task has that format."""

    name: str
    has_answers: bool
    has_backward: bool
    backward_mode: str

    def extract(self, text: str) -> str | None: ...
    def judge_messages(self, question: str, solution_1: str, solution_2: str) -> list[dict[str, str]]: ...
    def read_verdict(self, reply: str) -> int | None: ...
    def verdict_slots(self, reply: str) -> tuple[str, str, str]: ...
    def backward_question(self, question: str, answer: str) -> tuple[str, str] | None: ...
    def backward_question_prompt(self, question: str, answer: str) -> str | None: ...
    def backward_prompt(self, backward_question: str) -> str: ...
    def masked_quantity(self, question: str, backward_question: str, answer: str) -> str | None: ...


@dataclass(frozen=True)
class Query:
    """What the user asked, as the candidates will see it."""

    model: str
    prompt_ids: tuple[int, ...]  # the rendered prompt every candidate continues
    question: str  # the last user message (chat) or the prompt text (completions)
    spec: SamplingSpec  # the request's own sampling settings, used for candidates
    task: Task  # how answers and verdicts are written (the request's, its model's or the server's)
    live: int | None = None  # a top-level run answering choice i streams its answer as it is made

    def but(self, **changes: Any) -> Query:
        return replace(self, **changes)


@dataclass(frozen=True)
class Candidate:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: str | None


@dataclass
class Result:
    choice: Candidate
    trace: dict[str, Any] = field(default_factory=dict)  # returned with "return_trace": true
    info: dict[str, Any] = field(default_factory=dict)  # always returned (e.g. judge agreement)


class StrategyError(ValueError):
    """A request a strategy cannot serve as asked (mapped to HTTP 400)."""


class Context:
    """One request's handle on the engines; counts everything it spends."""

    def __init__(self, route: Router, request_id: str,
                 progress: Callable[[dict[str, Any]], None] | None = None, deltas: Deltas | None = None):
        self.route = route
        self.request_id = request_id
        self._progress = progress
        self._deltas = deltas
        self._ids = itertools.count()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        # ("verdicts", "written" | "constrained" | "unread") and ("answers", "extracted" | "unextracted"):
        # how often the task's formats were read, for /metrics (a fallback is counted, never hidden)
        self.counts: Counter[tuple[str, str]] = Counter()

    def engine(self, model: str) -> tuple[Engine, str | None]:
        return self.route(model)

    def progress(self, **event: Any) -> None:
        if self._progress is not None:
            self._progress(event)

    def render(self, model: str, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
        """Token ids of a chat prompt, with the generation prompt appended. A system message that
        the model's template refuses (some templates have no system role) joins the first user one."""
        tok = self.engine(model)[0].tokenizer
        try:
            return tuple(render_chat(tok, messages))
        except Exception:
            if not messages or messages[0]["role"] != "system" or len(messages) < 2:
                raise
            merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
            return tuple(render_chat(tok, [merged, *messages[2:]]))

    def count(self, kind: str, outcome: str, n: int = 1) -> None:
        self.counts[kind, outcome] += n

    def tokenizer(self, model: str) -> Any:
        return self.engine(model)[0].tokenizer

    async def generate(self, model: str, prompt_ids: Sequence[int], spec: SamplingSpec,
                       live: int | None = None) -> Candidate:
        """One sample. `live=i`: this sample is choice i's answer, so its tokens are passed on
        (streamed to the client) as the engine makes them."""
        engine, adapter = self.engine(model)
        rid = f"{self.request_id}-{next(self._ids)}"
        if live is None or self._deltas is None:
            out = await collect(engine.generate(list(prompt_ids), spec, rid, model=adapter, stream=False))
        else:
            out = await collect(self._relay(live, engine.generate(list(prompt_ids), spec, rid, model=adapter)))
        self.calls += 1
        self.prompt_tokens += out.prompt_tokens
        self.completion_tokens += out.completion_tokens
        return Candidate(out.text, out.token_ids, out.logprobs, out.finish_reason)

    async def _relay(self, choice: int, outputs: AsyncIterator[Output]) -> AsyncIterator[Output]:
        async for out in outputs:
            self._deltas(choice, out)  # type: ignore[misc]
            yield out

    async def score(self, model: str, prompt_ids: Sequence[int], continuation: Sequence[int],
                    top_logprobs: int = 0) -> list[TokenLogprob]:
        engine, adapter = self.engine(model)
        rid = f"{self.request_id}-{next(self._ids)}"
        out = await engine.score(prompt_ids, continuation, rid, model=adapter, top_logprobs=top_logprobs)
        self.calls += 1
        self.prompt_tokens += len(prompt_ids) + len(continuation)
        return out

    async def sample(self, query: Query, n: int,
                     sampler: Sampler | None = None) -> tuple[list[Candidate], list[dict]]:
        """n candidates for the query, all issued at once.

        With no sampler they are n plain samples (seeds seed, seed+1, ...) from one
        engine call: the engine samples them in parallel from one prefill, so the
        prompt is counted once and the call once. A sampler is another strategy,
        resolved when the request was validated, run n times; each run's chosen
        answer is one candidate and its trace is kept.
        """
        if sampler is None:
            if n > 1 and query.spec.temperature == 0:  # greedy: n equal samples (vLLM refuses n > 1 there)
                cands, trace = await self.sample(query, 1)
                return cands * n, trace
            if query.spec.seed is not None and query.spec.seed + n > 2**63:
                # The engine's seeds would pass int64; seeded() wraps them, one call each.
                cands = await asyncio.gather(*(self.generate(query.model, query.prompt_ids, seeded(query.spec, i))
                                               for i in range(n)))
                return list(cands), []
            engine, adapter = self.engine(query.model)
            rid = f"{self.request_id}-{next(self._ids)}"
            outs = await engine.sample(list(query.prompt_ids), query.spec, n, rid, model=adapter)
            self.calls += 1
            self.prompt_tokens += outs[0].prompt_tokens if outs else 0
            self.completion_tokens += sum(o.completion_tokens for o in outs)
            return [Candidate(o.text, o.token_ids, o.logprobs, o.finish_reason) for o in outs], []
        results = await asyncio.gather(*(
            sampler.run(self, query.but(spec=seeded(query.spec, 7919 * i), live=None), sampler.params)
            for i in range(n)))
        return [r.choice for r in results], [r.trace for r in results]


def seeded(spec: SamplingSpec, offset: int) -> SamplingSpec:
    """The same spec with seed + offset, kept within int64 (or no seed if the request had none)."""
    return spec if spec.seed is None else spec.replace(seed=(spec.seed + offset) % 2**63)
