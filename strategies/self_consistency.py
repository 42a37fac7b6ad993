"""self_consistency: sample n answers, return one that carries the majority answer
(Wang et al. 2022). Candidates use the request's sampling settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ponder.strategies.answers import ANSWER_PATTERN, extract_answer, vote
from ponder.strategies.base import Context, Query, Result


@dataclass(frozen=True)
class Params:
    n: int = field(default=8, metadata={"help": "candidates"})
    answer_pattern: str = field(default=ANSWER_PATTERN, metadata={"help": "regex whose first group is the answer"})
    sampler: dict[str, Any] | None = field(default=None, metadata={"help": "strategy that makes each candidate"})

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")

    def budget(self, per_sample: int) -> int:
        return self.n * per_sample


async def run(ctx: Context, query: Query, params: Params) -> Result:
    ctx.progress(stage="sample", n=params.n)
    cands, sub = await ctx.sample(query, params.n, params.sampler)
    answers = [extract_answer(c.text, params.answer_pattern) for c in cands]
    winner, votes = vote(answers)
    chosen = answers.index(winner) if winner is not None else 0
    trace = {"candidates": [{"text": c.text, "answer": a} for c, a in zip(cands, answers)],
             "votes": votes, "chosen": chosen}
    if sub:
        trace["samplers"] = sub
    return Result(choice=cands[chosen], trace=trace, info={"answer": winner, "votes": votes})
