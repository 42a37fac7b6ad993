"""`ponder serve` configuration: one dataclass, filled from flags or PONDER_* env vars.

Every flag --some-flag can also be set as PONDER_SOME_FLAG (repeatable flags
take a comma-separated list, --effort a ';'-separated one); a flag on the
command line wins over the env. A flag's type is its field's type, for flags
and env values alike: a bad value is a usage error at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ponder import flags, tasks
from ponder.models import default_models
from ponder.server.protocol import EffortLevel


@dataclass
class ServeConfig:
    model: list[str] = field(default_factory=default_models, metadata={
        "help": "model folder (or upstream model name with --upstream); repeat to serve several "
                "(default: models/ponder-small and its -pos/-neg contrastive models)"})
    served_model_name: list[str] = field(default_factory=list, metadata={
        "help": "ids to serve the models under (default: folder names), one per --model"})
    lora: list[str] = field(default_factory=list, metadata={
        "help": "NAME=PATH of a LoRA adapter on the first model (with --upstream: a name the upstreams "
                "serve); repeatable"})
    upstream: list[str] = field(default_factory=list, metadata={
        "help": "base URL of an OpenAI-compatible server (e.g. `vllm serve`), with or without /v1; repeat to "
                "spread load (each call goes to the replica with the fewest sequences in flight)"})
    upstream_api_key: str | None = field(default=None, metadata={"help": "API key the upstreams require"})
    upstream_connections: int | None = field(default=None, metadata={
        "help": "connections kept open to each upstream (default: --max-concurrent-requests)"})
    upstream_health_interval: float = field(default=5.0, metadata={
        "help": "seconds between health checks of each upstream; one that fails them is taken out of routing "
                "until it passes again"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer for --upstream (default: the --model value)"})
    host: str = field(default="0.0.0.0", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' on every /v1 path"})
    task: str = field(default=tasks.DEFAULT, metadata={
        "help": "task whose formats (answers, judge, backward questions) the strategies use for models that declare "
                "none in a ponder.json beside their weights (ponder's own models declare 'arith'); a request's "
                "strategy.task wins; one of " + ", ".join(tasks.TASKS)})
    default_strategy: str = field(default="direct", metadata={
        "help": "strategy for requests that name none (a name or a JSON object)"})
    max_n: int = field(default=64, metadata={"help": "cap on n (request and strategy)"})
    max_request_tokens: int = field(default=262_144, metadata={
        "help": "cap on the tokens one request may generate, all strategy calls counted"})
    max_concurrent_requests: int = field(default=256, metadata={"help": "beyond this, answer 429"})
    max_model_len: int | None = field(default=None, metadata={"help": "context length (default: the model's)"})
    enforce_eager: bool = field(default=True, metadata={
        "help": "skip torch.compile (starts ~2x faster on CPU); --no-enforce-eager to compile"})
    max_logprobs: int = field(default=20, metadata={"help": "largest top_logprobs a request may ask"})
    kv_cache_gib: int = field(default=1, metadata={"help": "KV cache size on the CPU build (GiB)"})
    engine_arg: list[str] = field(default_factory=list, metadata={
        "help": "KEY=VALUE passed to vLLM's AsyncEngineArgs (VALUE as JSON if it parses); repeatable"})
    effort: list[str] = field(default_factory=list, metadata={
        "help": "LEVEL=SPEC: the strategy a request's reasoning_effort LEVEL (minimal, low, medium, high) runs, "
                "SPEC a strategy name or JSON object; repeatable; overrides the defaults in "
                "ponder.server.serving.EFFORTS, and the table in use is logged at start-up. PONDER_EFFORT "
                "separates entries with ';' (JSON has commas)", "sep": ";"})
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata={
        "help": "largest request body accepted; beyond it, 413"})
    drain_grace: float = field(default=6.0, metadata={
        "help": "seconds running requests get to finish after SIGTERM before they are ended with an error; "
                "the engine's teardown then takes 5-10 s more (give a container a stop time-out of grace + 15 s)"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("at least one --model is needed")
        if self.served_model_name and len(self.served_model_name) != len(self.model):
            raise ValueError("give one --served-model-name per --model")
        if self.upstream and len(self.model) != 1:
            raise ValueError("--upstream serves exactly one --model (the upstream's model name)")
        for url in self.upstream:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--upstream takes an http:// or https:// base URL, got {url!r}")
        if self.upstream_connections is not None and self.upstream_connections < 1:
            raise ValueError("--upstream-connections must be at least 1")
        if not (math.isfinite(self.upstream_health_interval) and self.upstream_health_interval > 0):
            raise ValueError(f"--upstream-health-interval must be a finite number of seconds > 0, "
                             f"got {self.upstream_health_interval}")
        for spec in self.lora:
            if "=" not in spec:
                raise ValueError(f"--lora takes NAME=PATH, got {spec!r}")
        tasks.get(self.task)
        if self.api_key == "":
            raise ValueError("--api-key must not be empty")
        if self.max_body_bytes < 1:
            raise ValueError("--max-body-bytes must be at least 1")
        if not (math.isfinite(self.drain_grace) and self.drain_grace >= 0):
            raise ValueError(f"--drain-grace must be a finite number of seconds >= 0, got {self.drain_grace}")
        self.efforts()

    def efforts(self) -> dict[str, str | dict[str, Any]]:
        """The --effort flags as {level: strategy spec}; the server's defaults fill in the rest."""
        out: dict[str, str | dict[str, Any]] = {}
        for entry in self.effort:
            level, eq, spec = entry.partition("=")
            level, spec = level.strip(), spec.strip()
            if not eq or level not in typing.get_args(EffortLevel):
                raise ValueError(f"--effort takes LEVEL=SPEC with LEVEL one of "
                                 f"{', '.join(typing.get_args(EffortLevel))}, got {entry!r}")
            if spec.isidentifier():
                out[level] = spec
                continue
            if not spec.startswith("{"):
                raise ValueError(f"--effort {level}: SPEC must be a strategy name or a JSON object, got {spec!r}")
            try:
                out[level] = json.loads(spec)  # starts with "{": an object or an error
            except json.JSONDecodeError as e:
                raise ValueError(f"--effort {level}: SPEC is not a valid JSON object ({e})") from None
        return out

    def engine_kwargs(self) -> dict[str, Any]:
        out = {}
        for spec in self.engine_arg:
            key, _, value = spec.partition("=")
            try:
                out[key.replace("-", "_")] = json.loads(value)
            except json.JSONDecodeError:
                out[key.replace("-", "_")] = value
        return out

    def public(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("api_key", "upstream_api_key"):
            if d[key]:
                d[key] = "***"
        return d


def parse_args(argv: list[str] | None = None, prog: str = "ponder serve") -> ServeConfig:
    return flags.parse(ServeConfig, argv, prog, "Serve models with per-request reasoning strategies.",
                       env_prefix="PONDER_")
