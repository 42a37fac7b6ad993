"""RemoteEngine: OpenAI-compatible upstreams (e.g. `vllm serve` replicas) over httpx.

This is how ponder scales out: the strategy layer runs here, generation runs on
a fleet of vLLM servers (each may itself use tensor or pipeline parallelism).
Each call goes to the upstream with the fewest calls in flight (round-robin
among equals). Prompts are sent as token ids (ponder tokenizes with the model's
own tokenizer), and vLLM's extensions give back token ids (`return_token_ids`),
prompt log-probabilities (`prompt_logprobs`) and masked positions (`vllm_xargs`,
for upstreams started with `--logits-processors ponder.server.engine.logits:MaskTokensAtPositions`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from ponder.strategies.engine import (
    EngineBusyError,
    EngineDeadError,
    EngineError,
    EngineRequestError,
    ModelCard,
    Output,
    Prompt,
    SamplingSpec,
    TokenLogprob,
)


class RemoteEngine:
    def __init__(self, urls: Sequence[str], model: str, tokenizer: str, *, adapters: Sequence[str] = (),
                 api_key: str | None = None, max_model_len: int = 4096, timeout: float = 600.0):
        from transformers import AutoTokenizer

        if not urls:
            raise ValueError("RemoteEngine needs at least one upstream URL")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.clients = [httpx.AsyncClient(base_url=u.rstrip("/"), headers=headers, timeout=timeout)
                        for u in urls]
        self.in_flight = [0] * len(urls)
        self._turn = itertools.count()
        self.name = model
        self.adapters = list(adapters)  # LoRA names the upstreams serve (vllm serve --lora-modules)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.max_model_len = max_model_len
        self._requests: dict[str, int] = {}
        self.created = int(time.time())

    def models(self) -> list[ModelCard]:
        base = ModelCard(id=self.name, root=self.name, max_model_len=self.max_model_len, created=self.created)
        return [base] + [ModelCard(id=a, root=a, parent=self.name, max_model_len=self.max_model_len,
                                   created=self.created) for a in self.adapters]

    def _pick(self) -> int:
        """Least calls in flight; ties broken round-robin."""
        turn = next(self._turn)
        n = len(self.clients)
        return min(range(n), key=lambda i: (self.in_flight[i], (i - turn) % n))

    def _body(self, prompt: Prompt, spec: SamplingSpec, model: str | None, stream: bool) -> dict[str, Any]:
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        body: dict[str, Any] = {
            "model": model or self.name, "prompt": ids, "max_tokens": spec.max_tokens,
            "temperature": spec.temperature, "top_p": spec.top_p, "stream": stream,
            "return_token_ids": True, "return_tokens_as_token_ids": True,
        }
        if stream:
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        if spec.presence_penalty or spec.frequency_penalty:
            body.update(presence_penalty=spec.presence_penalty, frequency_penalty=spec.frequency_penalty)
        if spec.seed is not None:
            body["seed"] = spec.seed
        if spec.stop:
            body["stop"] = list(spec.stop)
        if spec.logprobs is not None:
            body["logprobs"] = spec.logprobs
        if spec.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in spec.logit_bias}
        if spec.masked:
            body["vllm_xargs"] = {"ponder_mask": [x for m in spec.masked for x in m]}
        return body

    async def _post(self, i: int, body: dict[str, Any]) -> httpx.Response:
        try:
            r = await self.clients[i].post("/v1/completions", json=body)
        except httpx.TransportError as e:
            raise EngineDeadError(f"upstream {self.clients[i].base_url} unreachable: {e}") from e
        _raise_for(r)
        return r

    async def generate(self, prompt: Prompt, spec: SamplingSpec, request_id: str, *,
                       model: str | None = None, stream: bool = True) -> AsyncIterator[Output]:
        i = self._pick()
        self.in_flight[i] += 1
        self._requests[request_id] = i
        body = self._body(prompt, spec, model, stream)
        try:
            if not stream:
                data = (await self._post(i, body)).json()
                yield self._output(data["choices"][0], data.get("usage") or {}, spec)
                return
            async with self.clients[i].stream("POST", "/v1/completions", json=body) as r:
                if r.status_code >= 400:
                    await r.aread()
                    _raise_for(r)
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        raise EngineError(data["error"].get("message", "upstream error"))
                    if data.get("choices"):
                        yield self._output(data["choices"][0], data.get("usage") or {}, spec)
        except httpx.TransportError as e:
            raise EngineDeadError(f"upstream {self.clients[i].base_url} failed: {e}") from e
        finally:
            self.in_flight[i] -= 1
            self._requests.pop(request_id, None)

    def _output(self, choice: dict[str, Any], usage: dict[str, Any], spec: SamplingSpec) -> Output:
        ids = tuple(choice.get("token_ids") or self.tokenizer.encode(choice["text"], add_special_tokens=False))
        lps = None
        if spec.logprobs is not None and choice.get("logprobs"):
            lp = choice["logprobs"]
            lps = tuple(
                TokenLogprob(token_id=t, token=self.tokenizer.decode([t]), logprob=p,
                             top=tuple((_tid(k), self.tokenizer.decode([_tid(k)]), v)
                                       for k, v in sorted((top or {}).items(), key=lambda kv: -kv[1])))
                for t, p, top in zip(ids, lp["token_logprobs"], lp.get("top_logprobs") or [None] * len(ids))
            )
        return Output(text=choice["text"], token_ids=ids, logprobs=lps, finish_reason=choice.get("finish_reason"),
                      prompt_tokens=usage.get("prompt_tokens", 0),
                      completion_tokens=usage.get("completion_tokens", len(ids)))

    async def score(self, prompt: Sequence[int], continuation: Sequence[int], request_id: str, *,
                    model: str | None = None, top_logprobs: int = 0) -> list[TokenLogprob]:
        body = self._body(list(prompt) + list(continuation), SamplingSpec(max_tokens=1, temperature=0.0),
                          model, stream=False)
        body["prompt_logprobs"] = top_logprobs
        i = self._pick()
        self.in_flight[i] += 1
        try:
            data = (await self._post(i, body)).json()
        finally:
            self.in_flight[i] -= 1
        positions = (data["choices"][0].get("prompt_logprobs") or data.get("prompt_logprobs") or [])[len(prompt):]
        out = []
        for tok, pos in zip(continuation, positions):
            ranked = sorted(((int(k), v) for k, v in pos.items()), key=lambda kv: -kv[1]["logprob"])
            out.append(TokenLogprob(token_id=tok, token=self.tokenizer.decode([tok]),
                                    logprob=pos[str(tok)]["logprob"],
                                    top=tuple((t, v.get("decoded_token") or "", v["logprob"]) for t, v in ranked)))
        return out

    async def abort(self, request_id: str) -> None:
        # Closing the stream (the generator's cancellation) aborts upstream: vLLM
        # aborts a request whose client disconnects. Nothing else to send.
        return None

    async def check_health(self) -> None:
        for c in self.clients:
            try:
                if (await c.get("/health", timeout=5.0)).status_code == 200:
                    return
            except httpx.TransportError:
                continue
        raise EngineDeadError("no upstream is healthy")

    @property
    def is_dead(self) -> bool:
        return False  # upstreams may come back; health checks say 503 meanwhile

    def num_unfinished(self) -> int:
        return sum(self.in_flight)

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()


def _tid(key: str) -> int:
    """vLLM's `return_tokens_as_token_ids` writes tokens as "token_id:123"."""
    return int(key.rsplit(":", 1)[-1])


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = r.text[:500]
    if r.status_code == 429:
        raise EngineBusyError(message)
    if r.status_code in (400, 404, 413, 422):
        raise EngineRequestError(message)
    if r.status_code >= 500:
        raise EngineDeadError(f"upstream answered {r.status_code}: {message}")
    raise EngineError(message)
