"""ponder eval's p_gen / p_comp measurement against a live OpenAI-compatible server on a scripted engine."""

import asyncio

import pytest
import uvicorn

from ponder.server.app import create_app
from ponder.server.serving import Limits, OpenAIServing
from ponder.tasks import arith, stats
from ponder.tasks import eval as ev
from tests.fake_engine import FakeEngine

PROBLEMS = {p.question(): p for p in arith.dataset("test", 4)}


def model(prompt: str, spec, name) -> str:
    """Even seeds solve right, odd seeds slip; the judge always says Solution 1 (a position bias)."""
    if "Compare two solutions" in prompt:
        return "A: 1 + 1 = 2, says 2, ok\nWinner: Solution 1"
    for q, p in PROBLEMS.items():
        if q in prompt:
            return p.forward_solution() if spec.seed % 2 == 0 else "1 + 1 = 3\nAnswer: 3"
    return "?"


async def test_pairs_measures_p_gen_and_a_position_biased_p_comp(tok):
    app = create_app(OpenAIServing([FakeEngine(tok, model, name="m", max_model_len=1024)], Limits()))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", ws="none"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"
        rec = await ev.pairs(ev.EvalConfig(base_url=url, limit=4, format="pairs", n=4, temperature=0.7,
                                           max_tokens=64))
    finally:
        server.should_exit = True
        await task
    assert rec["p_gen"] == 0.5 and rec["pass@4"] == 1.0 and rec["pairs"] == 4
    assert rec["p_comp_text_by_order"] == [1.0, 0.0] and rec["p_comp_text"] == 0.5
    assert "p_comp_logprob" in rec and "failure bound" in ev.summary(rec)


def test_diff_interval_is_newcombes():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80 -> 0.2000 [0.0524, 0.3339].
    a = {"accuracy": 56 / 70, "ci95": stats.wilson(56, 70)}
    b = {"accuracy": 48 / 80, "ci95": stats.wilson(48, 80)}
    lo, hi = stats.diff_interval(a, b)
    assert round(lo, 3) == 0.052 and round(hi, 3) == 0.334


def paired(both: int, only_a: int, only_b: int, neither: int) -> tuple[dict, dict]:
    xa = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    xb = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return ({"accuracy": sum(xa) / len(xa), "ci95": stats.wilson(sum(xa), len(xa)), "correct": xa},
            {"accuracy": sum(xb) / len(xb), "ci95": stats.wilson(sum(xb), len(xb)), "correct": xb})


def unpaired(rec: dict) -> dict:
    return {"accuracy": rec["accuracy"], "ci95": rec["ci95"]}


def test_paired_diff_interval_narrows_with_correlation():
    # The same problems solved by both runs, a few by one only: the paired interval (Newcombe 1998,
    # method 10 for paired data) is narrower than the independent one and still holds the difference.
    a, b = paired(470, 14, 4, 12)
    lo, hi = stats.diff_interval(a, b)
    ilo, ihi = stats.diff_interval(unpaired(a), unpaired(b))
    assert ilo < lo < a["accuracy"] - b["accuracy"] < hi < ihi
    assert lo > 0 > ilo  # significant only when paired
    # No correlation beyond what n/2 shrinks away: the paired interval is the independent one.
    a, b = paired(25, 25, 25, 25)
    assert stats.diff_interval(a, b) == pytest.approx(stats.diff_interval(unpaired(a), unpaired(b)))


@pytest.mark.parametrize("data", ["arith", "facts"])
def test_skip_gives_a_disjoint_slice(data):
    first = ev.items(ev.EvalConfig(base_url="x", data=data, limit=20))
    held = ev.items(ev.EvalConfig(base_url="x", data=data, limit=10, skip=20))
    both = ev.items(ev.EvalConfig(base_url="x", data=data, limit=30))
    assert both == first + held and not {i.prompt for i in first} & {i.prompt for i in held}
