"""The strategy registry: a plain dict from name to (run, Params).

Each strategy is one module with one async `run(ctx, query, params)` and one
frozen `Params` dataclass (see `params.py`). Requests name a strategy as "name"
or as {"name": ..., **params}; a "sampler" parameter nests another strategy.
`resolve` turns such a spec into params once per request, samplers included,
and `check_limits` prices the whole tree before any engine call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

from ponder.strategies import critical_tokens, direct, reverse_verify, self_consistency, tournament
from ponder.strategies.base import Context, Query, Result
from ponder.strategies.params import ParamError, Sampler, StrategyParams, schema

MAX_DEPTH = 4  # sampler nesting: tournament over critical_tokens over ... at most this deep


class Strategy(NamedTuple):
    name: str
    run: Callable[[Context, Query, Any], Awaitable[Result]]
    Params: type[StrategyParams]
    doc: str

    def schema(self, tasks: list[str] | None = None) -> dict[str, Any]:
        """The JSON schema of the parameters; `tasks`: the names `task` may take."""
        return schema(self.Params, {"task": tasks} if tasks else None)


def _entry(module: Any) -> Strategy:
    name = module.__name__.rsplit(".", 1)[-1]
    return Strategy(name, module.run, module.Params, (module.__doc__ or "").strip())


STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in map(_entry, [direct, self_consistency, tournament, reverse_verify, critical_tokens])
}


def request_schema(tasks: list[str] | None = None) -> dict[str, Any]:
    """JSON schema of a request's `strategy` field: a name, or one object per strategy, or null."""
    objects = [{"type": "object", "title": s.name, "required": ["name"], "additionalProperties": False,
                "properties": {"name": {"type": "string", "enum": [s.name]}, **s.schema(tasks)["properties"]}}
               for s in STRATEGIES.values()]
    return {"oneOf": [{"type": "string", "enum": list(STRATEGIES)}, *objects, {"type": "null"}],
            "description": 'a strategy name or {"name": ..., **params}; see GET /v1/strategies'}


def resolve(spec: Any, where: str = "strategy", depth: int = 0) -> tuple[Strategy, StrategyParams]:
    """Strategy and validated params from "name" or {"name": ..., **params}, samplers resolved.

    Raises ParamError naming the bad field (e.g. "strategy.sampler.n").
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ParamError(where, 'must be a strategy name or an object with a "name"')
    if spec["name"] not in STRATEGIES:
        raise ParamError(f"{where}.name", f"unknown strategy {spec['name']!r}; available: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[spec["name"]]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    known = strategy.Params.__dataclass_fields__
    for key in kwargs:
        if key not in known:
            raise ParamError(f"{where}.{key}", f"unknown parameter of strategy {strategy.name!r}; expected some "
                             f"of: {', '.join(known) or 'none'}")
    if kwargs.get("sampler") is not None:
        if depth + 1 >= MAX_DEPTH:
            raise ParamError(f"{where}.sampler", f"samplers nest at most {MAX_DEPTH} strategies deep")
        inner, inner_params = resolve(kwargs["sampler"], f"{where}.sampler", depth + 1)
        kwargs["sampler"] = Sampler(inner.name, inner_params, inner.run)
    try:
        return strategy, strategy.Params(**kwargs)
    except ParamError as e:
        raise ParamError(f"{where}.{e.param}", e.detail) from None


def tree(params: StrategyParams) -> Iterator[StrategyParams]:
    """The params and every nested sampler's, outermost first."""
    while params is not None:
        yield params
        params = params.nested.params if params.nested else None


def samples(params: StrategyParams) -> int:
    """Leaf samples one run draws: the product of n down the sampler chain."""
    total = 1
    for p in tree(params):
        total *= p.samples()
    return total


def budget(params: StrategyParams, max_tokens: int) -> int:
    """Most completion tokens one run may generate (closed form, innermost first)."""
    cost = max_tokens
    for p in reversed(list(tree(params))):
        cost = p.budget(cost)
    return cost


def models(params: StrategyParams, model: str) -> list[str]:
    """Every model a run on `model` calls, samplers included."""
    return [model, *(m for p in tree(params) for m in p.models(model))]
