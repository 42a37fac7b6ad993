"""The Engine protocol: the one seam between ponder and a model server.

The strategies, the eval harness and the trainers talk to an `Engine`, and so
does the HTTP server; the types live here, at the ground floor with their
implementations (`vllm_engine.VllmEngine`, the one module that imports vLLM's
engine; `remote.RemoteEngine`), and import nothing of ponder above them (like
vLLM's own `vllm/engine/protocol.py`). Data crossing the seam is plain frozen
dataclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Prompt = str | Sequence[int]  # text, or token ids (preferred: ponder tokenizes once)


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample; mirrors the OpenAI fields vLLM understands."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token plus top-k
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    # (position in the output, token id): forbid that token at that position.
    # Implemented inside vLLM by ponder's logits processor.
    masked: tuple[tuple[int, int], ...] = ()
    ignore_eos: bool = False  # vLLM's extension: generate past the end-of-sequence token, to max_tokens

    def replace(self, **changes: Any) -> SamplingSpec:
        from dataclasses import replace

        return replace(self, **changes)

    def internal(self, **changes: Any) -> SamplingSpec:
        """A spec for ponder's own calls (judges, backward questions): how the request shapes its
        answer (stop, logprobs, logit_bias, masks, ignore_eos) does not apply to them."""
        return self.replace(logprobs=None, stop=(), logit_bias=(), masked=(), ignore_eos=False, **changes)


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob), best first


@dataclass(frozen=True)
class Output:
    """A chunk of one generated sequence (a delta when streaming, else the whole)."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: str | None  # "stop" | "length" | None while running
    prompt_tokens: int
    completion_tokens: int  # cumulative for the sequence so far


@dataclass(frozen=True)
class ModelCard:
    id: str
    root: str  # path or upstream name of the base weights
    parent: str | None = None  # base model id when this is a LoRA adapter
    max_model_len: int = 0
    created: int = field(default=0, compare=False)


class EngineError(Exception):
    """Base of the errors an engine raises; the HTTP layer maps them."""


class EngineDeadError(EngineError):
    """The engine process is gone; every further request fails (503)."""


class EngineBusyError(EngineError):
    """The engine refuses work for now (429)."""


class EngineRequestError(EngineError):
    """The engine rejected this request's input (400)."""


@runtime_checkable
class Engine(Protocol):
    """A running model server: one base model plus any adapters."""

    tokenizer: Any  # a Hugging Face tokenizer (chat template, encode, decode)
    max_model_len: int

    def models(self) -> list[ModelCard]: ...

    def generate(self, prompt: Prompt, spec: SamplingSpec, request_id: str, *,
                 model: str | None = None, stream: bool = True) -> AsyncIterator[Output]:
        """Sample one sequence. stream=True yields deltas; False yields one final Output."""
        ...

    async def sample(self, prompt: Prompt, spec: SamplingSpec, n: int, request_id: str, *,
                     model: str | None = None) -> list[Output]:
        """n whole sequences of one prompt in one engine call (vLLM's parallel sampling: one
        prefill shared by all n). Sample i is what `generate` makes with seed `spec.seed + i`
        (all unseeded when spec.seed is None). Each Output's prompt_tokens is the prompt's
        length, which the call spent once; completion_tokens is that sample's own."""
        ...

    async def score(self, prompt: Sequence[int], continuation: Sequence[int], request_id: str, *,
                    model: str | None = None, top_logprobs: int = 0) -> list[TokenLogprob]:
        """Log-probabilities of `continuation` given `prompt`: one prefill, no sampling."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise EngineDeadError when the engine cannot serve."""
        ...

    @property
    def is_dead(self) -> bool: ...

    def num_unfinished(self) -> int:
        """Requests the engine is still working on (for /metrics and tests)."""
        ...

    async def aclose(self) -> None: ...


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt in the model's own template, generation prompt appended.

    The one place ponder renders chat: serving, strategies, eval and trainers all
    call it, so what a model is trained on is what it is served.
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


async def collect(outputs: AsyncIterator[Output]) -> Output:
    """Join a stream of deltas into one Output."""
    text, ids, lps = [], [], []
    last: Output | None = None
    async for out in outputs:
        text.append(out.text)
        ids.extend(out.token_ids)
        if out.logprobs:
            lps.extend(out.logprobs)
        last = out
    if last is None:
        raise EngineError("engine returned no output")
    return Output(text="".join(text), token_ids=tuple(ids),
                  logprobs=tuple(lps) if last.logprobs is not None or lps else None,
                  finish_reason=last.finish_reason, prompt_tokens=last.prompt_tokens,
                  completion_tokens=last.completion_tokens)
