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
from dataclasses import dataclass
from typing import Any

from ponder.strategies.answers import ANSWER_PATTERN, extract_answers
from ponder.strategies.base import Candidate, Context, Query, Result, seeded
from ponder.strategies.params import Sampler, StrategyParams, findall, param
from ponder.tasks import arith

JUDGE_PATTERN = arith.WINNER_RE.pattern


@dataclass(frozen=True)
class Params(StrategyParams):
    n: int = param(8, "candidates", ge=1)
    k: int = param(2, "judge calls per pair, split evenly across both orders (at least one per order: "
                      "k=1 plays as k=2)", ge=1, le=64)
    judge: str = param("text", "'text': count the verdicts the judge writes; 'logprob': average the log-prob "
                       "margin of 'Solution 1' over 'Solution 2' across both orders (a position bias cancels)",
                       choices=("text", "logprob"))
    league: bool = param(False, "league instead of knockout")
    m: int = param(2, "league: opponents per candidate", ge=1)
    judge_model: str | None = param(None, "model that judges (default: the request's)")
    judge_prompt: str | None = param(None, "judge's user message with {question}, {solution_1}, {solution_2} "
                                     "(default: the built-in task's, which labels each solution line)",
                                     template=("question", "solution_1", "solution_2"))
    judge_pattern: str = param(JUDGE_PATTERN, "regex whose first group is 'Solution 1', 'Solution 2' or "
                               "anything else (a tie)", pattern=True)
    judge_temperature: float = param(0.1, "judge sampling temperature", ge=0.0, le=2.0)
    judge_max_tokens: int = param(256, "judge reply budget", ge=1, le=8192)
    judge_same_answer: bool = param(False, "judge pairs that give the same answer")
    answer_pattern: str = param(ANSWER_PATTERN, "regex whose first group is the answer", pattern=True)
    sampler: Sampler | None = param(None, "strategy that makes each candidate")

    @property
    def per_order(self) -> int:
        return max(1, self.k // 2)

    def pairs_played(self) -> int:
        """Games in one run, in closed form (a league of 10^6 must not be enumerated to be priced)."""
        if not self.league:
            return self.n - 1
        d = min(self.m, self.n - 1)
        return self.n * (self.n - 1) // 2 if 2 * d >= self.n else self.n * d

    def budget(self, per_sample: int) -> int:
        return self.n * per_sample + self.pairs_played() * 2 * self.per_order * self.judge_max_tokens

    def models(self, model: str) -> list[str]:
        return [self.judge_model] if self.judge_model else []


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
    found = findall(pattern, text, "judge_pattern")
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
    answers = await extract_answers([c.text for c in cands], params.answer_pattern)
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
    agreement = _mean([max(g.get("agreement", g["score"])) / len(g["calls"]) for g in judged])
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


def judge_prompt(params: Params, question: str, solution_1: str, solution_2: str) -> str:
    """The judge's user message: the task's own (as trained) unless the request gives a template."""
    if params.judge_prompt is None:
        return arith.judge_prompt(question, solution_1, solution_2)
    return params.judge_prompt.format(question=question, solution_1=solution_1, solution_2=solution_2)


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
        per = self.params.per_order
        orders = [(a, b)] * per + [(b, a)] * per
        first, second = await asyncio.gather(self._call(a, b, per), self._call(b, a, per))
        replies = first + second
        score, margins = [0.0, 0.0], []
        for (x, y), reply in zip(orders, replies):
            if reply is None:
                continue
            text, margin = reply
            call: dict[str, Any] = {"order": [x, y], "reply": text}
            if self.params.judge == "logprob":
                call["margin"] = margin  # log p(Solution 1) - log p(Solution 2), for solution x
                margins.append(margin if x == a else -margin)
                s1, s2 = (1.0, 0.0) if margin > 0 else (0.0, 1.0) if margin < 0 else (0.5, 0.5)
            else:
                s1, s2 = await asyncio.to_thread(verdict_scores, text, self.params.judge_pattern)
            score[0] += s1 if x == a else s2
            score[1] += s2 if x == a else s1
            game["calls"].append(call)
        if not game["calls"]:
            game["skipped"] = "judge prompt longer than the context"
        game["score"] = (score[0], score[1])
        if margins:
            # Averaged over both orders, a judge's preference for a position cancels out.
            game["margin"] = sum(margins) / len(margins)
            game["score"] = (1.0, 0.0) if game["margin"] > 0 else (0.0, 1.0) if game["margin"] < 0 else (0.5, 0.5)
            game["agreement"] = score
        return game

    async def _call(self, x: int, y: int, n: int) -> list[tuple[str, float] | None]:
        """n judge replies for (x, y) in this order: one engine call, distinct seeds per call."""
        text = judge_prompt(self.params, self.query.question, self.cands[x].text, self.cands[y].text)
        ids = self.ctx.render(self.model, [{"role": "user", "content": text}])
        if len(ids) + self.params.judge_max_tokens > self.max_len:
            return [None] * n
        seed = 1_000 + self.calls
        self.calls += n
        replies, _ = await self.ctx.sample(Query(self.model, ids, text, seeded(self.spec, seed)), n)
        if self.params.judge != "logprob":
            return [(r.text, 0.0) for r in replies]
        margins = await asyncio.gather(*(self._margin(ids, r.text) for r in replies))
        return [(r.text, m) for r, m in zip(replies, margins)]

    async def _margin(self, ids: tuple[int, ...], text: str) -> float:
        """log p("Solution 1") - log p("Solution 2") where the judge writes its verdict.

        The reply is cut before its "Winner:" (or taken whole) and "Winner: Solution 1"
        is scored after it: one prefill, mostly from the prefix cache.
        """
        tok = self.ctx.tokenizer(self.model)
        head = text[: text.rfind("Winner:")] if "Winner:" in text else text.rstrip() + "\n"
        one, two = (tok.encode(f"Winner: Solution {d}", add_special_tokens=False) for d in (1, 2))
        if len(one) != len(two) or one[:-1] != two[:-1]:
            raise ValueError("judge: 'Solution 1' and 'Solution 2' must differ in their last token only")
        context = list(ids) + tok.encode(head, add_special_tokens=False)
        lps = await self.ctx.score(self.model, context, one, top_logprobs=20)
        last = lps[-1]
        top = {t: v for t, _, v in last.top} | {last.token_id: last.logprob}
        floor = min(top.values())  # a verdict outside the top-k gets the k-th log-prob (an upper bound)
        return top.get(one[-1], floor) - top.get(two[-1], floor)
