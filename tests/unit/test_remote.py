"""RemoteEngine's routing, retries, health checks and n-sampling, over httpx.MockTransport."""

import asyncio
import json

import httpx
import pytest

from ponder import strategies
from ponder.engine.balancer import normalize_url
from ponder.engine.protocol import EngineDeadError, EngineRequestError, SamplingSpec, collect
from ponder.engine.remote import RemoteEngine, UpstreamError, UpstreamReplyError
from ponder.server.errors import from_exception
from ponder.strategies.base import Context, Query
from ponder.tasks import MATH
from tests import fake_upstream
from tests.conftest import until

SPEC = SamplingSpec(max_tokens=8, temperature=1.0, seed=5)
PROMPT = [1, 2, 3, 4, 5]


class Fleet:
    """Scripted replicas by host: what each one does with a request, and what each one saw."""

    def __init__(self):
        self.seen: list[tuple[str, str, dict | None]] = []  # (host, path, body)
        self.down: set[str] = set()  # hosts that refuse connections
        self.status: dict[str, int] = {}  # host -> status every completion answers
        self.health: dict[str, int] = {}  # host -> /health status (default 200)
        self.hold: asyncio.Event | None = None  # completions wait for it
        self.garbage: dict[str, bytes] = {}  # host -> the body every completion answers with (200)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if path.endswith("/health"):
            return httpx.Response(self.health.get(host, 200))
        if path.endswith("/v1/models"):
            if path != "/v1/models":
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        body = json.loads(request.content)
        self.seen.append((host, path, body))
        if self.hold is not None:
            await self.hold.wait()
        if host in self.status:
            return httpx.Response(self.status[host], json={"error": {"message": f"{host} says no"}})
        if host in self.garbage:
            return httpx.Response(200, content=self.garbage[host])
        if body.get("stream"):
            return httpx.Response(200, content="".join(fake_upstream.chunks(body)).encode())
        return httpx.Response(200, json=fake_upstream.completion(body))

    def hosts(self) -> list[str]:
        return [h for h, _, _ in self.seen]


@pytest.fixture
def fleet():
    return Fleet()


@pytest.fixture
async def remote(tok, fleet):
    eng = RemoteEngine(["http://a:8000/v1", "http://b:8000/"], "m", tok, transport=httpx.MockTransport(fleet),
                       health_interval=0.02)
    yield eng
    await eng.aclose()


def test_base_urls_with_or_without_v1_are_one_upstream():
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", " http://h:8000/v1 "):
        assert normalize_url(url) == "http://h:8000"
    assert normalize_url("http://h/api/v1") == "http://h/api"


async def test_calls_reach_v1_completions_on_both_forms(remote, fleet):
    await remote.start()
    for i in range(2):
        await collect(remote.generate(PROMPT, SPEC, f"r{i}", stream=False))
    assert sorted((h, p) for h, p, _ in fleet.seen) == [("a", "/v1/completions"), ("b", "/v1/completions")]


async def test_n_samples_are_one_call_distinct_seeded_reproducible_with_usage(remote, fleet):
    outs = await remote.sample(PROMPT, SPEC, 4, "s")
    again = await remote.sample(PROMPT, SPEC, 4, "s2")
    assert len(fleet.seen) == 2 and fleet.seen[0][2]["n"] == 4 and fleet.seen[0][2]["seed"] == 5
    assert [o.text for o in outs] == [f"x = {5 + i}\nAnswer: 7" for i in range(4)]  # choice i: seed + i
    assert [o.token_ids for o in outs] == [o.token_ids for o in again] and len({o.token_ids for o in outs}) == 4
    assert all(o.prompt_tokens == len(PROMPT) and o.completion_tokens == len(o.token_ids) == 4 for o in outs)


async def test_self_consistency_over_remote_is_one_upstream_call(remote, fleet):
    ctx = Context(lambda m: (remote, None), "req")
    strategy, params = strategies.resolve({"name": "self_consistency", "n": 6})
    res = await strategy.run(ctx, Query("m", tuple(PROMPT), "q", SPEC, MATH), params)
    assert res.info["answer"] == "7" and ctx.calls == 1 and len(fleet.seen) == 1
    assert ctx.prompt_tokens == len(PROMPT) and ctx.completion_tokens == 6 * 4  # the prompt once, every sample


async def test_routing_counts_sequences_not_calls(remote, fleet):
    fleet.hold = asyncio.Event()
    big = asyncio.ensure_future(remote.sample(PROMPT, SPEC, 4, "big"))
    await until(lambda: len(fleet.seen) == 1)
    small = [asyncio.ensure_future(collect(remote.generate(PROMPT, SPEC, f"s{i}", stream=False))) for i in range(4)]
    await until(lambda: len(fleet.seen) == 5)
    assert fleet.hosts() == ["a", "b", "b", "b", "b"]  # four single calls weigh what one n=4 call does
    assert [r.sequences for r in remote.fleet.replicas] == [4, 4] and remote.num_unfinished() == 8
    fleet.hold.set()
    await asyncio.gather(big, *small)
    assert remote.num_unfinished() == 0


async def test_a_refused_call_goes_to_the_other_replica_and_the_first_is_taken_out(remote, fleet):
    fleet.down.add("a")
    out = await collect(remote.generate(PROMPT, SPEC, "r", stream=False))
    assert out.text and fleet.hosts() == ["b"] and not remote.fleet.replicas[0].up
    await asyncio.gather(*(collect(remote.generate(PROMPT, SPEC, f"x{i}", stream=False)) for i in range(3)))
    assert fleet.hosts() == ["b"] * 4  # out of routing
    fleet.down.clear()
    await until(lambda: remote.fleet.replicas[0].up)  # the health loop puts it back


async def test_5xx_is_retried_once_elsewhere_4xx_never(remote, fleet):
    fleet.status["a"] = 503
    outs = await remote.sample(PROMPT, SPEC, 2, "s")
    assert len(outs) == 2 and fleet.hosts() == ["a", "b"]
    fleet.seen.clear()
    fleet.status.update(a=400, b=400)
    with pytest.raises(EngineRequestError, match="says no"):
        await remote.sample(PROMPT, SPEC, 2, "s")
    assert len(fleet.seen) == 1
    fleet.seen.clear()
    fleet.status.update(a=500, b=500)
    with pytest.raises(EngineDeadError, match="500"):
        await collect(remote.generate(PROMPT, SPEC, "g", stream=False))
    assert len(fleet.seen) == 2  # one retry, not more


async def test_a_stream_is_retried_before_its_first_token_never_after(tok):
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        body = json.loads(request.content)
        first, *rest = fake_upstream.chunks(body)
        if request.url.host == "a" and len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

        async def cut():
            yield first.encode()
            raise httpx.ReadError("connection reset")

        return httpx.Response(200, content=cut())

    eng = RemoteEngine(["http://a", "http://b"], "m", tok, transport=httpx.MockTransport(handler))
    try:
        got = []
        with pytest.raises(EngineDeadError, match="mid-stream"):
            async for out in eng.generate(PROMPT, SPEC, "g"):
                got.append(out)
        assert calls == ["a", "b"] and len(got) == 1  # a dropped before answering; b broke after a token
        assert eng.num_unfinished() == 0
    finally:
        await eng.aclose()


async def test_health_checks_take_a_replica_out_and_put_it_back(remote, fleet):
    await remote.check_health()
    fleet.health["a"] = 503
    await until(lambda: not remote.fleet.replicas[0].up)
    await remote.check_health()  # b still serves
    await asyncio.gather(*(collect(remote.generate(PROMPT, SPEC, f"x{i}", stream=False)) for i in range(4)))
    assert set(fleet.hosts()) == {"b"}
    fleet.health["b"] = 503
    await until(lambda: not remote.fleet.replicas[1].up)
    with pytest.raises(EngineDeadError, match="no upstream is healthy"):
        await remote.check_health()
    fleet.health.clear()
    await until(lambda: all(r.up for r in remote.fleet.replicas))
    await remote.check_health()


async def test_start_names_the_url_that_answered_404_or_lacks_the_model(tok, fleet):
    eng = RemoteEngine(["http://a:8000/v1", "http://b:8000/wrong"], "m", tok, transport=httpx.MockTransport(fleet))
    with pytest.raises(UpstreamError, match=r"GET http://b:8000/wrong/v1/models answered 404"):
        await eng.start()
    await eng.aclose()
    eng = RemoteEngine(["http://a:8000"], "other", tok, transport=httpx.MockTransport(fleet))
    with pytest.raises(UpstreamError, match=r"serves \['m'\], not the model 'other'"):
        await eng.start()
    await eng.aclose()
    fleet.down.add("b")  # not answering yet is no start-up error: it is out of routing until it is
    eng = RemoteEngine(["http://a:8000", "http://b:8000"], "m", tok, transport=httpx.MockTransport(fleet))
    await eng.start()
    assert [r.up for r in eng.fleet.replicas] == [True, False]
    await eng.aclose()


async def test_the_pool_is_sized_to_the_fleet(tok):
    eng = RemoteEngine(["http://a", "http://b", "http://c"], "m", tok, connections=100)
    pool = eng.fleet.client._transport._pool  # httpx keeps the limits on its connection pool
    assert pool._max_connections == 300 and pool._max_keepalive_connections == 300
    await eng.aclose()


async def test_one_replica_gets_a_second_try_only_after_a_dropped_connection(tok):
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        if len(calls) == 1:  # a kept-alive connection the server had just closed
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if len(calls) == 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=fake_upstream.completion(json.loads(request.content)))

    eng = RemoteEngine(["http://a"], "m", tok, transport=httpx.MockTransport(handler))
    try:
        assert len(await eng.sample(PROMPT, SPEC, 3, "s")) == 3 and calls == ["a", "a"]
        with pytest.raises(EngineDeadError, match="ConnectError"):
            await eng.sample(PROMPT, SPEC, 3, "s")
        assert calls == ["a", "a", "a"]
    finally:
        await eng.aclose()


def test_upstream_flags():
    from ponder.server.config import parse_args

    cfg = parse_args(["--upstream", "http://a:8000/v1", "--model", "m", "--upstream-connections", "512",
                      "--upstream-health-interval", "0.5"])
    assert cfg.upstream_connections == 512 and cfg.upstream_health_interval == 0.5
    assert parse_args(["--upstream", "http://a", "--model", "m"]).upstream_connections is None  # from the cap
    for bad in (["--upstream", "a:8000"], ["--upstream-connections", "0"], ["--upstream-health-interval", "0"],
                ["--upstream-health-interval", "nan"]):
        with pytest.raises(SystemExit):
            parse_args(["--model", "m", *(["--upstream", "http://a"] if bad[0] != "--upstream" else []), *bad])


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b'{"choices": []}', b'{"no": "choices"}'])
async def test_a_reply_that_is_not_vllms_json_is_an_upstream_error_not_the_clients(remote, fleet, body):
    """Malformed upstream JSON is a 502 (EngineError), never a 400 telling the client not to retry."""
    fleet.garbage = {"a": body, "b": body}
    with pytest.raises(UpstreamReplyError):
        await remote.sample(PROMPT, SPEC, 2, "g")
    with pytest.raises(UpstreamReplyError):
        await collect(remote.generate(PROMPT, SPEC, "h", stream=False))
    err = from_exception(UpstreamReplyError("x"))
    assert err.status == 502 and not err.retry
