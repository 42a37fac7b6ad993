"""The eval harness: accuracy of a model + strategy on a task, through the HTTP API.

Items come from a data set (`arith`: the built-in problems of a split, in the
formats ponder's models were trained on; `facts`: one-operation questions any
chat model can partly answer) and are graded by a task's formats (the task the
request names, so the server reads answers and verdicts the same way). Requests
go through the official openai SDK, concurrently, with a progress bar. A record
carries accuracy with its 95% Wilson interval, tokens per problem, wall time and
the per-problem outcomes; `--model PATH` starts `ponder serve` for the run.
`ponder eval sweep` (tasks/sweep.py) runs a grid of strategies x N over it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai
from tqdm.asyncio import tqdm

from ponder import tasks
from ponder.tasks import arith, facts
from ponder.tasks.formats import Task
from ponder.tasks.stats import wilson

FORMATS = ("forward", "judge", "backward", "pairs")
DATA = ("arith", "facts")
NATURAL_TASK = {"arith": "arith", "facts": "math"}  # how each data set's replies are graded by default


@dataclass
class EvalConfig:
    base_url: str | None = None  # a running server's /v1 URL
    model: str | None = None  # model folder: start `ponder serve` on it for the run instead
    model_name: str | None = None  # model id to request (default: the server's first model)
    lora: list[str] = field(default_factory=list)  # NAME=PATH adapters for --model
    api_key: str = "EMPTY"
    data: str = "arith"
    task: str | None = None  # formats that grade (and that the request names); default: the data's
    instruction: bool = True  # append the task's instruction to each question
    split: str = "test"
    limit: int = 500
    skip: int = 0  # problems passed over first: --skip 500 gives a slice disjoint from the first 500
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
        if self.data not in DATA:
            raise ValueError(f"--data must be one of {DATA}")
        self.formats()
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}")
        if self.format != "forward" and (self.data, self.formats().name) != ("arith", "arith"):
            raise ValueError(f"--format {self.format} scores the arith task's own formats (--data arith --task arith)")

    def formats(self) -> Task:
        return tasks.get(self.task or NATURAL_TASK[self.data])


@dataclass(frozen=True)
class Item:
    prompt: str
    check: Any  # expected answer, or winner ("Solution 1"/"Solution 2")


def question(cfg: EvalConfig, text: str) -> str:
    task = cfg.formats()
    return f"{text}\n\n{task.instruction}" if cfg.instruction and task.instruction else text


def arith_problems(cfg: EvalConfig) -> list[arith.Problem]:
    return arith.dataset(cfg.split, cfg.skip + cfg.limit, seed=0)[cfg.skip:]


def items(cfg: EvalConfig) -> list[Item]:
    if cfg.data == "facts":
        return [Item(question(cfg, f.question), f.answer) for f in facts.dataset(cfg.skip + cfg.limit)[cfg.skip:]]
    problems = arith_problems(cfg)
    rng = random.Random(1)
    if cfg.format == "forward":
        return [Item(question(cfg, arith.forward_prompt(p.question())), p.answer) for p in problems]
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


def correct(cfg: EvalConfig, text: str, check: Any) -> bool:
    task = cfg.formats()
    if cfg.format == "judge":
        return task.read_verdict(text) == int(check[-1])
    return task.correct(text, check)


@asynccontextmanager
async def client_for(cfg: EvalConfig):
    """An AsyncOpenAI client: to a running server, or to `ponder serve --model PATH` started for the run."""
    from ponder.testing import PonderServer

    server = None
    if cfg.model:
        args = [a for spec in cfg.lora for a in ("--lora", spec)]
        server = await asyncio.to_thread(PonderServer, *args, models=[cfg.model])
    try:
        async with openai.AsyncOpenAI(base_url=cfg.base_url or server.base_url, api_key=cfg.api_key, max_retries=0,
                               timeout=3600) as c:
            yield c
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)


def verdict_margin(logprobs: Any, lead: str) -> float | None:
    """log p("1") - log p("2") where a judge reply (chat logprobs) writes its verdict after `lead`
    (the task's verdict_lead, e.g. "Winner: Solution "), or None when it writes none: the quantity
    the tournament's judge="logprob" reads after the judge's reasoning."""
    tokens = logprobs.content if logprobs else []
    text = ""
    for tl in tokens:
        if text.endswith(lead.rstrip()) and tl.token.strip() in ("1", "2"):
            top = {t.token.strip(): t.logprob for t in tl.top_logprobs} | {tl.token.strip(): tl.logprob}
            floor = min(top.values())
            return top.get("1", floor) - top.get("2", floor)
        text += tl.token
    return None


async def pairs(cfg: EvalConfig) -> dict[str, Any]:
    """The tournament's two quantities (Chen, Pan et al. 2024, arXiv:2411.19477) on the model's own samples.

    p_gen: accuracy of one sample at the temperature the strategies use (n per
    problem). p_comp: how often the judge prefers a correct sample over an
    incorrect one for the same problem, asked in both orders: by the verdict it
    writes ("text", greedy) and by the log-prob margin at the verdict averaged
    over both orders ("logprob", the tournament's judge="logprob").
    """
    task = cfg.formats()
    problems = arith_problems(cfg)
    sem = asyncio.Semaphore(cfg.concurrency)
    async with client_for(cfg) as client:
        model = cfg.model_name or (await client.models.list()).data[0].id

        async def ask(messages: list[dict[str, str]], **kw: Any) -> Any:
            async with sem:
                return await client.chat.completions.create(model=model, messages=messages,
                                                            max_tokens=cfg.max_tokens, **kw)

        async def one(i: int, p: arith.Problem) -> dict[str, Any]:
            q = question(cfg, arith.forward_prompt(p.question()))
            r = await ask([{"role": "user", "content": q}], n=cfg.n, temperature=cfg.temperature, seed=cfg.seed + i)
            texts = [c.message.content or "" for c in r.choices]
            oks = [task.correct(t, p.answer) for t in texts]
            row: dict[str, Any] = {"ok": oks}
            if all(oks) or not any(oks):
                return row
            right, wrong = texts[oks.index(True)], texts[oks.index(False)]
            verdicts = await asyncio.gather(*(
                ask(task.judge_messages(q, *pair), temperature=0.0, logprobs=True, top_logprobs=20)
                for pair in ((right, wrong), (wrong, right))))
            replies = [v.choices[0].message.content or "" for v in verdicts]
            margins = [verdict_margin(v.choices[0].logprobs, task.verdict_lead) for v in verdicts]
            row["text"] = [task.read_verdict(t) == w for t, w in zip(replies, (1, 2))]
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
    strategy = {"name": cfg.strategy, "task": cfg.formats().name, **cfg.params}
    sem = asyncio.Semaphore(cfg.concurrency)
    async with client_for(cfg) as client:
        model = cfg.model_name or (await client.models.list()).data[0].id

        async def one(i: int, item: Item) -> dict[str, Any]:
            async with sem:
                try:
                    r = await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": item.prompt}], n=cfg.n,
                        temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed + i,
                        extra_body={"strategy": strategy})
                except openai.APIError as e:  # counted as wrong and reported, not the end of a long run
                    return {"ok": [False] * cfg.n, "error": f"{type(e).__name__}: {e}", "completion_tokens": 0,
                            "prompt_tokens": 0, "engine_calls": 0, "info": None}
            texts = [c.message.content or "" for c in r.choices]
            oks = [correct(cfg, t, item.check) for t in texts]
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
        "errors": sum(1 for r in rows if "error" in r), "wall_s": round(wall, 1), "rows": rows,
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
    data = c.get("data", "arith")
    line = (f"{data} {c.get('task') or NATURAL_TASK[data]} {c['format']} {c['strategy']} "
            f"{json.dumps(c['params'])} T={c['temperature']}: "
            f"accuracy {rec['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {rec['problems']}")
    key = f"pass@{c['n']}"
    if c["n"] > 1:
        line += f", {key} {rec[key]:.3f}"
    for name, acc in rec.get("by_order", {}).items():
        line += f", {name} {acc:.3f}"
    if rec.get("errors"):
        line += f", {rec['errors']} failed requests"
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


def add_common(ap: argparse.ArgumentParser) -> None:
    """The flags `ponder eval` and `ponder eval sweep` share; `common(args)` reads them back."""
    ap.add_argument("--base-url", help="a running server's /v1 URL")
    ap.add_argument("--model", help="a model folder: `ponder serve` is started on it for the run")
    ap.add_argument("--model-name", help="model id to request (default: the server's first)")
    ap.add_argument("--lora", action="append", default=[], help="NAME=PATH adapter for --model (repeatable)")
    ap.add_argument("--api-key", default="EMPTY")
    ap.add_argument("--data", default="arith", choices=DATA, help="the questions: the built-in problems (arith) or "
                    "one-operation facts any chat model can partly answer (facts)")
    ap.add_argument("--task", choices=list(tasks.TASKS), help="formats that grade the replies, also sent as "
                    "strategy.task (default: arith for --data arith, math for facts)")
    ap.add_argument("--no-instruction", dest="instruction", action="store_false",
                    help="do not append the task's instruction to each question")
    ap.add_argument("--split", default="test", choices=arith.SPLITS)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--skip", type=int, default=0, help="pass over the first SKIP problems (a held-out slice: "
                    "--skip 500 --limit 300 is disjoint from --limit 500)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--out")


def common(a: argparse.Namespace) -> dict[str, Any]:
    """EvalConfig fields from add_common's flags."""
    return dict(base_url=a.base_url, model=a.model, model_name=a.model_name, lora=a.lora, api_key=a.api_key,
                data=a.data, task=a.task, instruction=a.instruction, split=a.split, limit=a.limit, skip=a.skip,
                max_tokens=a.max_tokens, seed=a.seed, concurrency=a.concurrency)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ponder eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(ap)
    ap.add_argument("--format", default="forward", choices=FORMATS)
    ap.add_argument("--strategy", default="direct")
    ap.add_argument("--param", action="append", default=[], help="strategy parameter KEY=VALUE (JSON values)")
    ap.add_argument("--n", type=int, default=1, help="choices per problem; pass@n is reported")
    a = ap.parse_args(argv)
    cfg = EvalConfig(**common(a), format=a.format, strategy=a.strategy, params=parse_params(a.param), n=a.n,
                     temperature=a.temperature, out=a.out)
    rec = asyncio.run(evaluate(cfg))
    print(summary(rec))
    write(rec, cfg.out)
