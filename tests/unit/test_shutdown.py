"""SIGTERM wiring in `ponder serve`: the first signal drains, uvicorn waits for it, a second one
stops at once. A stub stands in for OpenAIServing's `draining` and `drain(grace)`; uvicorn runs
for real on a local port, and the signal is delivered by calling the handler it installs."""

import asyncio
import signal

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from ponder.server.cli import _server_class
from tests.conftest import until


class StubServing:
    def __init__(self, hang: bool = False):
        self.draining, self.grace, self.hang = asyncio.Event(), None, hang

    async def drain(self, grace: float) -> None:
        self.grace = grace
        self.draining.set()
        if self.hang:
            await asyncio.Event().wait()


def slow_app(seconds: float, entered: asyncio.Event) -> FastAPI:
    """A route that signals when a request is inside it, then takes `seconds`."""
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict:
        entered.set()
        await asyncio.sleep(seconds)
        return {"done": True}

    return app


async def start(app: FastAPI, stub: StubServing, grace: float):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", ws="none", lifespan="off",
                            timeout_graceful_shutdown=grace + 2)
    server = _server_class()(config, drain=lambda: stub.drain(grace))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


async def test_sigterm_drains_lets_running_requests_finish_and_stops_accepting():
    stub, entered = StubServing(), asyncio.Event()
    server, task, url = await start(slow_app(0.5, entered), stub, grace=1.5)
    async with httpx.AsyncClient(base_url=url) as c:
        running = asyncio.create_task(c.get("/slow"))
        await entered.wait()
        server.handle_exit(signal.SIGTERM, None)
        r = await running
        assert r.status_code == 200 and r.json() == {"done": True}
        await asyncio.wait_for(task, 10)
    assert stub.draining.is_set() and stub.grace == 1.5 and not server.force_exit
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as c:
            await c.get("/slow")


async def test_a_second_signal_stops_at_once():
    stub, entered = StubServing(hang=True), asyncio.Event()
    server, task, url = await start(slow_app(30, entered), stub, grace=20)
    async with httpx.AsyncClient(base_url=url) as c:
        running = asyncio.create_task(c.get("/slow"))
        await entered.wait()
        server.handle_exit(signal.SIGTERM, None)
        await stub.draining.wait()
        assert not task.done()  # the first signal waits for the drain (grace 20 s, request 30 s)
        server.handle_exit(signal.SIGINT, None)
        await asyncio.wait_for(task, 10)  # far under the grace: the second signal did not wait
        assert server.force_exit
        try:  # its request was cancelled: uvicorn answers 500 or drops the connection
            assert (await asyncio.wait_for(running, 1)).status_code == 500
        except httpx.TransportError:
            pass


async def test_sigterm_ends_slow_requests_with_an_error_after_the_grace(tok):
    from ponder.server.app import create_app
    from ponder.server.serving import Limits, OpenAIServing
    from tests.fake_engine import FakeEngine

    serving = OpenAIServing([FakeEngine(tok, lambda *a: "Answer: 7", delay=30)], Limits())
    config = uvicorn.Config(create_app(serving), host="127.0.0.1", port=0, log_level="critical", ws="none",
                            lifespan="off", timeout_graceful_shutdown=2.3)
    server = _server_class()(config, drain=lambda: serving.drain(0.3))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1/chat/completions"
    body = {"model": "fake", "messages": [{"role": "user", "content": "3 + 4?"}], "max_tokens": 8}
    async with httpx.AsyncClient(timeout=10) as c:
        plain = asyncio.create_task(c.post(url, json=body))
        streamed = asyncio.create_task(c.post(url, json={**body, "stream": True}))
        await until(lambda: serving.in_flight == 2)
        server.handle_exit(signal.SIGTERM, None)
        r, s = await plain, await streamed
        await asyncio.wait_for(task, 10)  # the engine would take 30 s: the drain's grace (0.3 s) ended them
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down"
    data = [line[6:] for line in s.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and "server_shutting_down" in data[-2]
