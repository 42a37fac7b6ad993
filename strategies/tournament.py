"""tournament: knockout over n sampled candidates, judged pairwise (Chen, Pan et al. 2024).

Candidates are paired in order (0,1), (2,3), ...; with an odd count the last
gets a bye and goes first into the next round. Each pair gets K judge calls,
half with (A, B) and half with (B, A) to cancel position bias. "Solution 1"
scores [1, 0], "Solution 2" [0, 1], a tie or an unparseable reply [0.5, 0.5];
the higher total wins and an exact tie is broken by a seeded coin. Every call
of a round is issued at once. The league variant (`league: true`) plays each
candidate against the next m (mod n) in one round and returns the best total.

K is rounded to an even number of calls, at least one per order: the official
code's K=1 makes zero comparisons and picks at random; here K=1 means two calls.
Pairs whose answers agree are not judged (either one carries the same answer)
unless `judge_same_answer` is set.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from ponder.strategies.answers import ANSWER_PATTERN, extract_answer
from ponder.strategies.base import Candidate, Context, Query, Result, seeded

JUDGE_PROMPT = ("Compare two solutions to the question: {question}\n"
                "Solution 1:\n{solution_1}\nSolution 2:\n{solution_2}\nWhich solution is correct?")
JUDGE_PATTERN = r"Winner:\s*(Solution 1|Solution 2|Tie)"


@dataclass(frozen=True)
class Params:
    n: int = field(default=8, metadata={"help": "candidates"})
    k: int = field(default=2, metadata={"help": "judge calls per pair, split across both orders"})
    league: bool = field(default=False, metadata={"help": "league instead of knockout"})
    m: int = field(default=2, metadata={"help": "league: opponents per candidate"})
    judge_model: str | None = field(default=None, metadata={"help": "model that judges (default: the request's)"})
    judge_prompt: str = field(default=JUDGE_PROMPT, metadata={
        "help": "judge's user message; {question}, {solution_1}, {solution_2} are filled in"})
    judge_pattern: str = field(default=JUDGE_PATTERN, metadata={
        "help": "regex whose first group is 'Solution 1', 'Solution 2' or anything else (a tie)"})
    judge_temperature: float = field(default=0.1, metadata={"help": "judge sampling temperature"})
    judge_max_tokens: int = field(default=256, metadata={"help": "judge reply budget"})
    judge_same_answer: bool = field(default=False, metadata={"help": "judge pairs that give the same answer"})
    answer_pattern: str = field(default=ANSWER_PATTERN, metadata={"help": "regex whose first group is the answer"})
    sampler: dict[str, Any] | None = field(default=None, metadata={"help": "strategy that makes each candidate"})

    def __post_init__(self) -> None:
        if self.n < 1 or self.k < 1 or self.m < 1 or self.judge_max_tokens < 1:
            raise ValueError("n, k, m and judge_max_tokens must be >= 1")
        for key in ("{question}", "{solution_1}", "{solution_2}"):
            if key not in self.judge_prompt:
                raise ValueError(f"judge_prompt must contain {key}")
        re.compile(self.judge_pattern)

    @property
    def per_order(self) -> int:
        return max(1, self.k // 2)

    def pairs_played(self) -> int:
        return len(league_pairs(self.n, self.m)) if self.league else self.n - 1

    def budget(self, per_sample: int) -> int:
        return self.n * per_sample + self.pairs_played() * 2 * self.per_order * self.judge_max_tokens


def knockout_pairs(players: list[int]) -> tuple[list[tuple[int, int]], int | None]:
    """Pairs in order; the last player gets a bye when the count is odd."""
    bye = players[-1] if len(players) % 2 else None
    return [(players[i], players[i + 1]) for i in range(0, len(players) - 1, 2)], bye


def league_pairs(n: int, m: int) -> list[tuple[int, int]]:
    """Each i meets i+1 .. i+m (mod n); each unordered pair once."""
    seen, out = set(), []
    for i in range(n):
        for d in range(1, min(m, n - 1) + 1):
            j = (i + d) % n
            if frozenset((i, j)) not in seen:
                seen.add(frozenset((i, j)))
                out.append((i, j))
    return out


def verdict_scores(text: str, pattern: str) -> tuple[float, float]:
    """Score of (Solution 1, Solution 2) from one judge reply."""
    found = re.findall(pattern, text)
    last = found[-1] if found else None
    if isinstance(last, tuple):
        last = last[0]
    return {"Solution 1": (1.0, 0.0), "Solution 2": (0.0, 1.0)}.get((last or "").strip(), (0.5, 0.5))


def decide(a: int, b: int, score: tuple[float, float], rng: random.Random) -> int:
    if score[0] != score[1]:
        return a if score[0] > score[1] else b
    return rng.choice((a, b))


def failure_bound(p_gen: float, p_comp: float, n: int, k: int) -> float:
    """P(fail) <= (1 - p_gen)^N + ceil(log2 N) exp(-2K (p_comp - 0.5)^2), for p_comp > 0.5."""
    if p_comp <= 0.5:
        return 1.0
    rounds = math.ceil(math.log2(n)) if n > 1 else 0
    return min(1.0, (1 - p_gen) ** n + rounds * math.exp(-2 * k * (p_comp - 0.5) ** 2))


async def run(ctx: Context, query: Query, params: Params) -> Result:
    ctx.progress(stage="sample", n=params.n)
    cands, sub = await ctx.sample(query, params.n, params.sampler)
    answers = [extract_answer(c.text, params.answer_pattern) for c in cands]
    rng = random.Random(query.spec.seed)
    judge = _Judge(ctx, query, params, cands)
    rounds: list[dict[str, Any]] = []
    if params.league:
        totals = [0.0] * len(cands)
        ctx.progress(stage="league", pairs=len(league_pairs(len(cands), params.m)))
        games = await asyncio.gather(*(judge.play(a, b, answers) for a, b in league_pairs(len(cands), params.m)))
        for g in games:
            totals[g["a"]] += g["score"][0]
            totals[g["b"]] += g["score"][1]
        best = max(totals)
        winner = rng.choice([i for i, t in enumerate(totals) if t == best])
        rounds.append({"games": games, "totals": totals})
    else:
        players = list(range(len(cands)))
        while len(players) > 1:
            pairs, bye = knockout_pairs(players)
            ctx.progress(stage="round", round=len(rounds) + 1, pairs=len(pairs))
            games = await asyncio.gather(*(judge.play(a, b, answers) for a, b in pairs))
            for g in games:
                g["winner"] = decide(g["a"], g["b"], g["score"], rng)
            players = ([bye] if bye is not None else []) + [g["winner"] for g in games]
            rounds.append({"games": games, "bye": bye})
        winner = players[0]
    judged = [g for r in rounds for g in r["games"] if g["calls"]]
    agreement = _mean([max(g["score"]) / len(g["calls"]) for g in judged])
    p_gen = _mean([a is not None and a == answers[winner] for a in answers])
    info = {"winner": winner, "answer": answers[winner], "judge_calls": judge.calls,
            "judge_agreement": agreement, "p_gen_est": p_gen, "p_comp_est": agreement,
            "failure_bound_est": failure_bound(p_gen, agreement, len(cands), 2 * params.per_order)
            if agreement is not None else None}
    trace = {"candidates": [{"text": c.text, "answer": a} for c, a in zip(cands, answers)],
             "rounds": rounds, "winner": winner}
    if sub:
        trace["samplers"] = sub
    return Result(choice=cands[winner], trace=trace, info=info)


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


class _Judge:
    """Plays one pair: K calls split across orders, all at once."""

    def __init__(self, ctx: Context, query: Query, params: Params, cands: list[Candidate]):
        self.ctx, self.query, self.params, self.cands = ctx, query, params, cands
        self.model = params.judge_model or query.model
        engine, _ = ctx.engine(self.model)
        self.max_len = engine.max_model_len
        self.spec = query.spec.replace(temperature=params.judge_temperature, max_tokens=params.judge_max_tokens,
                                       logprobs=None, stop=(), logit_bias=(), masked=())
        self.calls = 0

    async def play(self, a: int, b: int, answers: list[str | None]) -> dict[str, Any]:
        game: dict[str, Any] = {"a": a, "b": b, "calls": [], "score": (0.5, 0.5)}
        if answers[a] is not None and answers[a] == answers[b] and not self.params.judge_same_answer:
            game["skipped"] = "same answer"
            return game
        orders = [(a, b)] * self.params.per_order + [(b, a)] * self.params.per_order
        replies = await asyncio.gather(*(self._call(x, y) for x, y in orders))
        score = [0.0, 0.0]
        for (x, y), reply in zip(orders, replies):
            if reply is None:
                continue
            s1, s2 = verdict_scores(reply, self.params.judge_pattern)
            sa, sb = (s1, s2) if x == a else (s2, s1)
            score[0] += sa
            score[1] += sb
            game["calls"].append({"order": [x, y], "reply": reply})
        if not game["calls"]:
            game["skipped"] = "judge prompt longer than the context"
        game["score"] = (score[0], score[1])
        return game

    async def _call(self, x: int, y: int) -> str | None:
        text = self.params.judge_prompt.format(question=self.query.question, solution_1=self.cands[x].text,
                                               solution_2=self.cands[y].text)
        ids = self.ctx.render(self.model, [{"role": "user", "content": text}])
        if len(ids) + self.params.judge_max_tokens > self.max_len:
            return None
        self.calls += 1
        spec = seeded(self.spec, 1_000 + self.calls)
        return (await self.ctx.generate(self.model, ids, spec)).text
