"""Tournament overhead: a tournament vs its critical path, on one in-process engine.

    python bench/strategy_overhead.py [--n 16] [--k 2] [--problems 8]

For each problem, time a knockout tournament (N candidates, K judge calls per
pair, every pair judged) run through ponder's strategy layer; then replay its
critical path straight against the engine: one batched generation of the same N
candidates, then each round's judge calls as one batch, rounds in sequence
(ceil(log2 N) of them). Prints the ratio tournament / critical path, and vLLM's
prefix-cache hit rate during the tournaments.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from prometheus_client import REGISTRY

from ponder import strategies
from ponder.engine.protocol import SamplingSpec, collect
from ponder.models import DEFAULT_MODEL
from ponder.strategies import tournament as tm
from ponder.strategies.base import Context, Query, seeded
from ponder.tasks import ARITH, arith


def cache_counters() -> tuple[float, float]:
    """vLLM's prefix-cache (queries, hits) in tokens, from its Prometheus counters."""
    q = h = 0.0
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name.startswith("vllm:prefix_cache_queries") and s.name.endswith("_total"):
                q += s.value
            elif s.name.startswith("vllm:prefix_cache_hits") and s.name.endswith("_total"):
                h += s.value
    return q, h


async def bench(args) -> None:
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine

    engine = VllmEngine(VllmConfig(model=args.model))
    name = engine.models()[0].id
    strategy, params = strategies.resolve({"name": "tournament", "n": args.n, "k": args.k,
                                           "judge_same_answer": True})
    ctx = Context(lambda m: (engine, None), "bench")
    problems = arith.dataset("test", args.problems + 1)
    t_strategy = t_path = 0.0
    q_total = h_total = 0.0
    try:
        for i, p in enumerate(problems):
            ids = ctx.render(name, [{"role": "user", "content": p.question()}])
            query = Query(name, ids, p.question(), SamplingSpec(max_tokens=200, temperature=0.8, seed=100 * i), ARITH)
            q0, h0 = cache_counters()
            t0 = time.perf_counter()
            result = await strategy.run(ctx, query, params)
            t1 = time.perf_counter()
            q1, h1 = cache_counters()
            # The critical path: the same calls, straight to the engine, one batch per round.
            await asyncio.gather(*(collect(engine.generate(list(ids), seeded(query.spec, j), f"cp-{i}-{j}",
                                                           stream=False)) for j in range(args.n)))
            texts = [c["text"] for c in result.trace["candidates"]]
            judge = query.spec.replace(temperature=params.judge_temperature, max_tokens=params.judge_max_tokens)
            for r, rnd in enumerate(result.trace["rounds"]):
                calls = []
                for g in rnd["games"]:
                    for order in ([g["a"], g["b"]], [g["b"], g["a"]]):
                        messages = tm.judge_messages(ARITH, params, p.question(), texts[order[0]], texts[order[1]])
                        calls.append(ctx.render(name, messages))
                await asyncio.gather(*(collect(engine.generate(c, seeded(judge, 1_000 + j), f"cpj-{i}-{r}-{j}",
                                                               stream=False)) for j, c in enumerate(calls)))
            t2 = time.perf_counter()
            if i == 0:
                continue  # warm-up
            t_strategy += t1 - t0
            t_path += t2 - t1
            q_total += q1 - q0
            h_total += h1 - h0
            print(f"problem {i}: tournament {t1 - t0:.2f}s, critical path {t2 - t1:.2f}s, "
                  f"{len(result.trace['rounds'])} rounds, {result.info['judge_calls']} judge calls", flush=True)
    finally:
        await engine.aclose()
    rate = f"{h_total / q_total:.3f}" if q_total else "n/a (no vllm:prefix_cache metrics)"
    print(f"strategy_overhead: tournament N={args.n} K={args.k} over {args.problems} problems: "
          f"{t_strategy:.2f}s vs critical path {t_path:.2f}s; ratio = {t_strategy / t_path:.3f}; "
          f"prefix-cache hit rate during tournaments = {rate}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--problems", type=int, default=8)
    asyncio.run(bench(ap.parse_args()))


if __name__ == "__main__":
    main()
