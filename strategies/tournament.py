"""tournament: knockout over n sampled candidates, judged pairwise (Chen, Pan et al. 2024).

Candidates are paired in order (0,1), (2,3), ...; with an odd count the last
gets a bye and goes first into the next round. Each pair gets K judge calls,
half with (A, B) and half with (B, A) to cancel position bias. "Solution 1"
scores [1, 0], "Solution 2" [0, 1], a tie or an unparseable reply [0.5, 0.5];
the higher total wins; an exact tie goes to the candidate whose answer more
candidates share (the samples' own vote, as in critical_tokens), else to a
seeded coin. Every call
of a round is issued at once. The league variant (`league: true`) plays each
candidate against the next m (mod n) in one round and returns the best total.

K is rounded to an even number of calls, at least one per order: the official
code's K=1 makes zero comparisons and picks at random; here K=1 means two calls.
Pairs whose answers agree are not judged (either one carries the same answer)
unless `judge_same_answer` is set.

The judge's prompt and verdict format are the request's task's. A verdict is
always read: the judge reasons freely and writes its verdict; where it wrote
none in the task's format (a model that does not follow it), the verdict is read
under constraint instead, from the log-probabilities of the task's two verdicts
after the judge's own reasoning (`judge: "logprob"` reads every verdict so). The
verdicts of a pair read that way count together, by their margin averaged over
both orders, so a judge's preference for a position cancels out instead of
making each such game a tie for the tiebreak.
How each verdict was read is counted and reported ("written", "constrained";
"unread" only when the judge's prompt does not fit the context), so a fallback
never passes for a decision.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ponder.engine.logprobs import margin
from ponder.strategies.answers import ANSWER_PATTERN_HELP, extract_answers
from ponder.strategies.base import Candidate, Context, Query, Result, Task, seeded
from ponder.strategies.params import Sampler, StrategyParams, findall, param

SCORES = {1: (1.0, 0.0), 2: (0.0, 1.0), 0: (0.5, 0.5)}  # a written verdict -> (Solution 1, Solution 2)


@dataclass(frozen=True)
class Params(StrategyParams):
    n: int = param(8, "candidates", ge=1)
    k: int = param(2, "judge calls per pair, split evenly across both orders (at least one per order: "
                      "k=1 plays as k=2)", ge=1, le=64)
    judge: str = param("text", "'text': count the verdicts the judge writes (read from log-probabilities where it "
                       "writes none in the task's format); 'logprob': average the log-prob margin of the verdict "
                       "'Solution 1' over 'Solution 2' across both orders (a position bias cancels)",
                       choices=("text", "logprob"))
    league: bool = param(False, "league instead of knockout")
    m: int = param(2, "league: opponents per candidate", ge=1)
    judge_model: str | None = param(None, "model that judges (default: the request's)")
    judge_prompt: str | None = param(None, "judge's user message with {question}, {solution_1}, {solution_2} "
                                     "(default: the task's judge prompt)",
                                     template=("question", "solution_1", "solution_2"))
    judge_pattern: str | None = param(None, "regex whose first group is 'Solution 1', 'Solution 2' or 'Tie' "
                                      "(default: the task's verdict format)", pattern=True)
    judge_temperature: float = param(0.1, "judge sampling temperature", ge=0.0, le=2.0)
    judge_max_tokens: int = param(256, "judge reply budget", ge=1, le=8192)
    judge_same_answer: bool = param(False, "judge pairs that give the same answer")
    answer_pattern: str | None = param(None, ANSWER_PATTERN_HELP, pattern=True)
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


def read_verdict(task: Task, text: str, pattern: str | None) -> int | None:
    """The verdict a judge wrote: 1, 2, 0 (a tie) or None; by the task's format or a request's pattern."""
    if pattern is None:
        return task.read_verdict(text)
    found = findall(pattern, text, "judge_pattern")
    if not found:
        return None
    last = found[-1][0] if isinstance(found[-1], tuple) else found[-1]
    return {"solution 1": 1, "solution 2": 2}.get(last.strip().lower(), 0)


def verdict_of(margin: float) -> int:
    """The verdict a log-prob margin of "Solution 1" over "Solution 2" gives: 1, 2, or 0 (a tie)."""
    return 1 if margin > 0 else 2 if margin < 0 else 0


def decide(a: int, b: int, score: tuple[float, float], tiebreak: Callable[[int, int], int]) -> int:
    """The game's winner: the higher score, else `tiebreak(a, b)`."""
    if score[0] != score[1]:
        return a if score[0] > score[1] else b
    return tiebreak(a, b)


async def knockout(ctx: Context, judge: Judge, players: list[int], answers: list[str | None],
                   tiebreak: Callable[[int, int], int]) -> tuple[int, list[dict[str, Any]]]:
    """Knockout rounds among `players` (indices into the judge's candidates): the winner and the rounds."""
    rounds: list[dict[str, Any]] = []
    while len(players) > 1:
        pairs, bye = knockout_pairs(players)
        ctx.progress(stage="round", round=len(rounds) + 1, pairs=len(pairs))
        games = await asyncio.gather(*(judge.play(a, b, answers) for a, b in pairs))
        for g in games:
            g["winner"] = decide(g["a"], g["b"], g["score"], tiebreak)
        players = ([bye] if bye is not None else []) + [g["winner"] for g in games]
        rounds.append({"games": games, "bye": bye})
    return players[0], rounds


def failure_bound(p_gen: float, p_comp: float, n: int, k: int) -> float:
    """P(fail) <= (1 - p_gen)^N + ceil(log2 N) exp(-2K (p_comp - 0.5)^2), for p_comp > 0.5."""
    if p_comp <= 0.5:
        return 1.0
    rounds = math.ceil(math.log2(n)) if n > 1 else 0
    return min(1.0, (1 - p_gen) ** n + rounds * math.exp(-2 * k * (p_comp - 0.5) ** 2))


async def run(ctx: Context, query: Query, params: Params) -> Result:
    ctx.progress(stage="sample", n=params.n)
    cands, sub = await ctx.sample(query, params.n, params.sampler)
    answers = await extract_answers(ctx, query.task, [c.text for c in cands], params.answer_pattern)
    rng = random.Random(query.spec.seed)
    judge = Judge(ctx, query, params, cands)
    if params.league:
        totals = [0.0] * len(cands)
        ctx.progress(stage="league", pairs=len(league_pairs(len(cands), params.m)))
        games = await asyncio.gather(*(judge.play(a, b, answers) for a, b in league_pairs(len(cands), params.m)))
        for g in games:
            totals[g["a"]] += g["score"][0]
            totals[g["b"]] += g["score"][1]
        best = max(totals)
        winner = rng.choice([i for i, t in enumerate(totals) if t == best])
        rounds = [{"games": games, "totals": totals}]
    else:
        support = Counter(a for a in answers if a is not None)

        def tiebreak(a: int, b: int) -> int:
            sa, sb = support[answers[a]], support[answers[b]]
            return rng.choice((a, b)) if sa == sb else a if sa > sb else b
        winner, rounds = await knockout(ctx, judge, list(range(len(cands))), answers, tiebreak)
    agreement = judge.agreement(rounds)
    p_gen = _mean([a is not None and a == answers[winner] for a in answers])
    info = {"winner": winner, "answer": answers[winner], "judge_calls": judge.calls, "verdicts": dict(judge.read),
            "unextracted": answers.count(None), "judge_agreement": agreement, "p_gen_est": p_gen,
            "p_comp_est": agreement,
            "failure_bound_est": failure_bound(p_gen, agreement, len(cands), 2 * params.per_order)
            if agreement is not None else None}
    trace = {"candidates": [{"text": c.text, "answer": a} for c, a in zip(cands, answers)],
             "rounds": rounds, "winner": winner}
    if sub:
        trace["samplers"] = sub
    return Result(choice=cands[winner], trace=trace, info=info)


def judge_messages(task: Task, params: Params, question: str, solution_1: str, solution_2: str) -> list[dict]:
    """The judge's chat prompt: the task's, unless the request gives its own user message."""
    if params.judge_prompt is None:
        return task.judge_messages(question, solution_1, solution_2)
    return [{"role": "user", "content": params.judge_prompt.format(question=question, solution_1=solution_1,
                                                                    solution_2=solution_2)}]


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


class Judge:
    """Plays pairs of candidates: K calls per pair split across both orders, all at once; counts how
    every verdict was read."""

    def __init__(self, ctx: Context, query: Query, params: Params, cands: list[Candidate]):
        self.ctx, self.query, self.params, self.cands = ctx, query, params, cands
        self.model = params.judge_model or query.model
        engine, _ = ctx.engine(self.model)
        self.max_len = engine.max_model_len
        self.spec = query.spec.internal(temperature=params.judge_temperature, max_tokens=params.judge_max_tokens)
        self.calls = 0
        self.read = {"written": 0, "constrained": 0, "unread": 0}  # how each judge call's verdict was read

    @staticmethod
    def agreement(rounds: list[dict[str, Any]]) -> float | None:
        """Mean share of a judged game's calls that agree with its majority: the estimate of p_comp."""
        judged = [g for r in rounds for g in r["games"] if g["calls"]]
        return _mean([max(g["agreement"]) / len(g["calls"]) for g in judged])

    async def play(self, a: int, b: int, answers: list[str | None]) -> dict[str, Any]:
        game: dict[str, Any] = {"a": a, "b": b, "calls": [], "score": (0.5, 0.5)}
        if answers[a] is not None and answers[a] == answers[b] and not self.params.judge_same_answer:
            game["skipped"] = "same answer"
            return game
        per = self.params.per_order
        orders = [(a, b)] * per + [(b, a)] * per
        first, second = await asyncio.gather(self._call(a, b, per), self._call(b, a, per))
        score, tally, margins = [0.0, 0.0], [0.0, 0.0], []
        for (x, y), call in zip(orders, first + second):
            if call is None:
                continue
            s1, s2 = SCORES[call["verdict"]]
            for_a = (s1, s2) if x == a else (s2, s1)
            tally = [t + s for t, s in zip(tally, for_a)]  # every call's own verdict, for the judge's agreement
            if call["read"] == "constrained":  # log p(Solution 1) - log p(Solution 2), for solution x
                margins.append(call["margin"] if x == a else -call["margin"])
            else:
                score = [t + s for t, s in zip(score, for_a)]
            game["calls"].append({"order": [x, y], **call})
        if not game["calls"]:
            game["skipped"] = "judge prompt longer than the context"
        if margins:
            # Verdicts read from log-probs count together, by their margin averaged over both orders:
            # a judge's preference for a position cancels instead of turning each game into a tie.
            game["margin"] = sum(margins) / len(margins)
            score = [t + len(margins) * s for t, s in zip(score, SCORES[verdict_of(game["margin"])])]
        game["score"], game["agreement"] = tuple(score), tuple(tally)
        return game

    async def _call(self, x: int, y: int, n: int) -> list[dict[str, Any] | None]:
        """n judge replies for (x, y) in this order (one engine call, distinct seeds), each with its
        verdict: as written, or else read from the log-probabilities of the task's two verdicts."""
        task = self.query.task
        messages = judge_messages(task, self.params, self.query.question, self.cands[x].text, self.cands[y].text)
        ids = self.ctx.render(self.model, messages)
        if len(ids) + self.params.judge_max_tokens > self.max_len:
            self.read["unread"] += n
            self.ctx.count("verdicts", "unread", n)
            return [None] * n
        seed = 1_000 + self.calls
        self.calls += n
        replies, _ = await self.ctx.sample(Query(self.model, ids, messages[-1]["content"], seeded(self.spec, seed),
                                                 task), n)
        written = await asyncio.to_thread(lambda: [read_verdict(task, r.text, self.params.judge_pattern)
                                                   for r in replies])
        constrained = [self.params.judge == "logprob" or w is None for w in written]
        margins = await asyncio.gather(*(self._margin(ids, r.text) if c else _none()
                                         for r, c in zip(replies, constrained)))
        out = []
        for r, w, c, m in zip(replies, written, constrained, margins):
            how = "constrained" if c else "written"
            self.read[how] += 1
            self.ctx.count("verdicts", how)
            verdict = verdict_of(m) if c else w
            out.append({"reply": r.text, "read": how, "verdict": verdict, "margin": m})
        return out

    async def _margin(self, ids: tuple[int, ...], text: str) -> float:
        """log p(verdict 1) - log p(verdict 2) where the judge would write its verdict after its reasoning.

        The task gives the reply's reasoning and the two verdicts that may follow it; the tokens
        where they first differ are compared in one prefill of the shared part (mostly from the
        prefix cache), with top-20 log-probs."""
        head, one, two = self.query.task.verdict_slots(text)
        tok = self.ctx.tokenizer(self.model)
        a, b = (tok.encode(head + v, add_special_tokens=False) for v in (one, two))
        d = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), None)
        if d is None:
            raise ValueError(f"the task's verdicts {one!r} and {two!r} tokenize the same")
        (lp,) = await self.ctx.score(self.model, list(ids) + a[:d], a[d:d + 1], top_logprobs=20)
        return margin(lp, a[d], b[d])


async def _none() -> None:
    return None
