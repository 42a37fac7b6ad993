"""critical_tokens: find the token where a trajectory forks and resample around it (cDPO, Lin et al. 2024).

1. Sample n candidates and read their answers. Where they all agree there is no
   fork to find: the common answer is returned, at self_consistency's cost.
2. Where they disagree (`resample: "dissent"`; "all" resamples every candidate),
   score every token y_t of each candidate outside the plurality answer with the
   contrastive estimate
       s_t = softmax((1 + beta) * logits_pos_t - beta * logits_neg_t)[y_t]
   from a positive model (fine-tuned on correct trajectories) and a negative one
   (on incorrect ones), each a prefill with prompt log-probabilities. Log-probs
   differ from logits by a per-position constant, so they give the same softmax.
   With top-k log-probs the softmax runs over the tokens both models report
   (plus y_t), which is exact when k covers the vocabulary.
3. The critical token is the one with the lowest s_t (if under `threshold`).
   Resample from the prefix before it with that token forbidden at that
   position, inside vLLM (ponder's logits processor); repeat on the new
   trajectory up to `rounds` times.
4. Choose among all trajectories: "judge" (the default) keeps the most common
   answer where at least `vote_share` of the trajectories give it, and elsewhere
   plays a knockout between one trajectory per distinct answer, most supported
   first, with the tournament's judge (each game in both orders; a tied game goes
   to the answer with more support); "vote" takes the majority; "score" the best
   mean log s_t; "last" the last refinement of the first candidate (for use as
   another strategy's sampler with n=1 and `resample: "all"`).

Why this shape (bench/RESULTS.md, issue 31): on ponder-small one banned-token
resample turns most right samples wrong and most wrong ones right. The
contrastive estimate finds *where* samples fork, not which branch is right, so
resampling everything and voting cost 8 resamples per problem for nothing.
Resampling only where the samples disagree keeps the exploration where it can
matter, and the judge, not the count, decides between the branches. But a judge
that reads 9-step chains right only about 63% of the time overrules a 7-to-1 vote
as readily as a 4-to-4 one: replayed on held-out problems (bench/vote_share.py),
letting a 60% plurality stand loses nothing on either split and halves the judging.

`rollout_success` gives the paper's rollout definition (success rate of
continuations from each prefix) for checking the estimate offline (bench/).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ponder.engine.logprobs import contrastive_scores
from ponder.strategies.answers import ANSWER_PATTERN_HELP, extract_answers, needs_answers, vote
from ponder.strategies.base import Candidate, Context, Query, Result, seeded
from ponder.strategies.params import Sampler, StrategyParams, param
from ponder.strategies.tournament import Judge, knockout
from ponder.strategies.tournament import Params as JudgeParams

# What a 400 says when the contrastive models are not served.
CONTRAST_HINT = ("critical_tokens scores tokens with a positive and a negative model of the served model: train "
                 "them with `ponder train cdpo-contrast --base DIR` (writes DIR-pos and DIR-neg) and serve them "
                 "beside it (--model DIR --model DIR-pos --model DIR-neg), or name served ones with "
                 "strategy.positive_model and strategy.negative_model")


@dataclass(frozen=True)
class Params(StrategyParams):
    missing_models_hint: ClassVar[str] = CONTRAST_HINT

    n: int = param(4, "initial candidates", ge=1)
    resample: str = param("dissent", "which candidates are resampled at their critical token: 'dissent' (those "
                          "outside the plurality answer, when the answers disagree) or 'all'",
                          choices=("dissent", "all"))
    rounds: int = param(1, "critical-token resamples per resampled candidate", ge=0, le=16)
    beta: float = param(1.0, "contrast strength", ge=0.0, le=100.0)
    threshold: float = param(1.0, "resample only when the lowest s_t is below this", ge=0.0, le=1.0)
    positive_model: str | None = param(None, "model tuned on correct trajectories (default: <model>-pos)")
    negative_model: str | None = param(None, "model tuned on incorrect ones (default: <model>-neg)")
    top_logprobs: int = param(20, "log-probs per position for the estimate", ge=0, le=20)
    select: str = param("judge", "'judge' (a knockout between one trajectory per answer, judged as in the "
                        "tournament), 'vote', 'score' (best mean log s_t) or 'last' (the first candidate's last "
                        "refinement)", choices=("judge", "vote", "score", "last"))
    vote_share: float = param(0.6, "select 'judge': the most common answer stands without a judge when at least "
                              "this share of the trajectories give it (1.0: judge whenever they differ)", ge=0.0,
                              le=1.0)
    k: int = param(2, "select 'judge': judge calls per game, split across both orders", ge=1, le=64)
    judge_temperature: float = param(0.1, "select 'judge': judge sampling temperature", ge=0.0, le=2.0)
    judge_max_tokens: int = param(256, "select 'judge': judge reply budget", ge=1, le=8192)
    answer_pattern: str | None = param(None, ANSWER_PATTERN_HELP, pattern=True)
    sampler: Sampler | None = param(None, "strategy that makes each candidate")

    def budget(self, per_sample: int) -> int:
        pool = self.n * (1 + self.rounds)
        games = pool - 1 if self.select == "judge" else 0
        return pool * per_sample + games * 2 * max(1, self.k // 2) * self.judge_max_tokens

    def models(self, model: str) -> list[str]:
        return [self.positive_model or f"{model}-pos", self.negative_model or f"{model}-neg"]

    def check_task(self, task: Any) -> None:
        if self.select in ("vote", "judge") or self.resample == "dissent":
            needs_answers(f"critical_tokens (select {self.select!r}, resample {self.resample!r})", task)

    def judge(self) -> JudgeParams:
        return JudgeParams(n=self.n, k=self.k, judge_temperature=self.judge_temperature,
                           judge_max_tokens=self.judge_max_tokens, answer_pattern=self.answer_pattern)


def critical_position(scores: list[float], threshold: float) -> int | None:
    """Index of the lowest s_t (earliest on ties), or None if none is under the threshold."""
    if not scores:
        return None
    i = min(range(len(scores)), key=lambda t: (scores[t], t))
    return i if scores[i] < threshold else None


def rollout_critical(success: list[float], zero: float = 0.0, after: float = 0.05) -> int | None:
    """The paper's rollout definition: the first position whose success rate is `zero`
    and after which every rate stays under `after` (success[t] = rate of prefix y_<=t)."""
    for t, rate in enumerate(success):
        if rate <= zero and all(r < after for r in success[t:]):
            return t
    return None


async def rollout_success(ctx: Context, query: Query, cand: Candidate, correct: Callable[[str], bool],
                          samples: int = 16, stride: int = 1) -> list[float]:
    """Success rate of `samples` continuations after each prefix y_<=t (every `stride` tokens)."""
    tok = ctx.tokenizer(query.model)
    positions = list(range(0, len(cand.token_ids), stride))

    async def rate(t: int) -> float:
        prefix = cand.token_ids[: t + 1]
        head = tok.decode(list(prefix), skip_special_tokens=True)
        outs, _ = await ctx.sample(query.but(prompt_ids=query.prompt_ids + prefix, live=None), samples)
        return sum(correct(head + o.text) for o in outs) / samples

    rates = await asyncio.gather(*(rate(t) for t in positions))
    return [rates[positions.index(t - t % stride)] for t in range(len(cand.token_ids))]


async def run(ctx: Context, query: Query, params: Params) -> Result:
    ctx.progress(stage="sample", n=params.n)
    cands, sub = await ctx.sample(query, params.n, params.sampler)
    answers = await extract_answers(ctx, query.task, [c.text for c in cands], params.answer_pattern)
    tok = ctx.tokenizer(query.model)
    positive, negative = params.models(query.model)

    async def scores(c: Candidate) -> list[float]:
        if not c.token_ids:
            return []
        pos, neg = await asyncio.gather(
            ctx.score(positive, query.prompt_ids, c.token_ids, params.top_logprobs),
            ctx.score(negative, query.prompt_ids, c.token_ids, params.top_logprobs))
        return contrastive_scores(pos, neg, params.beta)

    async def refine(i: int, c: Candidate) -> list[dict[str, Any]]:
        chain = [{"candidate": c, "scores": await scores(c), "critical": None}]
        for r in range(params.rounds):
            last = chain[-1]
            t = critical_position(last["scores"], params.threshold)
            if t is None:
                break
            last["critical"] = {"position": t, "token": tok.decode([last["candidate"].token_ids[t]]),
                                "s": last["scores"][t]}
            ctx.progress(stage="resample", candidate=i, round=r + 1, position=t)
            prefix = last["candidate"].token_ids[:t]
            spec = seeded(query.spec.replace(masked=((0, last["candidate"].token_ids[t]),),
                                             max_tokens=max(1, query.spec.max_tokens - t)), 31 * (i + 1) + r)
            cont = await ctx.generate(query.model, query.prompt_ids + prefix, spec)
            ids = prefix + cont.token_ids
            new = Candidate(tok.decode(list(ids), skip_special_tokens=True), ids, None, cont.finish_reason)
            chain.append({"candidate": new, "scores": await scores(new), "critical": None})
        return chain

    async def keep(c: Candidate) -> list[dict[str, Any]]:
        return [{"candidate": c, "scores": await scores(c) if params.select == "score" else None, "critical": None}]

    plurality, _ = vote(answers)
    chains = await asyncio.gather(*(refine(i, c) if params.resample == "all" or a != plurality else keep(c)
                                    for i, (c, a) in enumerate(zip(cands, answers))))
    pool = [step for chain in chains for step in chain]
    resampled = await extract_answers(ctx, query.task, [s["candidate"].text for chain in chains for s in chain[1:]],
                                      params.answer_pattern)
    found = iter(resampled)
    answers = [a if j == 0 else next(found) for chain, a in zip(chains, answers) for j in range(len(chain))]
    winner, votes = vote(answers)
    info: dict[str, Any] = {}
    trace: dict[str, Any] = {}
    if params.select == "last":
        chosen = len(chains[0]) - 1
    elif params.select == "score":
        chosen = max(range(len(pool)), key=lambda j: _mean_log(pool[j]["scores"]))
    elif params.select == "judge" and len(votes) > 1 and votes[winner] < params.vote_share * len(answers):
        chosen, trace["rounds"], info = await _judge(ctx, query, params, [s["candidate"] for s in pool], answers,
                                                     votes)
    else:
        chosen = answers.index(winner) if winner is not None else 0
    found = iter(answers)
    trace |= {"chains": [[{"text": s["candidate"].text, "answer": next(found), "critical": s["critical"],
                           "min_s": min(s["scores"], default=None) if s["scores"] is not None else None}
                          for s in chain] for chain in chains],
              "chosen": chosen}
    if sub:
        trace["samplers"] = sub
    return Result(choice=pool[chosen]["candidate"], trace=trace,
                  info={"answer": answers[chosen], "votes": votes, "unextracted": answers.count(None),
                        "resamples": sum(len(c) - 1 for c in chains), **info})


async def _judge(ctx: Context, query: Query, params: Params, pool: list[Candidate], answers: list[str | None],
                 votes: dict[str, float]) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """A knockout between the first trajectory of each answer, most supported first; a tied game goes
    to the answer with more support (then to the one seen first)."""
    firsts = {a: answers.index(a) for a in votes}
    players = sorted(firsts.values(), key=lambda j: (-votes[answers[j]], j))
    rank = {j: r for r, j in enumerate(players)}
    judge = Judge(ctx, query, params.judge(), pool)
    winner, rounds = await knockout(ctx, judge, players, answers, lambda a, b: min(a, b, key=rank.__getitem__))
    return winner, rounds, {"judge_calls": judge.calls, "verdicts": dict(judge.read),
                            "judge_agreement": Judge.agreement(rounds)}


def _mean_log(scores: list[float]) -> float:
    return sum(math.log(max(s, 1e-12)) for s in scores) / len(scores) if scores else -math.inf
