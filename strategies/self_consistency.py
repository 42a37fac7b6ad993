"""self_consistency: sample n answers, return one that carries the majority answer
(Wang et al. 2022, arXiv:2203.11171). Candidates use the request's sampling settings;
answers are read by the request's task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ponder.strategies.answers import ANSWER_PATTERN_HELP, extract_answers, needs_answers, vote
from ponder.strategies.base import Context, Query, Result
from ponder.strategies.params import Sampler, StrategyParams, param


@dataclass(frozen=True)
class Params(StrategyParams):
    n: int = param(8, "candidates", ge=1)
    answer_pattern: str | None = param(None, ANSWER_PATTERN_HELP, pattern=True)
    sampler: Sampler | None = param(None, "strategy that makes each candidate")

    def budget(self, per_sample: int) -> int:
        return self.n * per_sample

    def check_task(self, task: Any) -> None:
        needs_answers("self_consistency", task)


async def run(ctx: Context, query: Query, params: Params) -> Result:
    ctx.progress(stage="sample", n=params.n)
    cands, sub = await ctx.sample(query, params.n, params.sampler)
    answers = await extract_answers(ctx, query.task, [c.text for c in cands], params.answer_pattern)
    winner, votes = vote(answers)
    chosen = answers.index(winner) if winner is not None else 0
    trace = {"candidates": [{"text": c.text, "answer": a} for c, a in zip(cands, answers)],
             "votes": votes, "chosen": chosen}
    if sub:
        trace["samplers"] = sub
    return Result(choice=cands[chosen], trace=trace,
                  info={"answer": winner, "votes": votes, "unextracted": answers.count(None)})
