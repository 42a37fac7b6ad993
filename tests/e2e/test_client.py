"""ponder's own client against the live server."""

import pytest

from ponder.clients import AsyncPonderClient, PonderClient, PonderError
from tests.e2e.conftest import KEY

Q = "Mia has 120 coins. She loses 35 coins. She ends up with 3 times as many coins. How many coins does Mia have now?"


def test_sync_client_lists_strategies_and_reads_the_trace(server):
    with PonderClient(server.base_url, api_key=KEY) as c:
        names = {s.name for s in c.strategies()}
        assert {"direct", "self_consistency", "tournament", "reverse_verify", "critical_tokens"} <= names
        r = c.chat(Q, strategy={"name": "tournament", "n": 4}, return_trace=True, temperature=0.8, seed=3,
                   max_tokens=200)
        assert r.strategy == "tournament" and r.trace["winner"] == r.info["winner"]
        assert r.engine_calls == 1 + r.info["judge_calls"]  # the four candidates are one engine call
        assert r.reasoning_tokens > 0
        with pytest.raises(PonderError) as e:
            c.chat(Q, strategy="nope")
        assert e.value.status == 400


async def test_async_client(server):
    async with AsyncPonderClient(server.base_url, api_key=KEY) as c:
        r = await c.chat(Q, strategy="self_consistency", temperature=0.7, seed=1, max_tokens=200)
        assert r.strategy == "self_consistency" and r.info["votes"]
