"""RemoteEngine: the Engine protocol over OpenAI-compatible upstreams (e.g. `vllm serve` replicas).

This is how ponder scales out: the strategy layer runs here, generation runs on
a fleet of vLLM servers (each may itself use tensor or pipeline parallelism),
spread by the Balancer (balancer.py: routing, retry, health). This module is
the wire format: prompts are sent as token ids (ponder tokenizes with the
model's own tokenizer), and vLLM's extensions give back token ids
(`return_token_ids`, so nothing is re-tokenized here), prompt log-probabilities
(`prompt_logprobs`) and masked positions (`vllm_xargs`, for upstreams started
with ponder's logits processor: engine/logits.py, which imports nothing of
ponder and loads as a file). An answer that is not the JSON it should be is an
UpstreamReplyError (502), never a 400.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from ponder.engine.balancer import Balancer, UpstreamError, UpstreamReplyError
from ponder.engine.protocol import ModelCard, Output, Prompt, SamplingSpec, TokenLogprob

__all__ = ["RemoteEngine", "UpstreamError", "UpstreamReplyError"]
log = logging.getLogger("ponder.engine.remote")
DEFAULT_MAX_MODEL_LEN = 4096  # when no upstream says


class RemoteEngine:
    def __init__(self, urls: Sequence[str], model: str, tokenizer: Any, *, adapters: Sequence[str] = (),
                 api_key: str | None = None, max_model_len: int | None = None, timeout: float = 600.0,
                 connections: int = 256, health_interval: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        """`tokenizer`: a name or folder for AutoTokenizer, or a tokenizer. `max_model_len`: None
        takes the upstreams' own (their /v1/models) at `start()`. `connections`: kept open to each
        replica (the CLI passes --upstream-connections, default --max-concurrent-requests).
        `transport`: for tests (httpx.MockTransport)."""
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.tokenizer = tokenizer
        self.fleet = Balancer(urls, model, api_key=api_key, timeout=timeout, connections=connections,
                              health_interval=health_interval, transport=transport)
        self.name = model
        self.adapters = list(adapters)  # LoRA names the upstreams serve (vllm serve --lora-modules)
        self._max_model_len = max_model_len
        self.created = int(time.time())
        self._pieces: dict[int, str] = {}  # token id -> text, for log-probs

    @property
    def max_model_len(self) -> int:
        return self._max_model_len or self.fleet.max_model_len or DEFAULT_MAX_MODEL_LEN

    def models(self) -> list[ModelCard]:
        base = ModelCard(id=self.name, root=self.name, max_model_len=self.max_model_len, created=self.created)
        return [base] + [ModelCard(id=a, root=a, parent=self.name, max_model_len=self.max_model_len,
                                   created=self.created) for a in self.adapters]

    async def start(self) -> None:
        """Check every upstream once (UpstreamError for a URL that can never work) and start the
        health loop; learn the context length the upstreams serve."""
        await self.fleet.start()
        if self._max_model_len is None:
            if self.fleet.max_model_len is None:
                log.warning("no upstream reports max_model_len for %s; assuming %d (set --max-model-len)",
                            self.name, DEFAULT_MAX_MODEL_LEN)
            else:
                log.info("upstreams serve %s with a context of %d tokens", self.name, self.fleet.max_model_len)

    async def check_health(self) -> None:
        await self.fleet.check_health()

    @property
    def is_dead(self) -> bool:
        return False  # upstreams may come back; health checks say 503 meanwhile

    def num_unfinished(self) -> int:
        return self.fleet.num_unfinished()

    async def aclose(self) -> None:
        await self.fleet.aclose()

    # ---- the Engine protocol ----

    async def generate(self, prompt: Prompt, spec: SamplingSpec, request_id: str, *,
                       model: str | None = None, stream: bool = True) -> AsyncIterator[Output]:
        body = self._body(prompt, spec, model, stream)
        if not stream:
            data = await self.fleet.call(body, 1)
            yield self._choice(data, spec)
            return
        async with contextlib.aclosing(self.fleet.request(body, 1)) as chunks:
            async for data in chunks:
                if data.get("choices"):
                    yield self._choice(data, spec)

    async def sample(self, prompt: Prompt, spec: SamplingSpec, n: int, request_id: str, *,
                     model: str | None = None) -> list[Output]:
        body = self._body(prompt, spec, model, stream=False)
        body["n"] = n
        data = await self.fleet.call(body, n)
        with _reply("a sampling answer"):
            # vLLM's usage counts the prompt once for the call and every choice's completion tokens.
            prompt_tokens = (data.get("usage") or {}).get("prompt_tokens", 0)
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if len(choices) != n:
                raise ValueError(f"{len(choices)} choices for n={n}")
            return [self._output(c, spec, prompt_tokens, None) for c in choices]

    async def score(self, prompt: Sequence[int], continuation: Sequence[int], request_id: str, *,
                    model: str | None = None, top_logprobs: int = 0) -> list[TokenLogprob]:
        body = self._body(list(prompt) + list(continuation), SamplingSpec(max_tokens=1, temperature=0.0),
                          model, stream=False)
        body["prompt_logprobs"] = top_logprobs
        data = await self.fleet.call(body, 1)
        with _reply("a prompt_logprobs answer"):
            positions = (data["choices"][0].get("prompt_logprobs") or data.get("prompt_logprobs") or [])[len(prompt):]
            out = []
            for tok, pos in zip(continuation, positions):
                ranked = sorted(((int(k), v) for k, v in pos.items()), key=lambda kv: -kv[1]["logprob"])
                out.append(TokenLogprob(token_id=tok, token=self._piece(tok), logprob=pos[str(tok)]["logprob"],
                                        top=tuple((t, v.get("decoded_token") or "", v["logprob"]) for t, v in ranked)))
            return out

    async def abort(self, request_id: str) -> None:
        # Cancelling the call closes its connection, and vLLM aborts a request whose client
        # disconnects (streamed or not). Nothing else to send.
        return None

    # ---- bodies and outputs ----

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
        if spec.ignore_eos:
            body["ignore_eos"] = True
        if spec.masked:
            body["vllm_xargs"] = {"ponder_mask": [x for m in spec.masked for x in m]}
        return body

    def _choice(self, data: dict[str, Any], spec: SamplingSpec) -> Output:
        """The first choice of an answer (or of a streamed chunk), with the usage it reports."""
        with _reply("a completion"):
            usage = data.get("usage") or {}
            return self._output(data["choices"][0], spec, usage.get("prompt_tokens", 0), usage.get("completion_tokens"))

    def _output(self, choice: dict[str, Any], spec: SamplingSpec, prompt_tokens: int,
                completion_tokens: int | None) -> Output:
        """One choice; completion_tokens None: this choice's own count (len of its tokens)."""
        ids = choice.get("token_ids")
        ids = tuple(ids if ids is not None else self.tokenizer.encode(choice["text"], add_special_tokens=False))
        lps = None
        if spec.logprobs is not None and choice.get("logprobs"):
            lp = choice["logprobs"]
            lps = tuple(
                TokenLogprob(token_id=t, token=self._piece(t), logprob=p,
                             top=tuple((_tid(k), self._piece(_tid(k)), v)
                                       for k, v in sorted((top or {}).items(), key=lambda kv: -kv[1])))
                for t, p, top in zip(ids, lp["token_logprobs"], lp.get("top_logprobs") or [None] * len(ids))
            )
        return Output(text=choice["text"], token_ids=ids, logprobs=lps, finish_reason=choice.get("finish_reason"),
                      prompt_tokens=prompt_tokens,
                      completion_tokens=len(ids) if completion_tokens is None else completion_tokens)

    def _piece(self, token_id: int) -> str:
        """A token's text, decoded once per engine (log-probs name up to 21 tokens a position)."""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self.tokenizer.decode([token_id])
        return piece



def _tid(key: str) -> int:
    """vLLM's `return_tokens_as_token_ids` writes tokens as "token_id:123"."""
    return int(key.rsplit(":", 1)[-1])


@contextlib.contextmanager
def _reply(what: str) -> Iterator[None]:
    """Reading an upstream's JSON: a missing field or a wrong type there is the upstream's fault (502)."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise UpstreamReplyError(f"an upstream sent {what} that is not vLLM's OpenAI JSON "
                                 f"({type(e).__name__}: {e})") from None
