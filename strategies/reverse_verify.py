"""reverse_verify: forward candidates checked by reasoning backwards (RevThink; FOBAR).

1. Sample n forward candidates and extract their answers.
2. For each distinct answer A, make a backward question in which A is given and
   one quantity of the question is unknown: by the model, with RevThink's
   backward-question task (`backward: "model"`), or by masking a number of the
   question in a template (`backward: "mask"`). The masked quantity is the
   number of the question that the backward question no longer contains.
3. Solve each backward question m times; a solution verifies A when it recovers
   the masked quantity.
4. Score each answer FOBAR-style (Jiang et al. 2023), a weighted geometric mean
   P(A) ~ P_forward(A)^alpha * P_backward(A)^(1 - alpha), where P_forward is
   A's share of the forward votes and P_backward its share of all verifying
   backward solutions; return a forward candidate carrying the best answer.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ponder.strategies.answers import ANSWER_PATTERN, extract_answers, normalize, vote
from ponder.strategies.base import Context, Query, Result, seeded
from ponder.strategies.params import Sampler, StrategyParams, param
from ponder.tasks import arith

MASK_TEMPLATE = "{masked_question} The answer is {answer}. What is x?"
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Params(StrategyParams):
    n: int = param(8, "forward candidates", ge=1)
    m: int = param(4, "backward solutions per distinct answer", ge=1, le=64)
    alpha: float = param(0.5, "weight of forward votes vs backward checks (FOBAR)", ge=0.0, le=1.0)
    backward: str = param("model", "'model': the model writes the backward question; 'mask': a number of the "
                          "question is masked", choices=("model", "mask"))
    backward_question_prompt: str = param(arith.BACKWARD_QUESTION_TEMPLATE, "user message asking for a backward "
                                          "question; {question}, {answer}", template=("question", "answer"))
    backward_prompt: str = param(arith.BACKWARD_TEMPLATE, "user message asking to solve it; {backward_question}",
                                 template=("backward_question",))
    mask_template: str = param(MASK_TEMPLATE, "backward question in 'mask' mode; {masked_question} (one number "
                               "replaced by x), {answer}", template=("masked_question", "answer"))
    max_answers: int = param(4, "verify at most this many distinct answers (top votes)", ge=1, le=64)
    aux_max_tokens: int = param(256, "budget of each backward question and solution", ge=1, le=8192)
    answer_pattern: str = param(ANSWER_PATTERN, "regex whose first group is the answer", pattern=True)
    sampler: Sampler | None = param(None, "strategy that makes each candidate")

    def budget(self, per_sample: int) -> int:
        return self.n * per_sample + self.max_answers * (1 + self.m) * self.aux_max_tokens


def masked_quantity(question: str, backward_question: str, answer: str) -> str | None:
    """The number of the question missing from the backward question (which gains the answer)."""
    before = Counter(normalize(x) for x in NUMBER.findall(question))
    after = Counter(normalize(x) for x in NUMBER.findall(backward_question))
    after[normalize(answer)] -= 1
    missing = [k for k, v in (before - after).items() for _ in range(v)]
    return missing[0] if len(missing) == 1 else None


def mask_number(question: str, index: int) -> tuple[str, str] | None:
    """The question with its index-th number replaced by x, and that number."""
    found = list(NUMBER.finditer(question))
    if not found:
        return None
    m = found[index % len(found)]
    return question[: m.start()] + "x" + question[m.end():], normalize(m.group())


def fobar(votes: dict[str, float], verified: dict[str, int], alpha: float) -> dict[str, float]:
    """Weighted geometric mean of forward and backward shares (uniform backward if none verified)."""
    n_votes = sum(votes.values()) or 1.0
    n_ver = sum(verified.values())
    out = {}
    for a, v in votes.items():
        back = verified.get(a, 0) / n_ver if n_ver else 1.0
        out[a] = (v / n_votes) ** alpha * back ** (1 - alpha)
    return out


async def run(ctx: Context, query: Query, params: Params) -> Result:
    ctx.progress(stage="forward", n=params.n)
    cands, sub = await ctx.sample(query, params.n, params.sampler)
    answers = await extract_answers([c.text for c in cands], params.answer_pattern)
    _, votes = vote(answers)
    checked = sorted(votes, key=lambda a: -votes[a])[: params.max_answers]
    aux = query.spec.replace(max_tokens=params.aux_max_tokens, logprobs=None, stop=(), logit_bias=(), masked=())

    async def backward_question(i: int, answer: str) -> tuple[str, str | None]:
        if params.backward == "mask":
            masked = mask_number(query.question, i)
            if masked is None:
                return "", None
            text, number = masked
            return params.mask_template.format(masked_question=text, answer=answer), number
        prompt = params.backward_question_prompt.format(question=query.question, answer=answer)
        ids = ctx.render(query.model, [{"role": "user", "content": prompt}])
        bq = (await ctx.generate(query.model, ids, seeded(aux.replace(temperature=0.0), 500 + i))).text.strip()
        return bq, masked_quantity(query.question, bq, answer)

    ctx.progress(stage="backward_questions", answers=len(checked))
    questions = await asyncio.gather(*(backward_question(i, a) for i, a in enumerate(checked)))

    async def solve(i: int, bq: str, m: int) -> list[str]:
        """m solutions of backward question i: one engine call (seeds 2000 + 97 i + j)."""
        prompt = params.backward_prompt.format(backward_question=bq)
        ids = ctx.render(query.model, [{"role": "user", "content": prompt}])
        cands, _ = await ctx.sample(Query(query.model, ids, bq, seeded(aux, 2_000 + 97 * i)), m)
        return [c.text for c in cands]

    m = params.m if aux.temperature > 0 else 1  # greedy solutions would all be the same
    asked = [i for i, (_, masked) in enumerate(questions) if masked is not None]
    ctx.progress(stage="backward_solutions", calls=len(asked), solutions=m * len(asked))
    batches = await asyncio.gather(*(solve(i, questions[i][0], m) for i in asked))
    todo = [(i, j) for i in asked for j in range(m)]
    solved = [text for batch in batches for text in batch]
    verified: dict[str, int] = {a: 0 for a in checked}
    checks: dict[str, list[dict[str, Any]]] = {a: [] for a in checked}
    for (i, _), text, got in zip(todo, solved, await extract_answers(solved, params.answer_pattern)):
        ok = got is not None and got == questions[i][1]
        verified[checked[i]] += ok
        checks[checked[i]].append({"text": text, "answer": got, "verified": ok})
    scores = fobar({a: votes[a] for a in checked}, verified, params.alpha)
    best = max(checked, key=lambda a: (scores[a], votes[a])) if checked else None
    chosen = answers.index(best) if best is not None else 0
    trace = {"candidates": [{"text": c.text, "answer": a} for c, a in zip(cands, answers)], "votes": votes,
             "backward": [{"answer": a, "question": q, "masked": masked, "solutions": checks[a]}
                          for a, (q, masked) in zip(checked, questions)],
             "scores": scores, "chosen": chosen}
    if sub:
        trace["samplers"] = sub
    return Result(choice=cands[chosen], trace=trace,
                  info={"answer": best, "votes": votes, "verified": verified, "scores": scores})
