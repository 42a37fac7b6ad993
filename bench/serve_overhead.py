"""Serving overhead: vLLM's own OpenAI server vs `ponder serve` (strategy direct), side by side.

    python bench/serve_overhead.py [--model models/ponder-small] [--concurrency 64] [--rounds 8]

Starts both servers, warms each up, then puts the same load on them in turn
(`--concurrency` chat requests at once, `--max-tokens` each, greedy), one round
at a time in ABBA order, `--rounds` rounds each, in one run on one machine: only
one server is loaded at a time, the other waits idle. Both run the same engine
settings (eager, prefix caching, chunked prefill off, ponder's logits processor
loaded). Prints throughput and p50/p99 latency of each and the ratio ponder / vLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import AsyncOpenAI

from ponder.models import DEFAULT_MODEL
from ponder.tasks import arith
from ponder.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


def commands(model: str, port: int) -> dict[str, list[str]]:
    vllm = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", Path(model).name, "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096",
            "--gpu-memory-utilization", "0.3", "--enable-prefix-caching", "--max-logprobs", "20", "--seed", "0",
            "--logits-processors", "ponder.engine.logits:MaskTokensAtPositions"]
    ponder = [sys.executable, "-m", "ponder", "serve", "--model", model, "--host", "127.0.0.1",
              "--port", str(port), "--log-level", "warning"]
    return {"vLLM": vllm, "ponder": ponder}


def start(cmd: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(1)
    proc.kill()
    raise TimeoutError(" ".join(cmd))


async def one_round(client: AsyncOpenAI, model: str, prompts: list[str], max_tokens: int,
                    ignore_eos: bool = False):
    extra = {"ignore_eos": True} if ignore_eos else None

    async def one(p: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                 max_tokens=max_tokens, temperature=0.0, extra_body=extra)
        return time.perf_counter() - t0, r.usage.completion_tokens

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - t0, results


async def measure(urls: dict[str, str], models: dict[str, str], prompts: list[str], rounds: int,
                  max_tokens: int, ignore_eos: bool = False) -> dict:
    """Warm both servers up, then `rounds` rounds each in ABBA order (A B, B A, A B, ...), so a drift of
    the machine's speed during the run falls on both alike. `models`: the model each server is asked for;
    `ignore_eos`: every reply runs to `max_tokens`, so models that stop at different points do equal work."""
    clients = {name: AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
               for name, url in urls.items()}
    walls = {name: [] for name in urls}
    lats = {name: [] for name in urls}
    tokens = dict.fromkeys(urls, 0)
    for name, client in clients.items():
        await one_round(client, models[name], prompts, max_tokens, ignore_eos)  # warm-up
    names = list(urls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, results = await one_round(clients[name], models[name], prompts, max_tokens, ignore_eos)
            walls[name].append(wall)
            lats[name] += [lat for lat, _ in results]
            tokens[name] += sum(n for _, n in results)
    for client in clients.values():
        await client.close()
    out = {}
    for name in urls:
        ls = sorted(lats[name])
        out[name] = {"tok_s": tokens[name] / sum(walls[name]), "req_s": len(ls) / sum(walls[name]),
                     "p50": statistics.median(ls), "p99": ls[min(len(ls) - 1, int(0.99 * len(ls)))]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    prompts = [arith.forward_prompt(p.question()) for p in arith.dataset("test", args.concurrency)]
    procs, urls = [], {}
    try:
        for name, port in (("vLLM", free_port()), ("ponder", free_port())):
            procs.append(start(commands(args.model, port)[name], port))
            urls[name] = f"http://127.0.0.1:{port}/v1"
        models = dict.fromkeys(urls, Path(args.model).name)
        results = asyncio.run(measure(urls, models, prompts, args.rounds, args.max_tokens))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
    for name, r in results.items():
        print(f"{name:>6}: {r['tok_s']:8.0f} tok/s  {r['req_s']:6.1f} req/s  p50 {r['p50']:.3f}s  p99 {r['p99']:.3f}s",
              flush=True)
    v, p = results["vLLM"], results["ponder"]
    print(f"serve_overhead: {args.concurrency} concurrent chat requests x {args.max_tokens} max tokens, "
          f"{args.rounds} rounds each, ABBA: vLLM {v['tok_s']:.0f} tok/s (p50 {v['p50']:.3f}s, p99 {v['p99']:.3f}s), "
          f"ponder {p['tok_s']:.0f} tok/s (p50 {p['p50']:.3f}s, p99 {p['p99']:.3f}s); "
          f"throughput ratio ponder/vLLM = {p['tok_s'] / v['tok_s']:.3f}")


if __name__ == "__main__":
    main()
