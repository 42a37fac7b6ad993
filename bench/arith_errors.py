"""What kind of mistake a model makes on the built-in task: its greedy replies, classified.

    python bench/arith_errors.py --base-url http://localhost:8011/v1 --split hard --limit 300

Each wrong reply is sorted by whether its equations are true arithmetic, whether
each step's operand is the one the question gives at that step ("reads"), and how
many steps it has against the chain's (a step done in parts is one line, Problem.path).
The judge of the tournament checks arithmetic only (tasks/arith.py, judge_verdict),
so a misread with true arithmetic is a mistake no verdict of that format can see.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json

from openai import AsyncOpenAI

from ponder.tasks import ARITH, arith


def classify(problem: arith.Problem, text: str) -> str:
    if ARITH.correct(text, problem.answer):
        return "right"
    true = arith.equations_hold(text)
    ops = [(eqs[0][1], sum(e[2] for e in eqs)) for eqs in map(arith.equations, text.splitlines()) if eqs]
    reads = ops == [(s.op, s.operand) for s in problem.steps]
    lines = "lines = steps" if len(ops) == len(problem.steps) else "lines != steps"
    return f"{'true' if true else 'false'} arithmetic, {'reads right' if reads else 'misreads'}, {lines}"


async def replies(base_url: str, problems: list[arith.Problem], concurrency: int) -> list[str]:
    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY")
    model = (await client.models.list()).data[0].id
    gate = asyncio.Semaphore(concurrency)

    async def one(p: arith.Problem) -> str:
        async with gate:
            r = await client.chat.completions.create(model=model, temperature=0, max_tokens=256,
                                                     messages=[{"role": "user", "content": p.question()}])
            return r.choices[0].message.content or ""

    return list(await asyncio.gather(*(one(p) for p in problems)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--split", default="hard", choices=arith.SPLITS)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default="", help="write the counts as JSON here")
    a = ap.parse_args()
    problems = arith.dataset(a.split, a.limit)
    texts = asyncio.run(replies(a.base_url, problems, a.concurrency))
    counts = collections.Counter(classify(p, t) for p, t in zip(problems, texts))
    wrong = a.limit - counts["right"]
    print(f"{a.split}: {counts['right']} of {a.limit} right; the {wrong} wrong replies:")
    for kind, n in counts.most_common():
        if kind != "right":
            print(f"  {n:4d} ({n / wrong:.0%})  {kind}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"split": a.split, "problems": a.limit, "counts": dict(counts)}, f, indent=1)


if __name__ == "__main__":
    main()
