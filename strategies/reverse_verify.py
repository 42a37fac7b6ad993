"""reverse_verify: forward candidates checked by reasoning backwards (RevThink; FOBAR).

1. Sample n forward candidates and extract their answers.
2. For each distinct answer A, make a backward question in which A is given and
   one quantity of the question is unknown: by the model, with RevThink's
   backward-question task (`backward: "model"`, where the task has that format),
   or by masking the question's last number as x (`backward: "mask"`, FOBAR's
   "If we know the answer to the above question is A, what is the value of
   unknown variable x?"). The masked quantity is the number of the question that
   the backward question no longer contains. The request's task owns these
   formats and reads every answer.
3. Solve each backward question m times; a solution verifies A when it recovers
   the masked quantity.
4. Score each answer FOBAR-style (Jiang et al. 2023), a weighted geometric mean
   P(A) ~ P_forward(A)^alpha * P_backward(A)^(1 - alpha), where P_forward is
   A's share of the forward votes and P_backward its share of all verifying
   backward solutions; return a forward candidate carrying the best answer.
   (FOBAR: Jiang et al. 2023, arXiv:2308.07758; RevThink: Chen et al. 2024,
   arXiv:2411.19865.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ponder.strategies.answers import ANSWER_PATTERN_HELP, extract_answers, needs_answers, vote
from ponder.strategies.base import Context, Query, Result, seeded
from ponder.strategies.params import ParamError, Sampler, StrategyParams, param


@dataclass(frozen=True)
class Params(StrategyParams):
    n: int = param(8, "forward candidates", ge=1)
    m: int = param(4, "backward solutions per distinct answer", ge=1, le=64)
    alpha: float = param(0.5, "weight of forward votes vs backward checks (FOBAR)", ge=0.0, le=1.0)
    backward: str | None = param(None, "'model': the model writes the backward question (where the task has "
                                 "that format); 'mask': the question's last number is masked; default: the "
                                 "task's", choices=("model", "mask"))
    max_answers: int = param(4, "verify at most this many distinct answers (top votes)", ge=1, le=64)
    aux_max_tokens: int = param(256, "budget of each backward question and solution", ge=1, le=8192)
    answer_pattern: str | None = param(None, ANSWER_PATTERN_HELP, pattern=True)
    sampler: Sampler | None = param(None, "strategy that makes each candidate")

    def budget(self, per_sample: int) -> int:
        return self.n * per_sample + self.max_answers * (1 + self.m) * self.aux_max_tokens

    def check_task(self, task: Any) -> None:
        needs_answers("reverse_verify", task)
        if not task.has_backward:
            raise ParamError("task", f"the task {task.name!r} has no backward questions, which reverse_verify "
                             "checks answers with")
        if self.backward == "model" and task.backward_question_prompt("", "") is None:
            raise ParamError("backward", f"the task {task.name!r} has no format for the model to write a backward "
                             "question; use 'mask'")


PSEUDO = 0.5  # backward pseudo-count per answer (see fobar)


def fobar(votes: dict[str, float], verified: dict[str, int], alpha: float) -> dict[str, float]:
    """Weighted geometric mean of forward and backward shares. The backward share is smoothed with half a
    pseudo-count per answer (Jeffreys' prior): unsmoothed, one lucky verification of a wrong answer zeroes every
    answer no backward solution verified, whatever its votes (measured on SmolLM2: 0.29 against greedy's
    0.43); with none verified anywhere, the backward shares are equal and the votes decide."""
    n_votes = sum(votes.values()) or 1.0
    n_ver = sum(verified.get(a, 0) for a in votes) + PSEUDO * len(votes)
    return {a: (v / n_votes) ** alpha * ((verified.get(a, 0) + PSEUDO) / n_ver) ** (1 - alpha)
            for a, v in votes.items()}


async def run(ctx: Context, query: Query, params: Params) -> Result:
    ctx.progress(stage="forward", n=params.n)
    cands, sub = await ctx.sample(query, params.n, params.sampler)
    task = query.task
    answers = await extract_answers(ctx, task, [c.text for c in cands], params.answer_pattern)
    _, votes = vote(answers)
    checked = sorted(votes, key=lambda a: -votes[a])[: params.max_answers]
    aux = query.spec.internal(max_tokens=params.aux_max_tokens)
    mode = params.backward or task.backward_mode

    async def backward_question(i: int, answer: str) -> tuple[str, str | None]:
        if mode == "mask":
            return task.backward_question(query.question, answer) or ("", None)
        prompt = task.backward_question_prompt(query.question, answer)
        ids = ctx.render(query.model, [{"role": "user", "content": prompt}])
        bq = (await ctx.generate(query.model, ids, seeded(aux.replace(temperature=0.0), 500 + i))).text.strip()
        return bq, task.masked_quantity(query.question, bq, answer)

    ctx.progress(stage="backward_questions", answers=len(checked))
    questions = await asyncio.gather(*(backward_question(i, a) for i, a in enumerate(checked)))

    async def solve(i: int, bq: str, m: int) -> list[str]:
        """m solutions of backward question i: one engine call (seeds 2000 + 97 i + j)."""
        ids = ctx.render(query.model, [{"role": "user", "content": task.backward_prompt(bq)}])
        cands, _ = await ctx.sample(Query(query.model, ids, bq, seeded(aux, 2_000 + 97 * i), task), m)
        return [c.text for c in cands]

    m = params.m if aux.temperature > 0 else 1  # greedy solutions would all be the same
    asked = [i for i, (_, masked) in enumerate(questions) if masked is not None]
    ctx.progress(stage="backward_solutions", calls=len(asked), solutions=m * len(asked))
    batches = await asyncio.gather(*(solve(i, questions[i][0], m) for i in asked))
    todo = [(i, j) for i in asked for j in range(m)]
    solved = [text for batch in batches for text in batch]
    verified: dict[str, int] = {a: 0 for a in checked}
    checks: dict[str, list[dict[str, Any]]] = {a: [] for a in checked}
    for (i, _), text, got in zip(todo, solved, await extract_answers(ctx, task, solved, count=False)):
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
                  info={"answer": best, "votes": votes, "verified": verified, "scores": scores,
                        "backward": mode, "unextracted": answers.count(None)})
