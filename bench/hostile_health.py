"""/health latency while hostile requests run against a real `ponder serve` (issue 14's rows 1, 3 and 7).

    python bench/hostile_health.py

Each row's request is sent while a second client polls /health every 20 ms; the
row prints the request's status and the slowest /health answer seen meanwhile
(before the fixes: 0.6-7.9 s for row 1, 6.9 s for row 3, 9.0 s for row 7).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from ponder.models import DEFAULT_MODEL
from ponder.testing import PonderServer

NAME = Path(DEFAULT_MODEL).name

MSG = [{"role": "user", "content": "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"}]
ROWS = {
    "1: (a+)+b on 26 forced a's": {"temperature": 0, "logit_bias": {"69": 100}, "max_tokens": 26,
                                    "strategy": {"name": "self_consistency", "n": 1, "answer_pattern": "(a+)+b"}},
    "1': (a|aa)+b on 26 forced a's": {"temperature": 0, "logit_bias": {"69": 100}, "max_tokens": 26,
                                       "strategy": {"name": "self_consistency", "n": 1,
                                                    "answer_pattern": "(a|aa)+b"}},
    "3: league n=1e6 in a sampler": {"strategy": {"name": "tournament", "n": 1, "sampler": {
        "name": "tournament", "n": 1_000_000, "league": True}}},
    "7: a 5 MB prompt": {"messages": [{"role": "user", "content": "apples " * 750_000}]},
    "7': a 3.8 MB prompt, under the body limit": {"messages": [{"role": "user", "content": "apples " * 550_000}]},
}


def worst_health(server: PonderServer, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get(server.url("/health"))
            out.append(time.perf_counter() - t0)
            time.sleep(0.02)


def main() -> None:
    server = PonderServer(contrast=False)
    try:
        with httpx.Client(timeout=120) as c:
            for name, extra in ROWS.items():
                seen: list[float] = []
                stop = threading.Event()
                poller = threading.Thread(target=worst_health, args=(server, stop, seen))
                poller.start()
                time.sleep(0.2)
                t0 = time.perf_counter()
                r = c.post(server.url("/v1/chat/completions"), json={"model": NAME, "messages": MSG, **extra})
                took = time.perf_counter() - t0
                time.sleep(0.2)
                stop.set()
                poller.join()
                detail = r.json().get("error", {}).get("param") if r.status_code != 200 else "ok"
                print(f"row {name}: HTTP {r.status_code} ({detail}) in {took:.2f}s; /health worst {max(seen):.3f}s "
                      f"over {len(seen)} polls", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
