"""The strategy registry: a plain dict from name to (run, Params).

Each strategy is one module with one async `run(ctx, query, params)` and one
frozen `Params` dataclass. Requests name a strategy as "name" or as
{"name": ..., **params}; a "sampler" parameter nests another strategy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from ponder.strategies import critical_tokens, direct, reverse_verify, self_consistency, tournament
from ponder.strategies.base import Context, Query, Result


class Strategy(NamedTuple):
    name: str
    run: Callable[[Context, Query, Any], Awaitable[Result]]
    Params: type
    doc: str


def _entry(module: Any) -> Strategy:
    name = module.__name__.rsplit(".", 1)[-1]
    return Strategy(name, module.run, module.Params, (module.__doc__ or "").strip())


STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in map(_entry, [direct, self_consistency, tournament, reverse_verify, critical_tokens])
}


def resolve(spec: str | dict[str, Any], construct: Callable[[type, dict], Any] | None = None) -> tuple[Strategy, Any]:
    """Strategy and params from "name" or {"name": ..., **params}; ValueError if bad.

    `construct(Params, kwargs)` builds the params (the HTTP edge passes a
    type-checking one); by default Params(**kwargs).
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError('strategy must be a name or an object with a "name"')
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] not in STRATEGIES:
        raise ValueError(f"unknown strategy {spec['name']!r}; available: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[spec["name"]]
    known = {f.name for f in dataclasses.fields(strategy.Params)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) for strategy {strategy.name!r}: {', '.join(unknown)}; "
                         f"expected some of: {', '.join(sorted(known)) or 'none'}")
    try:
        params = construct(strategy.Params, kwargs) if construct else strategy.Params(**kwargs)
    except TypeError as e:
        raise ValueError(f"strategy {strategy.name!r}: {e}") from e
    return strategy, params


def budget(strategy: Strategy, params: Any, max_tokens: int) -> int:
    """Upper bound on the completion tokens one run may generate."""
    sampler = getattr(params, "sampler", None)
    per_sample = budget(*resolve(sampler), max_tokens) if sampler else max_tokens
    cost = getattr(params, "budget", None)
    return cost(per_sample) if cost else per_sample


def as_dict(strategy: Strategy, params: Any) -> dict[str, Any]:
    return {"name": strategy.name, **dataclasses.asdict(params)}
