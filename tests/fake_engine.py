"""A scripted Engine for unit tests: replies come from a function of the prompt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from ponder.engine.protocol import EngineDeadError, ModelCard, Output, SamplingSpec, TokenLogprob, collect

Reply = Callable[[str, SamplingSpec, "str | None"], str]


class FakeEngine:
    """`calls` has one (prompt, spec, model) per sequence made, with the seed that sequence used;
    `batches` has one n per engine call (1 for generate), so len(batches) counts engine calls."""

    def __init__(self, tokenizer, reply: Reply, name: str = "fake", max_model_len: int = 1024,
                 adapters: Sequence[str] = (), delay: float = 0.0):
        self.tokenizer = tokenizer
        self.reply = reply
        self.name = name
        self.max_model_len = max_model_len
        self.adapters = list(adapters)
        self.delay = delay
        self.calls: list[tuple[str, SamplingSpec, str | None]] = []
        self.batches: list[int] = []
        self.running: set[str] = set()
        self.dead = False

    def models(self) -> list[ModelCard]:
        return [ModelCard(self.name, "scripted", max_model_len=self.max_model_len)] + [
            ModelCard(a, "scripted", parent=self.name, max_model_len=self.max_model_len) for a in self.adapters]

    async def generate(self, prompt, spec: SamplingSpec, request_id: str, *, model=None,
                       stream: bool = True) -> AsyncIterator[Output]:
        if self.dead:
            raise EngineDeadError("scripted death")
        self.batches.append(1)
        async for out in self._one(prompt, spec, request_id, model, stream):
            yield out

    async def sample(self, prompt, spec: SamplingSpec, n: int, request_id: str, *, model=None) -> list[Output]:
        """n replies, reply i made with seed + i (like vLLM's parallel sampling), in one call."""
        if self.dead:
            raise EngineDeadError("scripted death")
        self.batches.append(n)
        specs = [spec if spec.seed is None else spec.replace(seed=spec.seed + i) for i in range(n)]
        return list(await asyncio.gather(*(collect(self._one(prompt, s, f"{i}_{request_id}", model, False))
                                           for i, s in enumerate(specs))))

    async def _one(self, prompt, spec: SamplingSpec, request_id: str, model, stream: bool) -> AsyncIterator[Output]:
        text = prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt))
        n_prompt = len(prompt) if not isinstance(prompt, str) else len(self.tokenizer.encode(prompt))
        self.calls.append((text, spec, model))
        ids = self.tokenizer.encode(self.reply(text, spec, model), add_special_tokens=False)
        ids = [t for i, t in enumerate(ids) if (i, t) not in set(spec.masked)][: spec.max_tokens]
        finish = "length" if len(ids) == spec.max_tokens else "stop"
        self.running.add(request_id)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            lps = tuple(TokenLogprob(t, self.tokenizer.decode([t]), -0.5, ((t, self.tokenizer.decode([t]), -0.5),))
                        for t in ids) if spec.logprobs is not None else None
            if not stream:
                yield Output(self.tokenizer.decode(ids), tuple(ids), lps, finish, n_prompt, len(ids))
                return
            for k, t in enumerate(ids):
                await asyncio.sleep(0)
                yield Output(self.tokenizer.decode([t]), (t,), lps[k : k + 1] if lps else None,
                             finish if k == len(ids) - 1 else None, n_prompt, k + 1)
        finally:
            self.running.discard(request_id)

    async def score(self, prompt, continuation, request_id, *, model=None, top_logprobs=0) -> list[TokenLogprob]:
        return [TokenLogprob(t, self.tokenizer.decode([t]), -1.0) for t in continuation]

    async def abort(self, request_id: str) -> None:
        self.running -= {r for r in self.running if r == request_id or r.endswith(f"_{request_id}")}

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("scripted death")

    @property
    def is_dead(self) -> bool:
        return self.dead

    def num_unfinished(self) -> int:
        return len(self.running)

    async def aclose(self) -> None:
        pass
