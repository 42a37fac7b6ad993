"""direct: plain decoding, one sample with the request's own settings."""

from __future__ import annotations

from dataclasses import dataclass

from ponder.strategies.base import Context, Query, Result


@dataclass(frozen=True)
class Params:
    """No parameters: the request's sampling fields (temperature, seed, ...) apply."""


async def run(ctx: Context, query: Query, params: Params) -> Result:
    cand = await ctx.generate(query.model, query.prompt_ids, query.spec)
    return Result(choice=cand, trace={"text": cand.text})
