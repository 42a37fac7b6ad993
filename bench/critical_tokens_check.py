"""Does the contrastive estimate find the paper's critical token? (cDPO, Lin et al. 2024)

    python bench/critical_tokens_check.py [--trajectories 40] [--samples 16]

Takes wrong sampled trajectories of the base model on test problems. For each,
the contrastive critical token is the lowest s_t under the positive/negative
adapters; the rollout critical token is the paper's definition: the first token
after whose prefix no continuation succeeds and none after it does more than
5% of the time (`--samples` continuations per prefix). Prints how often the two
agree (exactly, and within the same equation line), and how often masking the
contrastive critical token and resampling fixes the answer.

Where each sits against the first wrong equation (the first line that differs
from the gold solution; the task's solutions are unique): a table of how many
critical tokens fall on an earlier line, on that line, or on a later one. The
contrastive critical token is the one cDPO's weights w_t = 1 - s_t weigh most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from ponder.engine.protocol import SamplingSpec
from ponder.models import DEFAULT_MODEL
from ponder.strategies.base import Context, Query
from ponder.strategies.critical_tokens import (
    contrastive_scores,
    critical_position,
    rollout_critical,
    rollout_success,
)
from ponder.tasks import ARITH, arith


async def check(args) -> dict:
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine

    model = Path(args.model)
    paths = (model, Path(f"{model}-pos"), Path(f"{model}-neg"))
    engines = {p.name: VllmEngine(VllmConfig(model=str(p))) for p in paths}
    name = model.name
    engine = engines[name]
    ctx = Context(lambda m: (engines[m], None), "ctcheck")
    tok = engine.tokenizer
    rows = []
    try:
        for i, p in enumerate(arith.dataset("test", 400)):
            if len(rows) >= args.trajectories:
                break
            ids = ctx.render(name, [{"role": "user", "content": p.question()}])
            query = Query(name, ids, p.question(), SamplingSpec(max_tokens=200, temperature=1.0, seed=i), ARITH)
            cand = await ctx.generate(name, ids, query.spec)
            if ARITH.correct(cand.text, p.answer) or not cand.token_ids:
                continue
            pos, neg = await asyncio.gather(ctx.score(f"{name}-pos", ids, cand.token_ids, 20),
                                            ctx.score(f"{name}-neg", ids, cand.token_ids, 20))
            s = contrastive_scores(pos, neg, beta=1.0)
            t_contrast = critical_position(s, 1.0)
            success = await rollout_success(ctx, query, cand, lambda text, p=p: ARITH.correct(text, p.answer),
                                            samples=args.samples)
            t_rollout = rollout_critical(success)
            fixed = await ctx.generate(name, ids + cand.token_ids[:t_contrast],
                                       query.spec.replace(masked=((0, cand.token_ids[t_contrast]),)))
            head = tok.decode(list(cand.token_ids[:t_contrast]), skip_special_tokens=True)

            def line(t: int | None, cand=cand) -> int | None:
                return None if t is None else tok.decode(list(cand.token_ids[:t])).count("\n")

            gold = p.forward_solution().splitlines()
            wrong = next((k for k, (a, b) in enumerate(zip(cand.text.splitlines(), gold)) if a != b), None)
            rows.append({"problem": i, "contrastive": t_contrast, "rollout": t_rollout,
                         "same_line": t_rollout is not None and line(t_contrast) == line(t_rollout),
                         "first_wrong_line": wrong, "contrastive_line": line(t_contrast),
                         "rollout_line": line(t_rollout),
                         "fixed": ARITH.correct(head + fixed.text, p.answer),
                         "token": tok.decode([cand.token_ids[t_contrast]]), "text": cand.text})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "text"}), flush=True)
    finally:
        for e in engines.values():
            await e.aclose()
    with_rollout = [r for r in rows if r["rollout"] is not None]
    return {
        "trajectories": len(rows), "with_rollout_critical": len(with_rollout),
        "exact_match": sum(r["contrastive"] == r["rollout"] for r in with_rollout) / max(1, len(with_rollout)),
        "same_line": sum(r["same_line"] for r in with_rollout) / max(1, len(with_rollout)),
        "masked_resample_fixes": sum(r["fixed"] for r in rows) / max(1, len(rows)),
        "vs_first_wrong_line": {k: relative(rows, k) for k in ("contrastive", "rollout")},
    }


def relative(rows: list[dict], key: str) -> dict[str, int]:
    """Where the `key` critical tokens sit against each trajectory's first wrong line."""
    out = {"earlier line": 0, "same line": 0, "later line": 0, "none": 0}
    for r in rows:
        t, w = r[f"{key}_line"], r["first_wrong_line"]
        out["none" if t is None or w is None else
            "earlier line" if t < w else "same line" if t == w else "later line"] += 1
    return out


def table(summary: dict) -> str:
    where = summary["vs_first_wrong_line"]
    rows = ["| critical token | earlier line | first wrong line | later line | none |", "|---|---|---|---|---|"]
    rows += [f"| {k} | {v['earlier line']} | {v['same line']} | {v['later line']} | {v['none']} |"
             for k, v in where.items()]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--trajectories", type=int, default=40)
    ap.add_argument("--samples", type=int, default=16)
    summary = asyncio.run(check(ap.parse_args()))
    print("critical_tokens_check: " + json.dumps(summary))
    print(table(summary))


if __name__ == "__main__":
    main()
