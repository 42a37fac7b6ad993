"""The HTTP edge: auth before routing, errors that keep the connection, body limits, invalid
Unicode, reasoning_effort. Over httpx.ASGITransport, and over a real uvicorn socket where the
connection itself is the point."""

import asyncio
import logging
import re

import httpx
import pytest
import uvicorn

from ponder.server.app import create_app
from ponder.server.serving import Limits, OpenAIServing
from tests.fake_engine import FakeEngine

KEY = "sk-edge"
H = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "Tom has 3 apples. He buys 4 more. How many?"}]
CHAT = {"model": "fake", "messages": MSG, "max_tokens": 8}


def reply(prompt, spec, model):
    return "Winner: Solution 1" if "Solution" in prompt else "3 + 4 = 7\nAnswer: 7"


@pytest.fixture
def serving(tok):
    return OpenAIServing([FakeEngine(tok, reply, max_model_len=256)], Limits())


def client(serving, headers=H, **app_kw) -> httpx.AsyncClient:
    app = create_app(serving, api_key=KEY, **app_kw)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers)


def assert_error(r: httpx.Response, status: int, type: str, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == type and (code is None or err["code"] == code)
    return err


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/strategies/tournament/completions"),
    ("GET", "/v1/nope"), ("GET", "/v1"), ("DELETE", "/v1/models"), ("GET", "/v1/chat/completions"),
    ("GET", "/v1/models/"), ("PATCH", "/v1/does/not/exist"),
])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic " + KEY, "Bearer ", KEY])
async def test_every_v1_path_and_method_is_401_before_routing(serving, method, path, auth):
    async with client(serving, headers={"Authorization": auth} if auth else {}) as c:
        r = await c.request(method, path, json=CHAT)
    assert_error(r, 401, "authentication_error", "invalid_api_key")
    assert "location" not in r.headers


@pytest.mark.parametrize("path", ["/health", "/metrics", "/docs", "/openapi.json"])
async def test_open_paths_need_no_key(serving, path):
    async with client(serving, headers={}) as c:
        assert (await c.get(path)).status_code == 200


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/nope", 404), ("GET", "/v1/models/", 404), ("POST", "/v1/chat/completions/", 404),
    ("GET", "/nope", 404), ("GET", "/health/", 404), ("DELETE", "/v1/models", 405),
    ("GET", "/v1/chat/completions", 405),
])
@pytest.mark.parametrize("api_key", [KEY, None])
async def test_unknown_paths_and_methods_are_json_errors_never_redirects(serving, method, path, status, api_key):
    app = create_app(serving, api_key=api_key)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=H) as c:
        r = await c.request(method, path)
    err = assert_error(r, status, "invalid_request_error")
    assert path in err["message"]


async def test_bearer_scheme_is_case_insensitive(serving):
    async with client(serving, headers={"Authorization": f"bearer {KEY}"}) as c:
        assert (await c.get("/v1/models")).status_code == 200


async def test_an_unexpected_error_is_a_500_with_an_id_in_the_log(serving, caplog):
    def broken():
        raise ZeroDivisionError("boom")

    serving.models = broken
    async with client(serving) as c:
        r = await c.get("/v1/models")
        err = assert_error(r, 500, "server_error")
        assert (await c.get("/v1/strategies")).status_code == 200  # the client carries on
    ref = re.search(r"internal error ([0-9a-f]{12})", err["message"]).group(1)
    assert "boom" not in err["message"] and r.headers["x-should-retry"] == "false"
    logged = [rec for rec in caplog.records if ref in rec.getMessage()]
    assert logged and logged[0].levelno == logging.ERROR and logged[0].exc_info[0] is ZeroDivisionError


async def test_a_value_error_inside_the_server_is_a_500_not_a_400(serving):
    """Only the request's own faults (parameters, strategy, the engine refusing the input) are 400s."""
    def broken():
        raise ValueError("a bug, not the request")

    serving.models = broken
    async with client(serving) as c:
        assert_error(await c.get("/v1/models"), 500, "server_error")


@pytest.mark.parametrize("body,content_type", [
    (b"{not json", "application/json"),
    (b'{"model": "fake", "messages": [', "application/json"),
    (b'{"model": "\xff"}', "application/json"),  # not UTF-8: FastAPI's "error parsing the body"
    (b"[1, 2]", "application/json"),
    (b"model=fake", "text/plain"),
])
async def test_bodies_that_do_not_parse_are_400_invalid_request(serving, body, content_type):
    async with client(serving) as c:
        r = await c.post("/v1/chat/completions", content=body, headers={"content-type": content_type})
    assert_error(r, 400, "invalid_request_error")


@pytest.mark.parametrize("body,param", [
    (r'{"model":"fake","messages":[{"role":"user","content":"\ud800x"}]}', "messages.0.content"),
    (r'{"model":"fake","messages":[{"role":"user","content":[{"type":"text","text":"a\udfff"}]}]}',
     "messages.0.content"),
    (r'{"model":"fake","messages":[{"role":"user","content":"hi","name":"\ud800"}]}', "messages.0.name"),
    (r'{"model":"fake","messages":[{"role":"user","content":"hi"}],"stop":["ok","\ud800"]}', "stop"),
    (r'{"model":"fake","messages":[{"role":"user","content":"hi"}],"strategy":{"name":"\ud800"}}', "strategy"),
    (r'{"model":"\ud800","messages":[{"role":"user","content":"hi"}]}', "model"),
])
async def test_lone_surrogates_are_400_naming_the_parameter(serving, body, param):
    async with client(serving) as c:
        r = await c.post("/v1/chat/completions", content=body.encode(), headers={"content-type": "application/json"})
    assert assert_error(r, 400, "invalid_request_error")["param"] == param
    assert not serving.engines[0].calls


@pytest.mark.parametrize("prompt", [r'"\ud800"', r'["fine", "\udc00"]'])
async def test_lone_surrogate_in_a_completion_prompt_is_400(serving, prompt):
    body = f'{{"model":"fake","prompt":{prompt}}}'.encode()
    async with client(serving) as c:
        r = await c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert assert_error(r, 400, "invalid_request_error")["param"] == "prompt"


async def test_logit_bias_keys_must_be_ascii_digits(serving):
    async with client(serving) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "logit_bias": {"²": 1}})
    assert assert_error(r, 400, "invalid_request_error")["param"] == "logit_bias"


async def test_body_over_the_limit_by_content_length_is_413(serving):
    async with client(serving, max_body_bytes=1000) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        r = await c.post("/v1/chat/completions", json={**CHAT, "user": "x" * 1000})
    assert_error(r, 413, "invalid_request_error", "request_too_large")
    assert not serving.engines[0].calls[1:]


async def test_streamed_body_over_the_limit_is_413_without_reading_it_all(serving):
    sent = []

    async def chunks():  # no Content-Length: chunked
        for i in range(100):
            sent.append(i)
            yield b" " * 1024

    async with client(serving, max_body_bytes=4096) as c:
        r = await c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "invalid_request_error", "request_too_large")
        assert len(sent) <= 6  # stopped reading just past 4 KiB
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high", None])
async def test_reasoning_effort_runs_the_servers_table(tok, effort):
    efforts = {"minimal": "direct", "low": {"name": "self_consistency", "n": 2},
               "medium": {"name": "self_consistency", "n": 3}, "high": {"name": "tournament", "n": 2}}
    serving = OpenAIServing([FakeEngine(tok, reply, max_model_len=256)], Limits(efforts=efforts))
    async with client(serving) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": effort})
        explicit = await c.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": effort,
                                                              "strategy": "direct"})
    assert r.status_code == 200, r.text
    want = efforts[effort] if effort else "direct"
    assert r.json()["ponder"]["strategy"] == (want if isinstance(want, str) else want["name"])
    assert explicit.json()["ponder"]["strategy"] == "direct"  # an explicit strategy wins


@pytest.mark.parametrize("effort", ["extreme", "HIGH", "", 3])
async def test_unknown_reasoning_effort_is_400(serving, effort):
    async with client(serving) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "reasoning_effort": effort})
    assert assert_error(r, 400, "invalid_request_error")["param"] == "reasoning_effort"


# ---- a real socket: does the keep-alive connection survive an error? ----

async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    return status, await reader.readexactly(length)


async def test_errors_keep_the_tcp_connection_open(serving):
    serving.models = lambda: 1 / 0
    app = create_app(serving, api_key=KEY)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", ws="none"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        auth = f"Authorization: Bearer {KEY}\r\n".encode()
        requests = [
            (b"GET /v1/models HTTP/1.1\r\nHost: t\r\n" + auth + b"\r\n", 500),
            (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             b"Content-Length: 9\r\n" + auth + b"\r\n{not json", 400),
            (b"GET /v1/nope HTTP/1.1\r\nHost: t\r\n\r\n", 401),
            (b"GET /v1/strategies HTTP/1.1\r\nHost: t\r\n" + auth + b"\r\n", 200),
        ]
        for request, status in requests:  # one connection throughout
            assert (await exchange(reader, writer, request))[0] == status
    finally:
        writer.close()
        server.should_exit = True
        await task
