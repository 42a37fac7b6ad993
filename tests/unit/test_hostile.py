"""Hostile strategy bodies (issue 14's table): each a 400 naming the parameter, before any engine call,
with /health answering quickly during and after."""

import asyncio
import dataclasses
import time

import httpx
import pytest

from ponder import strategies
from ponder.server.app import create_app
from ponder.server.serving import Limits, OpenAIServing
from tests.fake_engine import FakeEngine

MSG = [{"role": "user", "content": "Tom has 3 apples. He buys 4 more. How many?"}]


def body(strategy, **extra):
    return {"model": "fake", "messages": MSG, "max_tokens": 26, "strategy": strategy, **extra}


def bad_values(f: dataclasses.Field) -> list:
    """A wrong type and, where the field declares limits, an out-of-range value."""
    kind = str(f.type)
    out: list = [{"x": 1}] if "Sampler" in kind else [[1]] if "str" in kind else ["x"]
    meta = f.metadata
    if "ge" in meta:
        out.append(meta["ge"] - 1)
    if "le" in meta:
        out.append(meta["le"] + 1)
    if "choices" in meta:
        out.append("no-such-choice")
    if "template" in meta:
        out += ["{zzz}", "{0}", "{" + meta["template"][0] + ":>1000000}"]
    if meta.get("pattern"):
        out += ["(", "[z-a]", "a" * 1000]
    return out


PARAM_CASES = [(s.name, f.name, v) for s in strategies.STRATEGIES.values()
               for f in dataclasses.fields(s.Params) for v in bad_values(f)]

ROWS = [  # issue 14's rows 2, 3, 4, 8, 9: (strategy, the param the 400 names)
    ({"name": "tournament", "n": 1, "sampler": {"name": "self_consistency", "n": 2000}}, "n"),
    ({"name": "tournament", "n": 1, "sampler": {"name": "tournament", "n": 1_000_000, "league": True}}, "n"),
    ({"name": "tournament", "judge_temperature": -1}, "strategy.judge_temperature"),
    ({"name": "tournament", "judge_temperature": "NaN"}, "strategy.judge_temperature"),
    ({"name": "tournament", "judge_temperature": 1e9}, "strategy.judge_temperature"),
    ({"name": "tournament", "judge_pattern": "("}, "strategy.judge_pattern"),
    ({"name": "tournament", "judge_prompt": "{question}{solution_1}{solution_2}{x}"}, "strategy.judge_prompt"),
    ({"name": "tournament", "judge_prompt": "{0}{question}{solution_1}{solution_2}"}, "strategy.judge_prompt"),
    ({"name": "tournament", "judge_prompt": "{question}{solution_1}{solution_2}{question:>1000000}"},
     "strategy.judge_prompt"),
    ({"name": "self_consistency", "answer_pattern": "("}, "strategy.answer_pattern"),
    ({"name": "self_consistency", "answer_pattern": "[z-a]"}, "strategy.answer_pattern"),
    ({"name": "reverse_verify", "backward_question_prompt": "{zzz}"}, "strategy.backward_question_prompt"),
    ({"name": "critical_tokens", "top_logprobs": 1_000_000}, "strategy.top_logprobs"),
    ({"name": "critical_tokens", "beta": "NaN"}, "strategy.beta"),
]


def deep(levels: int) -> dict:
    spec: dict = {"name": "self_consistency", "n": 1}
    for _ in range(levels):
        spec = {"name": "self_consistency", "n": 1, "sampler": spec}
    return spec


@pytest.fixture
def engine(tok):
    return FakeEngine(tok, lambda prompt, spec, model: "a" * 40, max_model_len=512)


@pytest.fixture
async def client(engine):
    app = create_app(OpenAIServing([engine], Limits(max_n=64, max_request_tokens=100_000)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def rejected(client, engine, payload, param) -> None:
    r = await client.post("/v1/chat/completions", json=payload)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    assert not engine.calls
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("name,field,value", PARAM_CASES)
async def test_every_bad_parameter_is_a_400_naming_it(client, engine, name, field, value):
    await rejected(client, engine, body({"name": name, field: value}), f"strategy.{field}")


@pytest.mark.parametrize("strategy,param", ROWS)
async def test_issue_rows_are_400s_before_any_engine_call(client, engine, strategy, param):
    await rejected(client, engine, body(strategy), param)


async def test_sampler_chains_nest_at_most_four_deep(client, engine):
    await rejected(client, engine, body(deep(500)), "strategy" + ".sampler" * strategies.MAX_DEPTH)
    r = await client.post("/v1/chat/completions", json=body(deep(strategies.MAX_DEPTH - 1)))
    assert r.status_code == 200, r.text


async def test_catastrophic_pattern_on_model_output_never_blocks_the_loop(client, engine):
    """Row 1: "(a|aa)+b" against 40 a's backtracks for minutes; the match runs off-loop under a time limit."""
    post = asyncio.ensure_future(client.post("/v1/chat/completions", json=body(
        {"name": "self_consistency", "n": 1, "answer_pattern": "(a|aa)+b"}, temperature=0)))
    worst = 0.0
    while not post.done():
        t0 = time.perf_counter()
        assert (await client.get("/health")).status_code == 200
        worst = max(worst, time.perf_counter() - t0)
        await asyncio.sleep(0.01)
    r = post.result()
    assert r.status_code == 400 and r.json()["error"]["param"] == "strategy.answer_pattern", r.text
    assert worst < 2.0  # generous: the point is that /health keeps answering while the pattern runs


async def test_path_strategy_takes_its_params_from_the_body(client):
    r = await client.post("/v1/strategies/self_consistency/chat/completions",
                          json={"model": "fake", "messages": MSG, "max_tokens": 5, "strategy": {"n": 2}})
    assert r.status_code == 200 and r.json()["ponder"]["params"]["n"] == 2
