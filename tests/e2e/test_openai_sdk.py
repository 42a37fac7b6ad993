"""ponder serve, driven by the official openai SDK."""

import asyncio

import httpx
import openai
import pytest

from ponder.tasks import ARITH, arith
from tests.conftest import NAME
from tests.e2e.conftest import KEY

MODEL = NAME
PROBLEMS = arith.dataset("test", 64)
Q = PROBLEMS[0].question()
VARIED = arith.dataset("hard", 1)[0].question()  # a 9-step chain: unlike Q's, its samples differ


def ask(q: str = Q) -> list[dict]:
    return [{"role": "user", "content": q}]


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL


def test_chat_plain_answers_in_format(client):
    r = client.chat.completions.create(model=MODEL, messages=ask(), temperature=0, max_tokens=200)
    assert r.choices[0].finish_reason == "stop"
    assert ARITH.extract(r.choices[0].message.content) is not None
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.ponder["strategy"] == "direct" and r.ponder["engine_calls"] == 1


async def test_async_client_concurrent(aclient):
    rs = await asyncio.gather(*(aclient.chat.completions.create(model=MODEL, messages=ask(p.question()),
                                                                temperature=0, max_tokens=200)
                                for p in PROBLEMS[:8]))
    assert all(ARITH.extract(r.choices[0].message.content) for r in rs)


def test_ignore_eos_generates_to_max_tokens(client):
    """vLLM's extension, as throughput benchmarks use it: the greedy answer ends near 40 tokens."""
    kw = dict(model=MODEL, messages=ask(), temperature=0, max_tokens=120)
    assert client.chat.completions.create(**kw).usage.completion_tokens < 120
    r = client.chat.completions.create(**kw, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 120


def test_streaming_direct_matches_non_streaming(client):
    kw = dict(model=MODEL, messages=ask(), temperature=0, max_tokens=200)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("strategy", [
    {"name": "self_consistency", "n": 4},
    {"name": "tournament", "n": 4, "k": 2},
    {"name": "reverse_verify", "n": 4, "m": 2},
    {"name": "critical_tokens", "n": 2, "rounds": 1},
    {"name": "tournament", "n": 4, "sampler": {"name": "critical_tokens", "n": 1, "resample": "all", "select": "last"}},
])
def test_every_strategy_streams_the_answer_it_returns(client, strategy):
    kw = dict(model=MODEL, messages=ask(), temperature=0.8, seed=11, max_tokens=200,
              extra_body={"strategy": strategy, "return_trace": True})
    r = client.chat.completions.create(**kw)
    text = r.choices[0].message.content
    assert ARITH.extract(text) is not None
    # Candidates are one engine call (n samples), or one run each of a sampler strategy.
    assert r.ponder["strategy"] == strategy["name"]
    assert r.ponder["engine_calls"] >= (strategy["n"] if "sampler" in strategy else 1)
    assert r.ponder["trace"][0]
    reasoning = r.usage.completion_tokens_details.reasoning_tokens
    assert 0 < reasoning < r.usage.completion_tokens  # the returned answer is the rest
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = chunks[-2]  # the chunk with finish_reason carries the ponder field
    assert final.choices[0].finish_reason and final.ponder["strategy"] == strategy["name"]
    assert ARITH.extract(streamed) == final.ponder["info"][0]["answer"]  # the chosen answer
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= len(client_tokenize(streamed))


def client_tokenize(text: str) -> list[int]:
    from transformers import AutoTokenizer

    from tests.conftest import MODEL as PATH

    return AutoTokenizer.from_pretrained(PATH).encode(text, add_special_tokens=False)


def test_strategy_by_path(server):
    with openai.OpenAI(base_url=server.url("/v1/strategies/self_consistency"), api_key=KEY, max_retries=0) as c:
        r = c.chat.completions.create(model=MODEL, messages=ask(), temperature=0.7, seed=1, max_tokens=200)
        assert r.ponder["strategy"] == "self_consistency" and r.ponder["engine_calls"] == 1  # n=8 in one call
        t = c.completions.create(model=MODEL, prompt="Mia has 12 coins.", max_tokens=8, seed=1)
        assert t.ponder["strategy"] == "self_consistency"


def test_n_choices_and_seed_reproducibility(client):
    kw = dict(model=MODEL, messages=ask(VARIED), temperature=1.0, max_tokens=200, n=3, seed=1234)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert len(texts) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]
    c = client.chat.completions.create(**{**kw, "seed": 99})
    assert [x.message.content for x in c.choices] != texts


def test_logprobs_chat_and_completions(client):
    r = client.chat.completions.create(model=MODEL, messages=ask(), temperature=0, max_tokens=20, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-4 for t in content)  # greedy picks the top token
    t = client.completions.create(model=MODEL, prompt="Tom has", max_tokens=5, logprobs=2, temperature=0)
    lp = t.choices[0].logprobs
    assert 1 <= len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) <= 5
    # like vLLM's server, the logprobs list the stop token (<|end|>) that the text leaves out
    assert "".join(lp.tokens).removesuffix("<|end|>") == t.choices[0].text


def test_completions_prompt_forms_and_echo(client):
    r = client.completions.create(model=MODEL, prompt=["Tom has", "Mia has"], max_tokens=4, temperature=0, echo=True)
    assert [c.text[:7] for c in r.choices] == ["Tom has", "Mia has"]
    ids = client_tokenize("Tom has")
    r2 = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert r2.choices[0].text == r.choices[0].text[7:]


def test_stop_and_logit_bias(client):
    r = client.chat.completions.create(model=MODEL, messages=ask(), temperature=0, max_tokens=200, stop=["\n"])
    assert "\n" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    first = client_tokenize(r.choices[0].message.content)[0]
    b = client.chat.completions.create(model=MODEL, messages=ask(), temperature=0, max_tokens=3,
                                       logit_bias={str(first): -100})
    assert client_tokenize(b.choices[0].message.content)[:1] != [first]


@pytest.mark.parametrize("kw,exc", [
    (dict(extra_body={"strategy": "nope"}), openai.BadRequestError),
    (dict(extra_body={"strategy": {"name": "tournament", "q": 1}}), openai.BadRequestError),
    (dict(n=64), openai.BadRequestError),
    (dict(max_tokens=5000), openai.BadRequestError),
    (dict(temperature=9), openai.BadRequestError),
    (dict(messages=ask("word " * 2000)), openai.BadRequestError),
    (dict(model="gpt-nope"), openai.NotFoundError),
    (dict(extra_body={"strategy": {"name": "critical_tokens", "positive_model": "missing"}}), openai.NotFoundError),
])
def test_errors_arrive_as_typed_exceptions(client, kw, exc):
    with pytest.raises(exc) as e:
        client.chat.completions.create(**{"model": MODEL, "messages": ask(), "max_tokens": 64, **kw})
    assert e.value.response.headers["x-should-retry"] == "false"
    assert e.value.body["message"] and "type" in e.value.body


def test_wrong_key_is_401(server):
    with openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    assert httpx.get(server.url("/health")).status_code == 200


def unfinished(server) -> float:
    return server.metric("ponder_engine_unfinished_requests")


def disconnects(server) -> float:
    try:
        return server.metric('ponder_requests_total{endpoint="chat",status="disconnect",strategy="tournament"}')
    except KeyError:  # none yet
        return 0.0


async def wait_idle(server, timeout: float = 20) -> None:
    for _ in range(int(timeout * 10)):
        if unfinished(server) == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{unfinished(server)} requests still running in the engine")


async def until_busy(server, post: asyncio.Future | None = None) -> float:
    """Poll /metrics without blocking the loop until the engine has work (or `post` is done)."""
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(3000):
            text = (await http.get(server.url("/metrics"))).text
            running = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("ponder_engine_unfinished_requests"))
            if running > 0 or (post is not None and post.done()):
                return running
            await asyncio.sleep(0.01)
    return 0.0


async def test_disconnect_mid_strategy_aborts_engine_calls(server):
    # At temperature 2 the judges differ and write long replies, so each of the five rounds takes seconds.
    body = {"model": MODEL, "messages": ask(), "max_tokens": 256, "temperature": 2.0, "seed": 7,
            "strategy": {"name": "tournament", "n": 32, "k": 4, "judge_same_answer": True,
                         "judge_temperature": 2.0}}
    headers = {"Authorization": f"Bearer {KEY}"}
    left = disconnects(server)
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", server.url("/v1/chat/completions"), json={**body, "stream": True},
                               headers=headers) as r:
            # Held in a name: leaving an unnamed `async for` finalizes the iterator, which closes the
            # stream at the next await, before the judges are seen running.
            lines = r.aiter_lines()
            async for line in lines:
                if line.startswith(": ponder") and "round" in line:
                    break  # candidates done: the judges are being added to the engine
            assert await until_busy(server) > 0
        # the client leaves mid-strategy: the server counts a disconnect and aborts every engine call
    await wait_idle(server)
    assert disconnects(server) == left + 1
    async with httpx.AsyncClient(timeout=60) as http:  # non-streaming: the client leaves mid-strategy
        post = asyncio.ensure_future(http.post(server.url("/v1/chat/completions"), json=body, headers=headers))
        running = await until_busy(server, post)
        assert not post.done() and running > 0
        post.cancel()
    await wait_idle(server)
    assert disconnects(server) == left + 2


async def test_64_concurrent_seeded_requests_keep_the_engine_up(server, aclient):
    """The load that killed vLLM's CPU build with chunked prefill (see server/engine/vllm_engine.py)."""
    system = {"role": "system", "content": "You are a careful assistant. Solve the problem step by step, one "
                                           "equation per line, and end with the line Answer: N."}
    rs = await asyncio.gather(*(
        aclient.chat.completions.create(model=MODEL, messages=[system, *ask(p.question())], max_tokens=64,
                                        temperature=1.0, seed=1000 + i)
        for i, p in enumerate(PROBLEMS)))
    assert all(r.choices[0].message.content for r in rs)
    assert min(r.usage.prompt_tokens for r in rs) >= 80
    assert sum(r.usage.prompt_tokens for r in rs) > 4096  # more than one scheduler step's budget
    assert httpx.get(server.url("/health")).status_code == 200


def test_reasoning_effort_runs_the_mapped_strategy(client):
    r = client.chat.completions.create(model=MODEL, messages=ask(), temperature=0.7, max_tokens=128, seed=1,
                                       reasoning_effort="low")
    assert r.ponder["strategy"] == "self_consistency" and r.ponder["params"]["n"] == 4
    assert r.ponder["engine_calls"] == 1 and r.choices[0].message.content  # n=4 in one call
    r = client.chat.completions.create(model=MODEL, messages=ask(), max_tokens=64, reasoning_effort="high",
                                       extra_body={"strategy": "direct"})
    assert r.ponder["strategy"] == "direct"  # an explicit strategy wins
