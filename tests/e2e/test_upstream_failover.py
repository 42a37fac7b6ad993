"""`ponder serve --upstream` over two scripted replicas (tests/fake_upstream.py, no vLLM): base URLs
with and without /v1, a wrong path as a start-up error, and a replica killed under load."""

import asyncio
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from ponder.models import DEFAULT_MODEL
from tests.conftest import ROOT, PonderServer, free_port, until

MSG = [{"role": "user", "content": "Tom has 3 apples. He buys 4 more. How many?"}]
DELAY = 4.0  # seconds each replica takes before it answers a completion: far longer than sending 24 takes


class Replica:
    def __init__(self, delay: float = DELAY):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_upstream", "--port", str(self.port), "--model", DEFAULT_MODEL,
             "--delay", str(delay)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(300):
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.kill()
        raise TimeoutError("fake upstream did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def completions(self) -> int:
        return httpx.get(self.url + "/stats", timeout=5).json()["completions"]

    def received(self) -> int:
        return httpx.get(self.url + "/stats", timeout=5).json()["received"]

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: connections drop, nothing answers
        self.proc.wait(10)


@pytest.fixture
def replicas():
    rs = [Replica(), Replica()]
    yield rs
    for r in rs:
        if r.proc.poll() is None:
            r.kill()


def test_a_wrong_upstream_path_fails_at_start_up_naming_the_url(replicas):
    wrong = replicas[0].url + "/openai"
    with pytest.raises(RuntimeError) as e:
        PonderServer("--upstream", wrong, contrast=False, timeout=120)
    assert f"GET {wrong}/v1/models answered 404" in str(e.value)


async def test_a_replica_killed_mid_load_loses_no_request(replicas):
    a, b = replicas
    server = PonderServer("--upstream", a.url + "/v1", "--upstream", b.url, "--upstream-health-interval", "0.5",
                          contrast=False, timeout=120)
    health: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                health.append(c.get(server.url("/health")).status_code)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    try:
        async with httpx.AsyncClient(base_url=server.url(), timeout=60) as c:
            # Both URL forms serve: one call each way.
            for _ in range(2):
                r = await c.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": MSG, "seed": 1})
                assert r.status_code == 200, r.text
            assert a.completions() == b.completions() == 1
            poller.start()

            async def one(i: int) -> httpx.Response:
                body = {"model": DEFAULT_MODEL, "messages": MSG, "seed": i, "max_tokens": 16,
                        "stream": i % 3 == 0,  # streamed: the replica dies before its first token
                        "strategy": {"name": "self_consistency", "n": 4} if i % 3 == 1 else "direct"}
                return await c.post("/v1/chat/completions", json=body)

            load = [asyncio.ensure_future(one(i)) for i in range(24)]
            await until(lambda: a.received() + b.received() == 2 + 24)  # every call is in flight...
            assert a.completions() + b.completions() == 2  # ...and none has answered
            b.kill()
            rs = await asyncio.gather(*load)
        assert [r.status_code for r in rs] == [200] * 24, [r.text for r in rs if r.status_code != 200]
        assert all("[DONE]" in r.text for r in rs[::3]) and not any('"error"' in r.text for r in rs)
        assert a.completions() == 1 + 24  # b's half was sent again to a
    finally:
        stop.set()
        if poller.is_alive():
            poller.join()
        server.stop()
    assert health and set(health) == {200}, health
