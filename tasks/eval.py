"""`ponder eval`: accuracy of a model + strategy on a built-in task, through the HTTP API.

    ponder eval --base-url http://localhost:8000/v1 --strategy tournament --param n=8 --limit 500
    ponder eval --model models/ponder-small --format judge          # in-process engine, same HTTP code
    ponder eval sweep --base-url ... --strategies self_consistency,tournament --ns 1,2,4,8,16
    ponder eval --base-url ... --format pairs --n 8 --temperature 0.7   # the tournament's p_gen and p_comp

Requests go through the official openai SDK, concurrently, with a progress bar.
Prints accuracy with a 95% Wilson interval, tokens per problem and wall time,
and writes a JSON record (and, for a sweep, PNG plots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.asyncio import tqdm

from ponder.tasks import arith

FORMATS = ("forward", "judge", "backward", "pairs")


@dataclass
class EvalConfig:
    base_url: str | None = None  # a running server's /v1 URL
    model: str | None = None  # model folder: start an in-process engine instead
    model_name: str | None = None  # model id to request (default: the server's first model)
    lora: list[str] = field(default_factory=list)  # NAME=PATH adapters for the in-process engine
    api_key: str = "EMPTY"
    task: str = "arith"
    split: str = "test"
    limit: int = 500
    format: str = "forward"
    strategy: str = "direct"
    params: dict[str, Any] = field(default_factory=dict)
    n: int = 1  # choices per problem (pass@n is reported too)
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int = 0
    concurrency: int = 64
    out: str | None = None

    def __post_init__(self) -> None:
        if (self.base_url is None) == (self.model is None):
            raise ValueError("give exactly one of --base-url and --model")
        if self.task != "arith":
            raise ValueError("the built-in task is 'arith'")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}")


@dataclass(frozen=True)
class Item:
    prompt: str
    check: Any  # expected answer (int) or winner ("Solution 1"/"Solution 2")


def items(cfg: EvalConfig) -> list[Item]:
    problems = arith.dataset(cfg.split, cfg.limit, seed=0)
    rng = random.Random(1)
    if cfg.format == "forward":
        return [Item(arith.forward_prompt(p.question()), p.answer) for p in problems]
    if cfg.format == "backward":
        out = []
        for p in problems:
            masked = rng.randrange(len(p.quantities))
            out.append(Item(arith.backward_prompt(p.backward_question(masked)), p.quantities[masked]))
        return out
    out = []  # judge: every (correct, wrong) pair in both orders
    for p in problems:
        right, wrong = p.forward_solution(), p.wrong_solution(rng)
        out.append(Item(arith.judge_prompt(p.question(), right, wrong), "Solution 1"))
        out.append(Item(arith.judge_prompt(p.question(), wrong, right), "Solution 2"))
    return out


def correct(fmt: str, text: str, check: Any) -> bool:
    if fmt == "judge":
        return arith.extract_winner(text) == check
    return arith.is_correct(text, check)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def diff_interval(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """95% interval of accuracy(a) - accuracy(b), by Newcombe's square-and-add of the two Wilson intervals.

    When both records carry their per-problem outcomes ("correct") on the same problems, the
    interval is the paired one (Newcombe 1998, Statistics in Medicine 17:2635, method 10): the
    two runs' positive correlation over problems (phi of the 2x2 table, shrunk by n/2 as the paper
    does) narrows it. Otherwise the runs are treated as independent (the same paper's 17:873,
    method 10), which is wider: "above it" is then a conservative claim. Written out here because
    neither scipy nor statsmodels has the paired form.
    """
    (pa, (la, ua)), (pb, (lb, ub)) = (a["accuracy"], a["ci95"]), (b["accuracy"], b["ci95"])
    phi = 0.0
    xa, xb = a.get("correct"), b.get("correct")
    if xa is not None and xb is not None and len(xa) == len(xb):
        n, table = len(xa), Counter(zip(xa, xb))
        both, only_a, only_b, neither = table[1, 1], table[1, 0], table[0, 1], table[0, 0]
        margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
        cross = both * neither - only_a * only_b
        shrunk = cross - n / 2 if cross > n / 2 else min(cross, 0)
        phi = shrunk / math.sqrt(margins) if margins else 0.0
    d = pa - pb
    return (d - math.sqrt((pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2),
            d + math.sqrt((pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))


@asynccontextmanager
async def client_for(cfg: EvalConfig):
    """An AsyncOpenAI client: to a server, or to an in-process app over ASGI."""
    import httpx
    from openai import AsyncOpenAI

    if cfg.base_url:
        async with AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0, timeout=3600) as c:
            yield c
        return
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine
    from ponder.server.app import create_app
    from ponder.server.serving import Limits, OpenAIServing

    loras = tuple(tuple(s.split("=", 1)) for s in cfg.lora)
    engine = VllmEngine(VllmConfig(model=cfg.model, loras=loras))
    app = create_app(OpenAIServing([engine], Limits(max_concurrent_requests=10_000)))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://ponder", timeout=3600) as http:
            async with AsyncOpenAI(base_url="http://ponder/v1", api_key="EMPTY", http_client=http,
                                   max_retries=0) as c:
                yield c
    finally:
        await engine.aclose()


def verdict_margin(logprobs: Any) -> float | None:
    """log p(" 1") - log p(" 2") at the verdict digit of a judge reply (chat logprobs), or None."""
    tokens = logprobs.content if logprobs else []
    text = ""
    for tl in tokens:
        if text.endswith("Winner: Solution") and tl.token.strip() in ("1", "2"):
            top = {t.token.strip(): t.logprob for t in tl.top_logprobs} | {tl.token.strip(): tl.logprob}
            floor = min(top.values())
            return top.get("1", floor) - top.get("2", floor)
        text += tl.token
    return None


async def pairs(cfg: EvalConfig) -> dict[str, Any]:
    """The tournament's two quantities (Chen, Pan et al. 2024) on the model's own samples.

    p_gen: accuracy of one sample at the temperature the strategies use (n per
    problem). p_comp: how often the judge prefers a correct sample over an
    incorrect one for the same problem, asked in both orders: by the verdict it
    writes ("text", greedy) and by the log-prob margin at the verdict averaged
    over both orders ("logprob", the tournament's judge="logprob").
    """
    problems = arith.dataset(cfg.split, cfg.limit, seed=0)
    sem = asyncio.Semaphore(cfg.concurrency)
    async with client_for(cfg) as client:
        model = cfg.model_name or (await client.models.list()).data[0].id

        async def ask(prompt: str, **kw: Any) -> Any:
            async with sem:
                return await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=cfg.max_tokens, **kw)

        async def one(i: int, p: arith.Problem) -> dict[str, Any]:
            r = await ask(arith.forward_prompt(p.question()), n=cfg.n, temperature=cfg.temperature, seed=cfg.seed + i)
            texts = [c.message.content or "" for c in r.choices]
            oks = [arith.is_correct(t, p.answer) for t in texts]
            row: dict[str, Any] = {"ok": oks}
            if all(oks) or not any(oks):
                return row
            right, wrong = texts[oks.index(True)], texts[oks.index(False)]
            verdicts = await asyncio.gather(*(
                ask(arith.judge_prompt(p.question(), *pair), temperature=0.0, logprobs=True, top_logprobs=20)
                for pair in ((right, wrong), (wrong, right))))
            texts = [v.choices[0].message.content or "" for v in verdicts]
            margins = [verdict_margin(v.choices[0].logprobs) for v in verdicts]
            row["text"] = [arith.extract_winner(t) == w for t, w in zip(texts, ("Solution 1", "Solution 2"))]
            if None not in margins:
                row["logprob"] = (margins[0] - margins[1]) / 2 > 0  # for the correct sample, both orders
            return row

        t0 = time.time()
        rows = await tqdm.gather(*(one(i, p) for i, p in enumerate(problems)), desc="p_gen, p_comp")
    judged = [r for r in rows if "text" in r]
    scored = [r for r in judged if "logprob" in r]
    return {"config": asdict(cfg), "model": model, "problems": len(rows), "wall_s": round(time.time() - t0, 1),
            "p_gen": sum(sum(r["ok"]) for r in rows) / sum(len(r["ok"]) for r in rows),
            f"pass@{cfg.n}": sum(any(r["ok"]) for r in rows) / len(rows), "pairs": len(judged),
            "p_comp_text": sum(sum(r["text"]) for r in judged) / max(1, 2 * len(judged)),
            "p_comp_text_by_order": [sum(r["text"][k] for r in judged) / max(1, len(judged)) for k in (0, 1)],
            "p_comp_logprob": sum(r["logprob"] for r in scored) / max(1, len(scored))}


async def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    if cfg.format == "pairs":
        return await pairs(cfg)
    todo = items(cfg)
    strategy = {"name": cfg.strategy, **cfg.params}
    sem = asyncio.Semaphore(cfg.concurrency)
    async with client_for(cfg) as client:
        model = cfg.model_name or (await client.models.list()).data[0].id

        async def one(i: int, item: Item) -> dict[str, Any]:
            async with sem:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": item.prompt}], n=cfg.n,
                    temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed + i,
                    extra_body={"strategy": strategy})
            texts = [c.message.content or "" for c in r.choices]
            oks = [correct(cfg.format, t, item.check) for t in texts]
            extra = getattr(r, "ponder", None) or {}
            return {"ok": oks, "completion_tokens": r.usage.completion_tokens, "prompt_tokens": r.usage.prompt_tokens,
                    "engine_calls": extra.get("engine_calls"), "info": extra.get("info")}

        t0 = time.time()
        rows = await tqdm.gather(*(one(i, it) for i, it in enumerate(todo)), desc=f"{cfg.strategy} {cfg.params}")
        wall = time.time() - t0
    k = sum(r["ok"][0] for r in rows)
    lo, hi = wilson(k, len(rows))
    record = {
        "config": asdict(cfg), "model": model, "problems": len(rows), "accuracy": k / len(rows), "ci95": [lo, hi],
        "mean_accuracy_over_choices": sum(sum(r["ok"]) / len(r["ok"]) for r in rows) / len(rows),
        f"pass@{cfg.n}": sum(any(r["ok"]) for r in rows) / len(rows),
        "completion_tokens_per_problem": sum(r["completion_tokens"] for r in rows) / len(rows),
        "prompt_tokens_per_problem": sum(r["prompt_tokens"] for r in rows) / len(rows),
        "engine_calls_per_problem": sum(r["engine_calls"] or 0 for r in rows) / len(rows),
        "wall_s": round(wall, 1), "rows": rows,
    }
    if cfg.format == "judge":
        for want in ("Solution 1", "Solution 2"):
            sel = [r["ok"][0] for r, it in zip(rows, todo) if it.check == want]
            record.setdefault("by_order", {})[f"correct_is_{want[-1]}"] = sum(sel) / len(sel)
    return record


def summary(rec: dict[str, Any]) -> str:
    c = rec["config"]
    if c["format"] == "pairs":
        from ponder.strategies.tournament import failure_bound

        passk = rec[f"pass@{c['n']}"]
        line = (f"pairs T={c['temperature']} n={c['n']} on {rec['problems']}: p_gen {rec['p_gen']:.3f}, "
                f"pass@{c['n']} {passk:.3f}; on {rec['pairs']} (correct, incorrect) pairs "
                f"p_comp text {rec['p_comp_text']:.3f} (correct first {rec['p_comp_text_by_order'][0]:.3f}, "
                f"second {rec['p_comp_text_by_order'][1]:.3f}), logprob {rec['p_comp_logprob']:.3f}")
        for mode in ("text", "logprob"):
            bound = failure_bound(rec["p_gen"], rec[f"p_comp_{mode}"], 8, 2)
            line += f"; tournament N=8 K=2 failure bound ({mode}) {bound:.3f}"
        return line
    lo, hi = rec["ci95"]
    line = (f"{c['format']} {c['strategy']} {json.dumps(c['params'])} T={c['temperature']}: "
            f"accuracy {rec['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {rec['problems']}")
    key = f"pass@{c['n']}"
    if c["n"] > 1:
        line += f", {key} {rec[key]:.3f}"
    for name, acc in rec.get("by_order", {}).items():
        line += f", {name} {acc:.3f}"
    return line + (f", {rec['completion_tokens_per_problem']:.0f} completion tokens/problem, "
                   f"{rec['wall_s']:.0f}s")


def write(rec: dict[str, Any], out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rec, indent=1) + "\n")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for p in pairs:
        key, _, value = p.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--model-name")
    ap.add_argument("--lora", action="append", default=[], help="NAME=PATH adapter for --model (repeatable)")
    ap.add_argument("--api-key", default="EMPTY")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--split", default="test", choices=arith.SPLITS)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out")


def main(argv: list[str] | None = None) -> None:
    if argv and argv[0] == "sweep":
        from ponder.tasks.sweep import main as sweep_main

        return sweep_main(argv[1:])
    ap = argparse.ArgumentParser(prog="ponder eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ap)
    ap.add_argument("--format", default="forward", choices=FORMATS)
    ap.add_argument("--strategy", default="direct")
    ap.add_argument("--param", action="append", default=[], help="strategy parameter KEY=VALUE (JSON values)")
    ap.add_argument("--n", type=int, default=1, help="choices per problem; pass@n is reported")
    a = ap.parse_args(argv)
    cfg = EvalConfig(base_url=a.base_url, model=a.model, model_name=a.model_name, lora=a.lora, api_key=a.api_key,
                     task=a.task,
                     split=a.split, limit=a.limit, format=a.format, strategy=a.strategy,
                     params=parse_params(a.param), n=a.n, temperature=a.temperature, max_tokens=a.max_tokens,
                     seed=a.seed, concurrency=a.concurrency, out=a.out)
    rec = asyncio.run(evaluate(cfg))
    print(summary(rec))
    write(rec, cfg.out)
