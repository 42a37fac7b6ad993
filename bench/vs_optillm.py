"""ponder vs OptiLLM over the same vLLM upstream, side by side in one run (issue 15).

    python bench/vs_optillm.py                                   # the full grid (about an hour here)
    python bench/vs_optillm.py --requests 8 --concurrency 16 --pairs sc              # a smoke
    python bench/vs_optillm.py --pairs judge scale-out --requests 100                 # some pairs again

1. OptiLLM (pinned: OPTILLM_VERSION) is installed once into its own virtual
   environment under --work, never into ponder's.
2. One vLLM upstream starts: `python -m vllm.entrypoints.openai.api_server` on
   --model, with the CPU settings the tests use. OptiLLM and `ponder serve
   --upstream` run over it, side by side, for the whole run.
3. Each pair is measured in ABBA order (OptiLLM, ponder, ponder, OptiLLM) at
   each concurrency: a closed loop of --requests chat requests, --concurrency at
   a time, after one warm-up. The upstream alone gets the same load first: each
   request one chat completion with n=N straight to vLLM, the physical limit.
   Pairs:
   - sc: OptiLLM `majority_voting` (k=N) vs ponder `self_consistency` (n=N);
   - judge: bon, judge: genselect: OptiLLM `bon`
     (--best-of-n N) and `genselect` (num_candidates=N), the approaches that
     judge candidates with the model, each vs ponder `tournament` (n=N).
4. scale-out: a second vLLM upstream starts and ponder over both is measured
   against ponder over one (sc, ABBA) at --scale-concurrency.
--pairs picks which of sc, judge, scale-out run (default: all); the pairs run
now replace theirs in an existing vs_optillm.json and the others are kept, each
with its own settings and date under meta.pairs.

Each cell: req/s, p50/p99 latency, errors (non-200 or transport), empty replies
(200 with no text), generated tok/s counted by vLLM itself
(`vllm:generation_tokens_total`) and as a fraction of the upstream alone at the
same concurrency, the proxy process's CPU-seconds per request and how busy the
machine's cores were over the run (psutil).
Prints a markdown table and writes bench/results/vs_optillm.json and .png.
OptiLLM adds an empty system message to what it sends upstream; the client
sends the same user-only chat to all three.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from ponder.models import DEFAULT_MODEL
from ponder.tasks import arith
from ponder.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
NAME = Path(DEFAULT_MODEL).name

OPTILLM_VERSION = "0.4.0"
PAIRS = ["sc", "judge", "scale-out"]


# ---- processes ----

class Proc:
    """A server subprocess in its own process group, its log under --work."""

    def __init__(self, name: str, cmd: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None,
                 ready: str = "/health", timeout: float = 600):
        self.name, self.port = name, port
        self.log = (log_dir / f"{name}.log").open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url(ready), timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{name} did not become ready; see {self.log.name}")
            time.sleep(1)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def optillm_exe(work: Path) -> Path:
    """OptiLLM's console script in its own venv under `work`, installed the first time."""
    venv = work / f"optillm-{OPTILLM_VERSION}"
    exe = venv / "bin" / "optillm"
    if not exe.exists():
        print(f"installing optillm=={OPTILLM_VERSION} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        f"optillm=={OPTILLM_VERSION}"], check=True)
    return exe


def vllm_cmd(model: str, port: int) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
            "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096", "--gpu-memory-utilization", "0.3",
            "--enable-prefix-caching", "--max-logprobs", "20", "--seed", "0",
            "--logits-processors", "ponder.engine.logits:MaskTokensAtPositions"]


def ponder_cmd(model: str, port: int, upstreams: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "ponder", "serve", "--model", NAME, "--tokenizer", model,
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return cmd + [a for u in upstreams for a in ("--upstream", u)]


def optillm_cmd(exe: Path, port: int, upstream: str, n: int) -> list[str]:
    return [str(exe), "--base-url", upstream + "/v1", "--port", str(port), "--model", NAME,
            "--best-of-n", str(n), "--log", "warning"]


def generated_tokens(upstreams: list[Proc]) -> float:
    """vLLM's own count of generated tokens, summed over the upstreams."""
    total = 0.0
    for u in upstreams:
        for line in httpx.get(u.url("/metrics"), timeout=30).text.splitlines():
            if line.startswith("vllm:generation_tokens_total"):
                total += float(line.rsplit(" ", 1)[1])
    return total


# ---- load ----

@dataclass(frozen=True)
class System:
    label: str  # row name
    proc: Proc | None  # the proxy whose CPU is counted (None: the upstream alone)
    base: str  # base URL of the chat endpoint's server
    body: dict  # extra request fields


async def closed_loop(base: str, bodies: list[dict], concurrency: int, timeout: float) -> dict:
    """Send every body, `concurrency` at a time, each worker starting the next when one ends."""
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    lats: list[float] = []
    errors = empty = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, empty
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                r = await client.post(base + "/v1/chat/completions", json=body)
            except httpx.HTTPError:
                errors += 1
                continue
            if r.status_code != 200:
                errors += 1
                continue
            lats.append(time.perf_counter() - t0)
            choices = r.json().get("choices") or [{}]
            empty += not ((choices[0].get("message") or {}).get("content") or "").strip()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # Not "sk-...": OptiLLM builds a new upstream client per request for such a key; with none it reuses one.
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers={"Authorization": "Bearer bench"}) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lats.sort()
    return {"wall": wall, "ok": len(lats), "errors": errors, "empty": empty,
            "p50": statistics.median(lats) if lats else None,
            "p99": lats[min(len(lats) - 1, int(0.99 * len(lats)))] if lats else None}


def measure(system: System, upstreams: list[Proc], questions: list[str], concurrency: int, args) -> dict:
    bodies = [{"model": NAME, "messages": [{"role": "user", "content": q}], "max_tokens": args.max_tokens,
               "temperature": args.temperature, **({"seed": i} if args.seed else {}), **system.body}
              for i, q in enumerate(questions)]
    tokens0, cpu0 = generated_tokens(upstreams), system.proc.cpu_seconds() if system.proc else 0.0
    psutil.cpu_percent()  # starts the machine-wide busy count
    run = asyncio.run(closed_loop(system.base, bodies, concurrency, args.timeout))
    busy = psutil.cpu_percent()
    tokens = generated_tokens(upstreams) - tokens0
    cpu = (system.proc.cpu_seconds() - cpu0) if system.proc else None
    run.update(req_s=run["ok"] / run["wall"], tok_s=tokens / run["wall"], machine_busy=busy,
               cpu_per_req=cpu / len(bodies) if cpu is not None else None)
    print(f"  {system.label:>22} c={concurrency:<4} {run['req_s']:6.2f} req/s  p50 {_s(run['p50'])}  "
          f"p99 {_s(run['p99'])}  errors {run['errors']}  empty {run['empty']}  {run['tok_s']:7.0f} gen tok/s  "
          f"cpu/req {_s(run['cpu_per_req'])}  machine {busy:.0f}% busy", flush=True)
    return run


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def warm_up(s: System, questions: list[str], concurrency: int, args) -> None:
    bodies = [{"model": NAME, "messages": [{"role": "user", "content": q}], "max_tokens": args.max_tokens, **s.body}
              for q in questions[:concurrency]]
    asyncio.run(closed_loop(s.base, bodies, concurrency, args.timeout))


def abba(a: System, b: System, upstreams: list[Proc], questions: list[str], concurrency: int, args) -> dict:
    """A, B, B, A after one short warm-up each; the runs of each, in order."""
    for s in (a, b):
        warm_up(s, questions, concurrency, args)
    runs: dict[str, list[dict]] = {a.label: [], b.label: []}
    for s in (a, b, b, a):
        runs[s.label].append(measure(s, upstreams, questions, concurrency, args))
    return runs


# ---- report ----

def mean(runs: list[dict], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return sum(xs) / len(xs) if xs else None


def table(results: dict) -> str:
    rows = ["| pair | concurrency | system | req/s (runs) | p50 s | p99 s | errors | empty | gen tok/s | "
            "of upstream alone | CPU-s / request | machine busy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, by_c in results.items():
        for c, cell in by_c.items():
            alone = mean(cell.get("upstream alone", []), "tok_s")
            for label, runs in cell.items():
                tok = mean(runs, "tok_s")
                frac = f"{tok / alone:.2f}" if alone and tok is not None else "-"
                each = ", ".join(f"{r['req_s']:.2f}" for r in runs)
                rows.append(f"| {pair} | {c} | {label} | {mean(runs, 'req_s'):.2f} ({each}) | "
                            f"{_s(mean(runs, 'p50'))} | {_s(mean(runs, 'p99'))} | {sum(r['errors'] for r in runs)} | "
                            f"{sum(r['empty'] for r in runs)} | {tok:.0f} | {frac} | {_s(mean(runs, 'cpu_per_req'))} | "
                            f"{_pct(mean(runs, 'machine_busy'))} |")
    return "\n".join(rows)


def ratios(results: dict) -> list[str]:
    """B / A req/s of each ABBA pair (ponder over the other; 2 upstreams over 1), run by run."""
    out = []
    for pair, by_c in results.items():
        for c, cell in by_c.items():
            a, b = [k for k in cell if k != "upstream alone"]
            rs = [y["req_s"] / x["req_s"] for x, y in zip(cell[a], cell[b]) if x["req_s"]]
            out.append(f"{pair} c={c}: {b} / {a} req/s = {', '.join(f'{r:.2f}' for r in rs)}")
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (pair, by_c) in zip(axes[0], results.items()):
        labels = sorted({label for cell in by_c.values() for label in cell})
        cs = sorted(by_c, key=int)
        for label in labels:
            pts = [(int(c), mean(by_c[c][label], "req_s")) for c in cs if label in by_c[c]]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.set(title=pair, xlabel="concurrency", ylabel="req/s", xscale="log")
        ax.set_xticks([int(c) for c in cs], [str(c) for c in cs])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---- main ----

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--work", default=str(ROOT / "runs" / "vs_optillm"), help="venv, logs (git-ignored)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--judge-concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--n", type=int, default=8, help="candidates per request (k, n, best-of-n)")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", action="store_true", help="send seed=i with request i (OptiLLM drops it)")
    ap.add_argument("--pairs", nargs="+", choices=PAIRS, default=PAIRS, help="which comparisons to run")
    ap.add_argument("--scale-concurrency", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    questions = [p.question() for p in arith.dataset("test", args.requests)]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    procs: list[Proc] = []
    results: dict[str, dict[str, dict[str, list[dict]]]] = {}
    try:
        vport = free_port()
        upstream = Proc("vllm", vllm_cmd(args.model, vport), vport, work, env)
        procs.append(upstream)
        pport = free_port()
        ponder = Proc("ponder", ponder_cmd(args.model, pport, [upstream.url()]), pport, work)
        procs.append(ponder)
        if {"sc", "judge"} & set(args.pairs):  # scale-out alone needs no OptiLLM
            oport = free_port()
            optillm = Proc("optillm", optillm_cmd(optillm_exe(work), oport, upstream.url(), args.n), oport, work,
                           {"OPENAI_API_KEY": "sk-bench"})
            procs.append(optillm)
        alone = System("upstream alone", None, upstream.url(), {"n": args.n})
        if "sc" in args.pairs:
            sc_ponder = System("ponder self_consistency", ponder, ponder.url(),
                               {"strategy": {"name": "self_consistency", "n": args.n}})
            sc_optillm = System("optillm majority_voting", optillm, optillm.url(),
                                {"optillm_approach": "majority_voting", "k": args.n})
            results["sc"] = {}
            for c in args.concurrency:
                print(f"sc, concurrency {c}", flush=True)
                warm_up(alone, questions, c, args)
                cell = {"upstream alone": [measure(alone, [upstream], questions, c, args)]}
                cell.update(abba(sc_optillm, sc_ponder, [upstream], questions, c, args))
                results["sc"][str(c)] = cell
        if "judge" in args.pairs:
            tournament = System("ponder tournament", ponder, ponder.url(),
                                {"strategy": {"name": "tournament", "n": args.n}})
            judges = [System("optillm bon", optillm, optillm.url(), {"optillm_approach": "bon"}),
                      System("optillm genselect", optillm, optillm.url(),
                             {"optillm_approach": "genselect", "num_candidates": args.n})]
            for other in judges:
                results[f"judge: {other.label.split()[-1]}"] = {}
            for c in args.judge_concurrency:
                print(f"judge, concurrency {c}", flush=True)
                base = [measure(alone, [upstream], questions, c, args)]
                for other in judges:
                    cell = {"upstream alone": base, **abba(other, tournament, [upstream], questions, c, args)}
                    results[f"judge: {other.label.split()[-1]}"][str(c)] = cell
        if "scale-out" in args.pairs:
            vport2 = free_port()
            second = Proc("vllm-2", vllm_cmd(args.model, vport2), vport2, work, env)
            procs.append(second)
            pport2 = free_port()
            both = Proc("ponder-2", ponder_cmd(args.model, pport2, [upstream.url(), second.url()]), pport2, work)
            procs.append(both)
            c = args.scale_concurrency
            print(f"scale-out, concurrency {c}", flush=True)
            body = {"strategy": {"name": "self_consistency", "n": args.n}}
            results["scale-out"] = {str(c): abba(System("ponder, 1 upstream", ponder, ponder.url(), body),
                                                 System("ponder, 2 upstreams", both, both.url(), body),
                                                 [upstream, second], questions, c, args)}
    finally:
        for p in reversed(procs):
            p.stop()
    settings = {"optillm": OPTILLM_VERSION, "requests": args.requests, "n": args.n, "max_tokens": args.max_tokens,
                "temperature": args.temperature, "seeded": args.seed, "model": args.model,
                "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    path = out / "vs_optillm.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    if old.get("meta", {}).get("model") != args.model:
        old = {}
    meta = {"model": args.model, "pairs": {**old.get("meta", {}).get("pairs", {}),
                                           **{pair: settings for pair in results}}}
    results = {**old.get("results", {}), **results}
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, out / "vs_optillm.png")
    print("\n" + table(results) + "\n")
    print("\n".join(ratios(results)))


if __name__ == "__main__":
    main()
