"""Where does resampling at the critical token help? Data for critical_tokens' design (issue 31).

    python bench/critical_tokens_design.py [--problems 300] [--n 8] [--split val] [--out bench/results/ct_design]

For `--problems` problems of `--split` (val: the design is chosen off the test split), n samples
at T=0.7 of the default model, and for each sample: its answer, whether it is right, the lowest
contrastive score s_t (cDPO, arXiv:2411.19943; -pos/-neg served beside the model) and, resampled
once from the prefix before that token with the token banned, the new answer. Then replays
selection policies on the same samples (no new sampling, so they differ only in the policy):

- sc: majority vote over the n samples (self_consistency);
- add-all: vote over the samples and a resample of each (critical_tokens before issue 31);
- replace-all: each sample replaced by its resample;
- replace/add-dissent: only when the samples disagree, the samples outside the plurality answer
  replaced by (or joined by) their resamples;
- replace-below-t: samples whose lowest s_t is under t replaced by their resamples.

Prints accuracy and resamples per problem for each, and the share of right and of wrong samples
that one masked resample turns wrong and right; writes <out>.jsonl (one row per problem).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from tqdm.asyncio import tqdm

from ponder.engine.logprobs import contrastive_scores
from ponder.engine.protocol import SamplingSpec
from ponder.models import DEFAULT_MODEL
from ponder.strategies.answers import vote
from ponder.strategies.base import Candidate, Context, seeded
from ponder.strategies.critical_tokens import critical_position
from ponder.tasks import ARITH, arith
from ponder.tasks.answers import normalize

Row = dict  # one problem: {"answer": gold, "samples": [{"answer", "min_s", "resample"}]}


async def collect(args: argparse.Namespace) -> list[Row]:
    from ponder.engine.vllm_engine import VllmConfig, start_engines

    model = Path(args.model)
    paths = [model, Path(f"{model}-pos"), Path(f"{model}-neg")]
    engines = dict(zip((p.name for p in paths), await start_engines([VllmConfig(model=str(p)) for p in paths])))
    name = model.name
    ctx = Context(lambda m: (engines[m], None), "ctdesign")
    sem = asyncio.Semaphore(16)

    async def one(i: int, p: arith.Problem) -> Row:
        async with sem:
            ids = ctx.render(name, [{"role": "user", "content": p.question()}])
            spec = SamplingSpec(max_tokens=256, temperature=0.7, seed=1000 * i)
            cands = await asyncio.gather(*(ctx.generate(name, ids, seeded(spec, j)) for j in range(args.n)))

            async def examine(j: int, c: Candidate) -> dict:
                pos, neg = await asyncio.gather(ctx.score(f"{name}-pos", ids, c.token_ids, 20),
                                                ctx.score(f"{name}-neg", ids, c.token_ids, 20))
                s = contrastive_scores(pos, neg, beta=1.0)
                t = critical_position(s, 1.0)
                new = None
                if t is not None:
                    cont = await ctx.generate(name, ids + c.token_ids[:t],
                                              seeded(spec.replace(masked=((0, c.token_ids[t]),)), 7 + j))
                    head = ctx.tokenizer(name).decode(list(c.token_ids[:t]), skip_special_tokens=True)
                    new = {"answer": ARITH.extract(head + cont.text), "tokens": len(cont.token_ids)}
                return {"answer": ARITH.extract(c.text), "min_s": s[t] if t is not None else None,
                        "tokens": len(c.token_ids), "resample": new}

            samples = await asyncio.gather(*(examine(j, c) for j, c in enumerate(cands)))
            return {"problem": i, "answer": normalize(str(p.answer)), "samples": samples}

    try:
        problems = arith.dataset(args.split, args.problems, seed=1)
        return await tqdm.gather(*(one(i, p) for i, p in enumerate(problems)), desc="samples, scores, resamples")
    finally:
        for e in engines.values():
            await e.aclose()


def resampled(s: dict) -> str | None:
    return s["resample"]["answer"] if s["resample"] else s["answer"]


def policies(thresholds: list[float]) -> dict[str, Callable[[list[dict]], tuple[list[str | None], int]]]:
    """name -> policy(samples) -> (the answers voted on, resamples made)."""

    def dissent(replace: bool) -> Callable:
        def run(samples: list[dict]) -> tuple[list[str | None], int]:
            answers = [s["answer"] for s in samples]
            top, votes = vote(answers)
            if len(votes) <= 1 and None not in answers:
                return answers, 0
            out = [a for s, a in zip(samples, answers) if a == top]
            others = [s for s, a in zip(samples, answers) if a != top]
            kept = [] if replace else [s["answer"] for s in others]
            return out + kept + [resampled(s) for s in others], len(others)
        return run

    def below(t: float) -> Callable:
        def run(samples: list[dict]) -> tuple[list[str | None], int]:
            low = [s["min_s"] is not None and s["min_s"] < t for s in samples]
            return [resampled(s) if x else s["answer"] for s, x in zip(samples, low)], sum(low)
        return run

    out = {
        "sc": lambda ss: ([s["answer"] for s in ss], 0),
        "add-all": lambda ss: ([s["answer"] for s in ss] + [resampled(s) for s in ss], len(ss)),
        "replace-all": lambda ss: ([resampled(s) for s in ss], len(ss)),
        "replace-dissent": dissent(True),
        "add-dissent": dissent(False),
    }
    out |= {f"replace-below-{t:g}": below(t) for t in thresholds}
    return out


def report(rows: list[Row], thresholds: list[float]) -> str:
    lines = ["| policy | accuracy | resamples / problem |", "|---|---|---|"]
    for name, policy in policies(thresholds).items():
        results = [policy(r["samples"]) for r in rows]
        acc = sum(vote(a)[0] == r["answer"] for (a, _), r in zip(results, rows)) / len(rows)
        lines.append(f"| {name} | {acc:.3f} | {sum(k for _, k in results) / len(rows):.2f} |")
    samples = [(s, r["answer"]) for r in rows for s in r["samples"] if s["resample"]]
    right = [s for s, gold in samples if s["answer"] == gold]
    wrong = [s for s, gold in samples if s["answer"] != gold]
    broke = sum(s["resample"]["answer"] != gold for s, gold in samples if s["answer"] == gold)
    fixed = sum(s["resample"]["answer"] == gold for s, gold in samples if s["answer"] != gold)
    lines.append(f"\none masked resample: {broke}/{len(right)} right samples turn wrong, "
                 f"{fixed}/{len(wrong)} wrong samples turn right")
    for label, group in (("right", right), ("wrong", wrong)):
        qs = sorted(s["min_s"] for s in group)
        if qs:
            lines.append(f"lowest s_t of {label} samples: quartiles "
                         + ", ".join(f"{qs[int(q * (len(qs) - 1))]:.3g}" for q in (0.25, 0.5, 0.75)))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--split", default="val", choices=arith.SPLITS)
    ap.add_argument("--thresholds", default="0.01,0.05,0.1,0.2", help="comma-separated s_t thresholds")
    ap.add_argument("--out", default="bench/results/ct_design")
    a = ap.parse_args()
    out = Path(a.out).with_suffix(".jsonl")
    if out.exists():  # replay the recorded samples
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        rows = asyncio.run(collect(a))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(report(rows, [float(t) for t in a.thresholds.split(",")]))


if __name__ == "__main__":
    main()
