"""Serving overhead: vLLM's own OpenAI server vs `ponder serve` (strategy direct), side by side.

    python bench/serve_overhead.py [--model models/ponder-small] [--concurrency 64] [--rounds 4]

Starts one server, warms it up, puts the same load on it (`--concurrency` chat
requests at once, `--max-tokens` each, greedy, `--rounds` times), stops it, then
does the same for the other, in one run on one machine. Both run the same
engine settings (eager, prefix caching, chunked prefill off, ponder's logits
processor loaded). Prints throughput and p50/p99 latency of each and the ratio
ponder / vLLM.
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

from ponder.server.config import DEFAULT_MODEL
from ponder.tasks import arith

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's tests/ helpers
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def commands(model: str, port: int) -> dict[str, list[str]]:
    vllm = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", Path(model).name, "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096",
            "--gpu-memory-utilization", "0.3", "--enable-prefix-caching", "--max-logprobs", "20", "--seed", "0",
            "--logits-processors", "ponder.server.engine.logits:MaskTokensAtPositions"]
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


async def one_round(client: AsyncOpenAI, model: str, prompts: list[str], max_tokens: int):
    async def one(p: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                 max_tokens=max_tokens, temperature=0.0)
        return time.perf_counter() - t0, r.usage.completion_tokens

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - t0, results


async def measure(base_url: str, model: str, prompts: list[str], rounds: int, max_tokens: int) -> dict:
    async with AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600) as client:
        await one_round(client, model, prompts, max_tokens)  # warm-up
        walls, lats, tokens = [], [], 0
        for _ in range(rounds):
            wall, results = await one_round(client, model, prompts, max_tokens)
            walls.append(wall)
            lats += [lat for lat, _ in results]
            tokens += sum(n for _, n in results)
    lats.sort()
    return {"tok_s": tokens / sum(walls), "req_s": len(lats) / sum(walls),
            "p50": statistics.median(lats), "p99": lats[min(len(lats) - 1, int(0.99 * len(lats)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    prompts = [arith.forward_prompt(p.question()) for p in arith.dataset("test", args.concurrency)]
    results = {}
    for name, cmd in commands(args.model, port := free_port()).items():
        proc = start(cmd, port)
        try:
            results[name] = asyncio.run(measure(f"http://127.0.0.1:{port}/v1", Path(args.model).name, prompts,
                                                args.rounds, args.max_tokens))
        finally:
            proc.terminate()
            proc.wait(60)
        r = results[name]
        print(f"{name:>6}: {r['tok_s']:8.0f} tok/s  {r['req_s']:6.1f} req/s  p50 {r['p50']:.3f}s  p99 {r['p99']:.3f}s",
              flush=True)
    ratio = results["ponder"]["tok_s"] / results["vLLM"]["tok_s"]
    print(f"serve_overhead: {args.concurrency} concurrent chat requests x {args.max_tokens} max tokens, "
          f"{args.rounds} rounds: vLLM {results['vLLM']['tok_s']:.0f} tok/s (p50 {results['vLLM']['p50']:.3f}s, "
          f"p99 {results['vLLM']['p99']:.3f}s), ponder {results['ponder']['tok_s']:.0f} tok/s "
          f"(p50 {results['ponder']['p50']:.3f}s, p99 {results['ponder']['p99']:.3f}s); "
          f"throughput ratio ponder/vLLM = {ratio:.3f}")


if __name__ == "__main__":
    main()
