"""Overload and a dead engine, on a server of its own (this test kills its engine)."""

import asyncio
import time

import httpx
import openai
import psutil
import pytest

from tests.conftest import NAME, SLOW, PonderServer

MODEL = NAME
MSG = [{"role": "user", "content": "Tom has 23 apples. He buys 45 more. How many apples does Tom have now?"}]


@pytest.fixture(scope="module")
def fragile():
    s = PonderServer("--max-concurrent-requests", "1", contrast=False)
    yield s
    s.stop()


async def test_over_capacity_is_429(fragile):
    c = openai.AsyncOpenAI(base_url=fragile.base_url, api_key="none", max_retries=0)
    slow = asyncio.ensure_future(c.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=SLOW["max_tokens"], temperature=SLOW["temperature"],
        extra_body={"ignore_eos": SLOW["ignore_eos"], "strategy": SLOW["strategy"]}))
    for _ in range(600):  # until the slow request holds the one slot
        if fragile.metric("ponder_requests_in_flight") >= 1 or slow.done():
            break
        await asyncio.sleep(0.05)
    assert not slow.done()
    with pytest.raises(openai.RateLimitError):
        await c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8)
    assert (await slow).choices[0].message.content


def test_dead_engine_is_503_and_the_server_exits_nonzero(fragile):
    server = psutil.Process(fragile.proc.pid)
    cores = [p for p in server.children(recursive=True) if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    assert cores, [p.cmdline() for p in server.children(recursive=True)]
    for p in cores:
        p.kill()
    statuses = set()
    deadline = time.time() + 60
    while fragile.proc.poll() is None and time.time() < deadline:
        try:
            statuses.add(httpx.get(fragile.url("/health"), timeout=2).status_code)
            with openai.OpenAI(base_url=fragile.base_url, api_key="none", max_retries=0) as c:
                c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8)
        except openai.InternalServerError as e:
            assert e.status_code == 503 and e.response.headers["x-should-retry"] == "false"
            statuses.add("503-chat")
        except (httpx.TransportError, openai.APIConnectionError):
            pass
        time.sleep(0.2)
    assert fragile.proc.wait(30) != 0
    assert 503 in statuses and "503-chat" in statuses, statuses
