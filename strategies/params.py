"""Strategy parameters: each field declared once (type, default, help, limits).

A strategy's `Params` is a frozen dataclass that subclasses `StrategyParams`
and declares every field with `param(...)`. From that one declaration come the
checks (`__post_init__`: ranges, finite numbers, choices, templates that hold
exactly their placeholders, patterns that compile under a size limit), the JSON
schema served at /v1/strategies and in /openapi.json, and the 400 that names a
bad field. Every `Params` must say what a run may cost (`budget`), how many
candidates it samples (`samples`) and which models it calls (`models`).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import regex

MAX_PATTERN = 256  # characters of a user-given regex
MAX_TEMPLATE = 4096  # characters of a user-given prompt template
MATCH_TIMEOUT_S = 0.05  # per pattern match on model output


# JSON types of the declared Python types (field annotations are strings here).
TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "integer"), "float": ((int, float), "number"), "bool": ((bool,), "boolean"),
    "str": ((str,), "string"), "None": ((type(None),), "null"),
}


class ParamError(ValueError):
    """A bad strategy parameter; `param` names it (e.g. "judge_pattern", "sampler.n")."""

    def __init__(self, param: str, detail: str):
        super().__init__(f"{param}: {detail}")
        self.param, self.detail = param, detail


def param(default: Any, help: str, *, ge: float | None = None, le: float | None = None,
          choices: tuple[str, ...] | None = None, template: tuple[str, ...] | None = None,
          pattern: bool = False) -> Any:
    """A declared field: default, help text and limits, kept in the field's metadata."""
    meta = {"help": help, "ge": ge, "le": le, "choices": choices, "template": template, "pattern": pattern}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None and v is not False})


@dataclass(frozen=True)
class Sampler:
    """A resolved nested strategy: what makes each candidate of the strategy that holds it."""

    name: str
    params: StrategyParams
    run: Callable[..., Awaitable[Any]] = field(compare=False, repr=False)  # the strategy's run(ctx, query, params)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.as_dict()}


@dataclass(frozen=True)
class StrategyParams(abc.ABC):
    """Base of every strategy's Params; validates the declared limits on construction."""

    # What a 400 adds when a model the run needs (`models`) is not served.
    missing_models_hint: ClassVar[str] = ""

    task: str | None = param(None, "the task whose formats (answers, judge, backward questions) the strategy uses; "
                             "default: the one the model declares, else the server's --task, else 'math' "
                             "(set on the outermost strategy; samplers use the same)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check(f, getattr(self, f.name))

    @abc.abstractmethod
    def budget(self, per_sample: int) -> int:
        """Most completion tokens one run may generate, when one candidate may generate `per_sample`."""

    def samples(self) -> int:
        """Candidates one run draws from its sampler (or the engine)."""
        return getattr(self, "n", 1)

    def models(self, model: str) -> list[str]:
        """Models a run on `model` calls besides `model` itself (judges, contrastive models)."""
        return []

    def check_task(self, task: Any) -> None:  # noqa: B027 (most strategies need nothing of a task)
        """Raise ParamError("task", ...) when this run needs what `task` does not have (e.g. answers)."""

    @property
    def nested(self) -> Sampler | None:
        return getattr(self, "sampler", None)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(out.get("sampler"), Sampler):
            out["sampler"] = out["sampler"].as_dict()
        return out


def check(f: dataclasses.Field, value: Any) -> None:
    """One field's declared type and limits; raises ParamError naming it."""
    meta = f.metadata
    kinds = str(f.type).split(" | ")
    if "Sampler" in kinds and isinstance(value, Sampler):
        return
    allowed = [TYPES[k] for k in kinds if k in TYPES]
    if not any(isinstance(value, py) and not (isinstance(value, bool) and bool not in py) for py, _ in allowed):
        raise ParamError(f.name, f"must be {' or '.join(js for _, js in allowed)}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f.name, "must be a finite number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "ge" in meta and value < meta["ge"]:
            raise ParamError(f.name, f"must be >= {meta['ge']}")
        if "le" in meta and value > meta["le"]:
            raise ParamError(f.name, f"must be <= {meta['le']}")
    if "choices" in meta and value is not None and value not in meta["choices"]:
        raise ParamError(f.name, f"must be one of {', '.join(map(repr, meta['choices']))}")
    if "template" in meta and value is not None:
        check_template(f.name, value, meta["template"])
    if meta.get("pattern") and value is not None:
        compile_pattern(f.name, value)


def schema(params: type[StrategyParams], enums: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """JSON schema of a Params class, from its declarations; `enums` adds the choices of fields whose
    values the layer above knows (the task names)."""
    props: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        meta, kinds = f.metadata, str(f.type).split(" | ")
        prop: dict[str, Any] = {"description": meta.get("help", "")}
        if "Sampler" in kinds:
            prop["anyOf"] = [{"type": "string"}, {"type": "object", "required": ["name"]}, {"type": "null"}]
        else:
            prop["type"] = [TYPES[k][1] for k in kinds] if len(kinds) > 1 else TYPES[kinds[0]][1]
            prop["default"] = f.default
        if "ge" in meta:
            prop["minimum"] = meta["ge"]
        if "le" in meta:
            prop["maximum"] = meta["le"]
        if "choices" in meta:
            prop["enum"] = list(meta["choices"])
        if f.name in (enums or {}):
            prop["enum"] = [*enums[f.name], None]
        if "template" in meta or meta.get("pattern"):
            prop["maxLength"] = MAX_TEMPLATE if "template" in meta else MAX_PATTERN
        props[f.name] = prop
    return {"type": "object", "properties": props, "additionalProperties": False}


def check_template(name: str, text: str, allowed: tuple[str, ...]) -> None:
    """A str.format template that uses each allowed {placeholder}, nothing else, and no format specs."""
    if len(text) > MAX_TEMPLATE:
        raise ParamError(name, f"is longer than {MAX_TEMPLATE} characters")
    try:
        fields = [(key, spec, conv) for _, key, spec, conv in string.Formatter().parse(text) if key is not None]
    except ValueError as e:
        raise ParamError(name, f"is not a valid template: {e}") from None
    for key, spec, conv in fields:
        if key not in allowed:
            raise ParamError(name, f"may only use the placeholders {', '.join('{' + a + '}' for a in allowed)}"
                             f" (found {{{key}}}; write {{{{ and }}}} for literal braces)")
        if spec or conv:
            raise ParamError(name, f"placeholder {{{key}}} may not carry a format spec or conversion")
    missing = [a for a in allowed if a not in {k for k, _, _ in fields}]
    if missing:
        raise ParamError(name, f"must contain {', '.join('{' + a + '}' for a in missing)}")


def compile_pattern(name: str, pattern: str) -> regex.Pattern:
    if len(pattern) > MAX_PATTERN:
        raise ParamError(name, f"is longer than {MAX_PATTERN} characters")
    try:
        return regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as e:
        raise ParamError(name, f"is not a valid regular expression: {e}") from None


def findall(pattern: str, text: str, name: str = "answer_pattern") -> list[Any]:
    """regex.findall under a time limit: a pathological pattern is a 400, not a frozen server.

    `regex` releases the GIL while matching (concurrent=True), so the strategies
    run this in a worker thread, off the event loop.
    """
    try:
        return regex.findall(pattern, text, timeout=MATCH_TIMEOUT_S, concurrent=True)
    except TimeoutError:
        raise ParamError(name, f"took over {MATCH_TIMEOUT_S * 1000:.0f} ms on the model's output") from None
