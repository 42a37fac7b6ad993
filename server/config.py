"""`ponder serve` configuration: one dataclass, filled from flags or PONDER_* env vars.

Every flag --some-flag can also be set as PONDER_SOME_FLAG (repeatable flags
take a comma-separated list); a flag on the command line wins over the env.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# The built-in models are package data of ponder.models: the checkout's models/
# in an editable install, site-packages/ponder/models from a wheel.
MODELS = Path(str(resources.files("ponder.models")))
DEFAULT_MODEL = str(MODELS / "ponder-tiny")


def default_models() -> list[str]:
    """ponder-tiny, with the contrastive models critical_tokens scores with when they are there."""
    contrast = [f"{DEFAULT_MODEL}-{k}" for k in ("pos", "neg")]
    return [DEFAULT_MODEL, *(m for m in contrast if Path(m, "config.json").exists())]


@dataclass
class ServeConfig:
    model: list[str] = field(default_factory=default_models, metadata={
        "help": "model folder (or upstream model name with --upstream); repeat to serve several "
                "(default: models/ponder-tiny and its -pos/-neg contrastive models)"})
    served_model_name: list[str] = field(default_factory=list, metadata={
        "help": "ids to serve the models under (default: folder names), one per --model"})
    lora: list[str] = field(default_factory=list, metadata={
        "help": "NAME=PATH of a LoRA adapter on the first model (with --upstream: a name the upstreams "
                "serve); repeatable"})
    upstream: list[str] = field(default_factory=list, metadata={
        "help": "base URL of an OpenAI-compatible server (e.g. `vllm serve`); repeat to spread load"})
    upstream_api_key: str | None = field(default=None, metadata={"help": "API key the upstreams require"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer for --upstream (default: the --model value)"})
    host: str = field(default="0.0.0.0", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    api_key: str | None = field(default=None, metadata={
        "help": "require 'Authorization: Bearer KEY' on every /v1 path"})
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
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("at least one --model is needed")
        if self.served_model_name and len(self.served_model_name) != len(self.model):
            raise ValueError("give one --served-model-name per --model")
        if self.upstream and len(self.model) != 1:
            raise ValueError("--upstream serves exactly one --model (the upstream's model name)")
        for spec in self.lora:
            if "=" not in spec:
                raise ValueError(f"--lora takes NAME=PATH, got {spec!r}")

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
    parser = argparse.ArgumentParser(prog=prog, description="Serve models with per-request reasoning strategies.")
    lists: dict[str, list[str]] = {}
    for f in dataclasses.fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        env = os.environ.get("PONDER_" + f.name.upper())
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = str(f.type)
        help = f.metadata["help"] + f" [env PONDER_{f.name.upper()}]"
        if kind.startswith("list"):
            parser.add_argument(flag, action="append", default=None, help=help)
            lists[f.name] = env.split(",") if env else default
        elif kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help,
                                default=env.lower() in ("1", "true", "yes") if env else default)
        else:
            conv = int if kind in ("int", "int | None") else str
            parser.add_argument(flag, type=conv, help=help, default=conv(env) if env else default)
    args = vars(parser.parse_args(argv))
    for name, default in lists.items():
        if args[name] is None:
            args[name] = default
    try:
        return ServeConfig(**args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable
