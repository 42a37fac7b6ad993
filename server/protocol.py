"""OpenAI request and response models: pydantic lives here, at the edge only.

Requests convert themselves into the frozen dataclasses the rest of ponder
uses (`to_sampling_spec`, `strategy_spec`). Unknown top-level fields are
rejected (400) rather than silently ignored, and so is text that is not valid
Unicode (JSON can carry a lone surrogate; the tokenizer cannot).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from ponder import strategies, tasks
from ponder.engine.protocol import SamplingSpec

EffortLevel = Literal["minimal", "low", "medium", "high"]


def valid_unicode(value: Any) -> Any:
    """`value` if every string in it encodes as UTF-8; a lone surrogate ("\\ud800") does not."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("invalid Unicode (a lone surrogate)") from None
    elif isinstance(value, BaseModel):
        valid_unicode(list(value.__dict__.values()))
    elif isinstance(value, (list, tuple)):
        for v in value:
            valid_unicode(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            valid_unicode(k)
            valid_unicode(v)
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    _unicode = field_validator("content", "name")(valid_unicode)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


# Typed loosely for parsing (ponder.strategies.resolve checks it and names the bad field), but
# documented as a oneOf over the strategies, so /openapi.json clients and fuzzers see every parameter.
StrategyField = Annotated[str | dict[str, Any] | None, WithJsonSchema(strategies.request_schema(list(tasks.TASKS)))]


class _Common(StrictModel):
    """Fields shared by chat and text completions."""

    model: str
    n: int = Field(1, ge=1, description="choices to return; each runs the strategy once")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = Field(False, description="vLLM's extension: generate past the end-of-sequence token, up "
                                                "to max_tokens (for benchmarks)")
    # ponder's extensions
    strategy: StrategyField = None
    return_trace: bool = Field(False, description="include the strategy's full trace in `ponder`")

    _unicode = field_validator("model", "stop", "user", "strategy")(valid_unicode)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            if not (k.isascii() and k.isdigit()):  # "²" is a digit to isdigit, not to int
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
            if not -100 <= b <= 100:
                raise ValueError("logit_bias values must be in [-100, 100]")
        return v

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def spec(self, max_tokens: int, logprobs: int | None) -> SamplingSpec:
        return SamplingSpec(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            stop=self.stops(), logprobs=logprobs, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items()),
            ignore_eos=self.ignore_eos)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning_effort: EffortLevel | None = Field(
        None, description="runs the strategy the server maps this level to (--effort); an explicit `strategy` wins")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat(self) -> list[dict[str, str]]:
        roles = {"developer": "system"}
        return [{"role": roles.get(m.role, m.role), "content": m.text()} for m in self.messages]

    def question(self) -> str:
        users = [m.text() for m in self.messages if m.role == "user"]
        return users[-1] if users else self.messages[-1].text()


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, token ids, or a list of either (one result set per prompt)")
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        valid_unicode(v)
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and any(isinstance(p, list) and not p for p in v):
            raise ValueError("token id prompts must not be empty")
        return v

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        return self.logprobs


# Responses. Declared for the OpenAPI schema; serving builds them.

class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    completion_tokens_details: CompletionTokensDetails | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    ponder: dict[str, Any] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    ponder: dict[str, Any] | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ponder"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class StrategyObject(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema
    models: list[str]  # the served models it runs on with its default parameters


class TaskObject(BaseModel):
    name: str
    description: str


class StrategyList(BaseModel):
    object: Literal["list"] = "list"
    default: str | dict[str, Any]
    data: list[StrategyObject]
    tasks: list[TaskObject]  # what `strategy.task` may name
    model_tasks: dict[str, str]  # each served model's task when a request names none
