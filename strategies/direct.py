"""direct: plain decoding, one sample with the request's own settings, streamed as it is made."""

from __future__ import annotations

from dataclasses import dataclass

from ponder.strategies.base import Context, Query, Result
from ponder.strategies.params import StrategyParams


@dataclass(frozen=True)
class Params(StrategyParams):
    """No parameters: the request's sampling fields (temperature, seed, ...) apply."""

    def budget(self, per_sample: int) -> int:
        return per_sample


async def run(ctx: Context, query: Query, params: Params) -> Result:
    cand = await ctx.generate(query.model, query.prompt_ids, query.spec, live=query.live)
    return Result(choice=cand, trace={"text": cand.text})
