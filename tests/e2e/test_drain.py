"""SIGTERM with long strategy requests in flight, on a server of its own: every client gets a complete
response or a well-formed error, and the server exits 0 within its grace."""

import asyncio
import json
import time

import httpx

from tests.conftest import NAME, SLOW, PonderServer

MODEL = NAME
MSG = [{"role": "user", "content": "Tom has 23 apples. He buys 45 more. How many apples does Tom have now?"}]
GRACE = 3.0


async def one(http: httpx.AsyncClient, url: str, stream: bool) -> str:
    body = {"model": MODEL, "messages": MSG, "stream": stream, **SLOW}  # far longer than the grace
    r = await http.post(url, json=body)
    if not stream:
        assert r.status_code in (200, 503), r.text
        return "ok" if r.status_code == 200 else r.json()["error"]["code"]
    assert r.status_code == 200
    data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", r.text[-500:]
    last = json.loads(data[-2])
    return last["error"]["code"] if "error" in last else "ok"


async def test_sigterm_drains_then_ends_the_rest_cleanly():
    server = PonderServer("--drain-grace", str(GRACE), contrast=False)
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            url = server.url("/v1/chat/completions")
            tasks = [asyncio.ensure_future(one(http, url, stream=i % 2 == 0)) for i in range(6)]
            for _ in range(600):  # until all six are running
                if server.metric("ponder_requests_in_flight") >= 6:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("six requests never ran at once")
            t0 = time.monotonic()
            server.proc.terminate()
            outcomes = await asyncio.gather(*tasks)
        code = await asyncio.to_thread(server.proc.wait, 30)
        took = time.monotonic() - t0
    finally:
        server.stop()
    assert code == 0 and took < GRACE + 20, (code, took)  # a hang guard; the drain itself is GRACE
    assert set(outcomes) <= {"ok", "server_shutting_down"} and "server_shutting_down" in outcomes, outcomes
