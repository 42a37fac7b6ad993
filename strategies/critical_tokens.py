"""critical_tokens: find the token that sinks a trajectory and resample around it (cDPO, Lin et al. 2024).

1. Sample n candidates.
2. Score every token y_t of a candidate with the contrastive estimate
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
4. Choose among all trajectories: majority vote over answers ("vote"), the
   best mean log s_t ("score"), or the last refinement of the first candidate
   ("last", for use as another strategy's sampler with n=1).

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

# What a 400 says when the contrastive models are not served.
CONTRAST_HINT = ("critical_tokens scores tokens with a positive and a negative model of the served model: train "
                 "them with `ponder train cdpo-contrast --base DIR` (writes DIR-pos and DIR-neg) and serve them "
                 "beside it (--model DIR --model DIR-pos --model DIR-neg), or name served ones with "
                 "strategy.positive_model and strategy.negative_model")


@dataclass(frozen=True)
class Params(StrategyParams):
    missing_models_hint: ClassVar[str] = CONTRAST_HINT

    n: int = param(4, "initial candidates", ge=1)
    rounds: int = param(1, "critical-token resamples per candidate", ge=0, le=16)
    beta: float = param(1.0, "contrast strength", ge=0.0, le=100.0)
    threshold: float = param(1.0, "resample only when the lowest s_t is below this", ge=0.0, le=1.0)
    positive_model: str | None = param(None, "model tuned on correct trajectories (default: <model>-pos)")
    negative_model: str | None = param(None, "model tuned on incorrect ones (default: <model>-neg)")
    top_logprobs: int = param(20, "log-probs per position for the estimate", ge=0, le=20)
    select: str = param("vote", "'vote', 'score' or 'last'", choices=("vote", "score", "last"))
    answer_pattern: str | None = param(None, ANSWER_PATTERN_HELP, pattern=True)
    sampler: Sampler | None = param(None, "strategy that makes each candidate")

    def budget(self, per_sample: int) -> int:
        return self.n * per_sample * (1 + self.rounds)

    def models(self, model: str) -> list[str]:
        return [self.positive_model or f"{model}-pos", self.negative_model or f"{model}-neg"]

    def check_task(self, task: Any) -> None:
        if self.select == "vote":
            needs_answers("critical_tokens (select 'vote')", task)


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

    chains = await asyncio.gather(*(refine(i, c) for i, c in enumerate(cands)))
    pool = [step for chain in chains for step in chain]
    answers = await extract_answers(ctx, query.task, [s["candidate"].text for s in pool], params.answer_pattern)
    if params.select == "last":
        chosen = len(chains[0]) - 1
    elif params.select == "score":
        chosen = max(range(len(pool)), key=lambda j: _mean_log(pool[j]["scores"]))
    else:
        winner, _ = vote(answers)
        chosen = answers.index(winner) if winner is not None else 0
    found = iter(answers)
    trace = {"chains": [[{"text": s["candidate"].text, "answer": next(found), "critical": s["critical"],
                          "min_s": min(s["scores"], default=None)} for s in chain] for chain in chains],
             "chosen": chosen}
    if sub:
        trace["samplers"] = sub
    _, votes = vote(answers)
    return Result(choice=pool[chosen]["candidate"], trace=trace,
                  info={"answer": answers[chosen], "votes": votes, "unextracted": answers.count(None),
                        "resamples": sum(len(c) - 1 for c in chains)})


def _mean_log(scores: list[float]) -> float:
    return sum(math.log(max(s, 1e-12)) for s in scores) / len(scores) if scores else -math.inf
