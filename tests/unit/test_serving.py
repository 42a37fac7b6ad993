import asyncio
import json

import httpx
import pytest

from ponder.server.app import create_app
from ponder.server.serving import Limits, OpenAIServing
from tests.fake_engine import FakeEngine

KEY = "sk-test"
H = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "Tom has 3 apples. He buys 4 more. How many?"}]


def reply(prompt, spec, model):
    if "Compare two solutions" in prompt:
        return "Winner: Solution 1"
    return "3 + 4 = 7\nAnswer: 7" if (spec.seed or 0) % 2 else "3 + 4 = 8\nAnswer: 8"


@pytest.fixture
def engine(tok):
    return FakeEngine(tok, reply, max_model_len=256)


def client(engine, **limits) -> httpx.AsyncClient:
    app = create_app(OpenAIServing([engine], Limits(**limits)), api_key=KEY)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=H)


async def test_usage_counts_every_call_and_reasoning_tokens(engine):
    async with client(engine) as c:
        r = await c.post("/v1/chat/completions", json={"model": "fake", "messages": MSG, "max_tokens": 30, "seed": 0,
                                                      "strategy": {"name": "self_consistency", "n": 4}})
    body = r.json()
    assert r.status_code == 200 and body["ponder"]["engine_calls"] == 1 == len(engine.batches)  # n=4 in one call
    assert len(engine.calls) == 4
    per_call = len(engine.tokenizer.encode("3 + 4 = 7\nAnswer: 7"))
    assert body["usage"]["completion_tokens"] == 4 * per_call
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3 * per_call
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4 * per_call
    assert "trace" not in body["ponder"]


async def test_three_ways_to_choose_a_strategy_agree(tok):
    bodies = []
    for path, extra, default in [("/v1/chat/completions", {"strategy": "self_consistency"}, "direct"),
                                 ("/v1/strategies/self_consistency/chat/completions", {}, "direct"),
                                 ("/v1/chat/completions", {}, "self_consistency")]:
        async with client(FakeEngine(tok, reply), default_strategy=default) as c:
            r = await c.post(path, json={"model": "fake", "messages": MSG, "seed": 3, "max_tokens": 20,
                                         "return_trace": True, **extra})
        bodies.append(r.json())
    assert {b["ponder"]["strategy"] for b in bodies} == {"self_consistency"}
    assert len({json.dumps(b["ponder"]["trace"]) for b in bodies}) == 1


@pytest.mark.parametrize("body,status,param", [
    ({"model": "nope", "messages": MSG}, 404, "model"),
    ({"model": "fake", "messages": MSG, "n": 100}, 400, "n"),
    ({"model": "fake", "messages": MSG, "strategy": {"name": "tournament", "n": 99}}, 400, "n"),
    ({"model": "fake", "messages": MSG, "max_tokens": 500}, 400, "max_tokens"),
    ({"model": "fake", "messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages"),
    ({"model": "fake", "messages": MSG, "strategy": "nope"}, 400, "strategy.name"),
    ({"model": "fake", "messages": MSG, "strategy": {"name": "tournament", "x": 1}}, 400, "strategy.x"),
    ({"model": "fake", "messages": MSG, "strategy": {"name": "tournament", "k": "two"}}, 400, "strategy.k"),
    ({"model": "fake", "messages": MSG, "temperature": 7}, 400, "temperature"),
    ({"model": "fake", "messages": MSG, "unknown_field": 1}, 400, "unknown_field"),
    ({"model": "fake", "messages": "hi"}, 400, "messages"),
    ({"model": "fake", "messages": MSG, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
])
async def test_bad_input_is_400_or_404_in_openai_shape(engine, body, status, param):
    async with client(engine, max_n=8, max_request_tokens=10_000) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and r.headers["x-should-retry"] == "false"
    assert not engine.calls


async def test_token_budget_cap(engine):
    async with client(engine, max_request_tokens=100) as c:
        r = await c.post("/v1/chat/completions", json={"model": "fake", "messages": MSG, "max_tokens": 20,
                                                      "strategy": {"name": "tournament", "n": 8}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"


async def test_malformed_json_is_400(engine):
    async with client(engine) as c:
        r = await c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


async def test_auth_on_every_v1_path_only(engine):
    app = create_app(OpenAIServing([engine], Limits()), api_key=KEY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for path in ["/v1/models", "/v1/strategies"]:
            assert (await c.get(path)).status_code == 401
            assert (await c.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
        r = await c.post("/v1/strategies/tournament/chat/completions", json={"model": "fake", "messages": MSG})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/v1/models", headers=H)).json()["data"][0]["id"] == "fake"


async def test_capacity_is_429_and_dead_engine_is_503(engine):
    async with client(engine, max_concurrent_requests=0) as c:
        r = await c.post("/v1/chat/completions", json={"model": "fake", "messages": MSG})
    assert r.status_code == 429 and r.headers["x-should-retry"] == "true"
    engine.dead = True
    async with client(engine) as c:
        r = await c.post("/v1/chat/completions", json={"model": "fake", "messages": MSG})
        assert r.status_code == 503 and r.headers["x-should-retry"] == "false"
        assert (await c.get("/health")).status_code == 503


async def test_strategy_list_has_schemas(engine):
    async with client(engine) as c:
        data = (await c.get("/v1/strategies")).json()
    by = {s["name"]: s for s in data["data"]}
    assert data["default"] == "direct" and set(by) >= {"direct", "tournament", "critical_tokens"}
    props = by["tournament"]["parameters"]["properties"]
    assert props["k"]["default"] == 2 and props["k"]["description"]
    assert by["tournament"]["parameters"]["additionalProperties"] is False


def events(text: str) -> tuple[list[str], list[dict]]:
    comments = [line for line in text.splitlines() if line.startswith(":")]
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return comments, [json.loads(d) for d in data[:-1]]


async def test_streaming_a_strategy_heartbeats_then_the_same_answer(engine):
    body = {"model": "fake", "messages": MSG, "max_tokens": 20, "seed": 5,
            "strategy": {"name": "tournament", "n": 4}, "stream_options": {"include_usage": True}}
    async with client(engine) as c:
        plain = (await c.post("/v1/chat/completions", json=body)).json()
        r = await c.post("/v1/chat/completions", json={**body, "stream": True})
    comments, chunks = events(r.text)
    assert any("round" in line for line in comments)
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["ponder"]["strategy"] == "tournament"


async def test_streaming_direct_n2_completions(engine):
    body = {"model": "fake", "prompt": "Q", "max_tokens": 20, "n": 2, "seed": 0, "stream": True, "echo": True}
    async with client(engine) as c:
        r = await c.post("/v1/completions", json=body)
    _, chunks = events(r.text)
    texts = {0: "", 1: ""}
    for ch in chunks:
        texts[ch["choices"][0]["index"]] += ch["choices"][0]["text"]
    assert texts == {0: "Q3 + 4 = 8\nAnswer: 8", 1: "Q3 + 4 = 7\nAnswer: 7"}


async def test_engine_error_mid_stream_is_an_error_chunk(engine):
    async with client(engine) as c:
        first = c.post("/v1/chat/completions", json={"model": "fake", "messages": MSG, "stream": True})
        engine.reply = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
        r = await first
    _, chunks = events(r.text)
    assert "error" in chunks[-1] and chunks[-1]["error"]["type"] == "server_error"


class Disconnecting:
    """A starlette Request stand-in whose client leaves when `left` is set."""

    def __init__(self):
        self.left = asyncio.Event()

    async def receive(self):
        await self.left.wait()
        return {"type": "http.disconnect"}


async def until(condition, timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_disconnect_cancels_every_engine_call(tok):
    from ponder.server.protocol import ChatCompletionRequest

    engine = FakeEngine(tok, reply, delay=5.0)
    serving = OpenAIServing([engine], Limits())
    req = ChatCompletionRequest(model="fake", messages=MSG, strategy={"name": "self_consistency", "n": 6})
    client = Disconnecting()
    task = asyncio.ensure_future(serving.handle(req, client))
    await until(lambda: engine.num_unfinished() == 6)
    client.left.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.num_unfinished() == 0 and serving.in_flight == 0
