import math

import pytest

from ponder import strategies
from ponder.engine.logprobs import contrastive_scores
from ponder.engine.protocol import SamplingSpec, TokenLogprob
from ponder.strategies import critical_tokens as ct
from ponder.strategies import reverse_verify as rv
from ponder.strategies import tournament as tm
from ponder.strategies.answers import vote
from ponder.strategies.base import Candidate, Context, Query
from ponder.tasks import ARITH
from ponder.tasks.formats import masked_quantity
from tests.fake_engine import FakeEngine


def test_registry_resolves_and_rejects():
    s, p = strategies.resolve({"name": "tournament", "n": 4, "k": 2})
    assert s.name == "tournament" and p.n == 4
    assert strategies.resolve("direct")[0].name == "direct"
    for bad in ["nope", {"name": "tournament", "bogus": 1}, {"n": 3}, 3, {"name": "tournament", "n": 0}]:
        with pytest.raises(ValueError):
            strategies.resolve(bad)
    assert set(strategies.STRATEGIES) == {"direct", "self_consistency", "tournament", "reverse_verify",
                                          "critical_tokens"}


def test_budget_counts_judges_and_nested_samplers():
    _, p = strategies.resolve({"name": "tournament", "n": 8, "k": 2, "judge_max_tokens": 100})
    assert strategies.budget(p, 50) == 8 * 50 + 7 * 2 * 100
    _, p = strategies.resolve({"name": "self_consistency", "n": 3, "sampler": {"name": "critical_tokens", "n": 2}})
    assert strategies.budget(p, 10) == 3 * (2 * 2 * 10 + 3 * 2 * 256)  # 4 trajectories, up to 3 judged games
    assert strategies.samples(p) == 6


@pytest.mark.parametrize("n,m", [(2, 1), (3, 5), (4, 2), (5, 2), (6, 2), (6, 3), (7, 3), (10, 1)])
def test_league_pairs_closed_form_matches_enumeration(n, m):
    assert tm.Params(n=n, m=m, league=True).pairs_played() == len(tm.league_pairs(n, m))


def test_every_strategy_declares_its_cost():
    for s in strategies.STRATEGIES.values():
        p = s.Params()
        assert p.budget(10) >= 10 and p.samples() >= 1
        assert s.schema()["additionalProperties"] is False


def test_vote():
    assert vote(["1", "2", "2", None]) == ("2", {"1": 1.0, "2": 2.0})
    assert vote(["3", "1", "1", "3"])[0] == "3"  # tie: first seen
    assert vote([None]) == (None, {})


def test_knockout_pairs_and_byes():
    assert tm.knockout_pairs([0, 1, 2, 3]) == ([(0, 1), (2, 3)], None)
    assert tm.knockout_pairs([0, 1, 2, 3, 4]) == ([(0, 1), (2, 3)], 4)
    assert tm.knockout_pairs([7]) == ([], 7)


def test_league_pairs_cover_each_pair_once():
    pairs = tm.league_pairs(5, 2)
    assert len(pairs) == 10 and len({frozenset(p) for p in pairs}) == 10
    assert len(tm.league_pairs(3, 5)) == 3


def test_verdicts_and_tie_breaks():
    assert tm.read_verdict(ARITH, "Check..\nWinner: Solution 2", None) == 2
    assert tm.read_verdict(ARITH, "Winner: Tie", None) == 0
    assert tm.read_verdict(ARITH, "gibberish", None) is None
    assert tm.read_verdict(ARITH, "Best: Solution 1", r"Best: (Solution \d)") == 1
    assert tm.decide(3, 5, (2.0, 0.0), max) == 3 and tm.decide(3, 5, (0.0, 2.0), min) == 5
    assert tm.decide(3, 5, (1.0, 1.0), max) == 5  # a tie goes to the tie-break


def test_failure_bound():
    assert tm.failure_bound(0.5, 0.9, 8, 8) == pytest.approx(0.5**8 + 3 * math.exp(-16 * 0.16))
    assert tm.failure_bound(0.5, 0.5, 8, 2) == 1.0
    assert tm.failure_bound(0.9, 1.0, 1, 2) == pytest.approx(0.1)
    assert tm.failure_bound(0.6, 0.8, 16, 8) < tm.failure_bound(0.6, 0.8, 16, 2)


def test_fobar_and_masked_quantity():
    scores = rv.fobar({"7": 3, "8": 1}, {"7": 0, "8": 4}, alpha=0.5)
    assert scores["8"] > scores["7"] > 0.0  # smoothed: no verification is not a veto
    lucky = rv.fobar({"7": 7, "8": 1}, {"7": 0, "8": 1}, alpha=0.5)
    assert lucky["7"] > lucky["8"]  # one lucky check does not overturn 7 votes to 1
    assert rv.fobar({"7": 3, "8": 1}, {}, 0.5)["7"] > rv.fobar({"7": 3, "8": 1}, {}, 0.5)["8"]
    assert rv.fobar({"7": 3, "8": 1}, {"7": 1, "8": 1}, alpha=1.0) == {"7": 0.75, "8": 0.25}
    q = "Tom has 12 apples. He buys 30 more. How many?"
    assert masked_quantity(q, "Tom has x apples. He buys 30 more. In the end Tom has 42 apples.", "42") == "12"
    assert masked_quantity(q, "Tom has 12 apples. In the end Tom has 42.", "42") == "30"
    assert masked_quantity(q, "unrelated", "42") is None


def lp(tok: int, top: dict[int, float]) -> TokenLogprob:
    return TokenLogprob(tok, str(tok), top[tok], tuple((t, str(t), v) for t, v in top.items()))


def test_contrastive_scores_match_the_formula():
    pos = {0: math.log(0.7), 1: math.log(0.2), 2: math.log(0.1)}
    neg = {0: math.log(0.1), 1: math.log(0.8), 2: math.log(0.1)}
    (s,) = contrastive_scores([lp(1, pos)], [lp(1, neg)], beta=1.0)
    z = {t: 2 * pos[t] - neg[t] for t in pos}
    assert s == pytest.approx(math.exp(z[1]) / sum(math.exp(v) for v in z.values()))
    (s_good,) = contrastive_scores([lp(0, pos)], [lp(0, neg)], beta=1.0)
    assert s_good > 0.9 > s  # the negative model's favourite is the critical one


def test_critical_positions():
    assert ct.critical_position([0.9, 0.2, 0.5, 0.2], 1.0) == 1
    assert ct.critical_position([0.9, 0.8], 0.5) is None
    assert ct.critical_position([], 1.0) is None
    assert ct.rollout_critical([0.6, 0.4, 0.0, 0.02, 0.0]) == 2
    assert ct.rollout_critical([0.6, 0.0, 0.3, 0.0]) == 3
    assert ct.rollout_critical([0.5, 0.5]) is None


# ---- strategies end to end against a scripted engine ----

JUDGE = "Compare two solutions"


def scripted(tok):
    """Candidates answer 7 (right) or 8 (wrong) by seed; the judge prefers the 7."""

    def reply(prompt: str, spec: SamplingSpec, model: str | None) -> str:
        if JUDGE in prompt:
            first = prompt.split("Solution 1:\n")[1].split("Solution 2:")[0]
            return "Winner: Solution 1" if "Answer: 7" in first else "Winner: Solution 2"
        if "inverse question" in prompt:
            answer = prompt.rsplit("The correct answer is ", 1)[1].split(".")[0]
            return f"Tom has x apples. He buys 4 more. In the end Tom has {answer} apples. What is x?"
        if "backward question" in prompt:
            return "Answer: 3" if "has 7 apples" in prompt else "Answer: 9"
        return "3 + 4 = 7\nAnswer: 7" if (spec.seed or 0) % 4 == 0 else "3 + 4 = 8\nAnswer: 8"

    return FakeEngine(tok, reply)


def query(ctx: Context, engine, seed=1) -> Query:
    q = "Tom has 3 apples. He buys 4 more. How many apples does Tom have now?"
    ids = ctx.render("fake", [{"role": "user", "content": q}])
    return Query("fake", ids, q, SamplingSpec(max_tokens=32, temperature=1.0, seed=seed), ARITH)


async def run(tok, name, **params):
    engine = scripted(tok)
    ctx = Context(lambda m: (engine, None), "req")
    strategy, p = strategies.resolve({"name": name, **params})
    return await strategy.run(ctx, query(ctx, engine), p), ctx, engine


@pytest.mark.parametrize("name", ["tournament", "reverse_verify"])
async def test_own_calls_drop_how_the_request_shapes_its_answer(tok, name):
    """ignore_eos, stop and logit_bias shape the candidates a user asked for, not ponder's judges or
    backward questions (a judge made to run past its verdict to max_tokens would only cost)."""
    engine = scripted(tok)
    ctx = Context(lambda m: (engine, None), "req")
    q = query(ctx, engine)
    q = q.but(spec=q.spec.replace(ignore_eos=True, stop=("Z",), logit_bias=((5, 1.0),)))
    strategy, p = strategies.resolve({"name": name, "n": 4})
    await strategy.run(ctx, q, p)
    mine = [(JUDGE in prompt or "question" in prompt.split("Tom has 3 apples")[0], spec)
            for prompt, spec, _ in engine.calls]
    assert {own for own, _ in mine} == {True, False}
    asked = (True, ("Z",), ((5, 1.0),))
    for own, spec in mine:
        assert (spec.ignore_eos, spec.stop, spec.logit_bias) == ((False, (), ()) if own else asked)


async def test_self_consistency_follows_the_majority(tok):
    res, ctx, engine = await run(tok, "self_consistency", n=8)
    assert res.info["answer"] == "8"  # seeds 1..8: two of eight give 7
    assert ctx.calls == 1 and engine.batches == [8]  # the eight candidates are one engine call
    assert [spec.seed for _, spec, _ in engine.calls] == list(range(1, 9))


async def test_tournament_finds_the_minority_right_answer(tok):
    res, ctx, engine = await run(tok, "tournament", n=8, k=2)
    assert res.info["answer"] == "7"
    judged = [g for r in res.trace["rounds"] for g in r["games"] if g["calls"]]
    assert all(len(g["calls"]) == 2 and {tuple(c["order"]) for c in g["calls"]} == {(g["a"], g["b"]),
                                                                                     (g["b"], g["a"])}
               for g in judged)
    assert len(res.trace["rounds"]) == 3 and res.info["judge_agreement"] == 1.0
    assert ctx.calls == 1 + res.info["judge_calls"]


async def test_a_tied_game_goes_to_the_answer_more_samples_share(tok):
    """A judge that always writes "Solution 1" ties every game over both orders: the tie goes to the
    better-supported answer (six of the eight samples say 8), never to a coin."""
    engine = scripted(tok)
    script = engine.reply
    engine.reply = lambda prompt, spec, model: "Winner: Solution 1" if JUDGE in prompt else script(prompt, spec, model)
    ctx = Context(lambda m: (engine, None), "req")
    for seed in range(1, 9):
        strategy, p = strategies.resolve({"name": "tournament", "n": 8, "k": 2})
        res = await strategy.run(ctx, query(ctx, engine, seed=seed * 8), p)
        assert res.info["answer"] == "8"


async def test_tournament_odd_count_and_league(tok):
    res, _, _ = await run(tok, "tournament", n=5, k=1)
    assert res.trace["rounds"][0]["bye"] == 4
    res, _, _ = await run(tok, "tournament", n=6, league=True, m=2)
    assert res.info["answer"] == "7" and len(res.trace["rounds"][0]["games"]) == 12


async def test_reverse_verify_prefers_the_verified_answer(tok):
    res, ctx, engine = await run(tok, "reverse_verify", n=8, m=2, alpha=0.5)
    assert res.info["verified"] == {"8": 0, "7": 2} and res.info["answer"] == "7"
    # one call for the candidates, one backward question and one batch of m solutions per answer
    assert sorted(engine.batches) == [1, 1, 2, 2, 8] and ctx.calls == 5
    res, _, _ = await run(tok, "reverse_verify", n=8, m=2, alpha=1.0)
    assert res.info["answer"] == "8"  # forward votes only


async def test_composition_runs_the_sampler_per_candidate(tok):
    res, ctx, _ = await run(tok, "tournament", n=4, sampler={"name": "self_consistency", "n": 3})
    assert len(res.trace["samplers"]) == 4 and ctx.calls == 4 * 1 + res.info["judge_calls"]


def contrast(tok, engine):
    """Scripted -pos/-neg scoring: both like every token, except that the positive model shuns token 2,
    which is so the critical one; returns the scored continuations."""
    scored = []

    async def score(prompt, continuation, rid, *, model=None, top_logprobs=0):
        scored.append((model, tuple(continuation)))
        other = len(tok) - 1
        return [lp(t, {t: -0.1, other: -3.0} if model == "neg" or i != 2 else {t: -3.0, other: -0.1})
                for i, t in enumerate(continuation)]

    engine.score = score
    return scored


async def critical_tokens(tok, **params):
    engine = scripted(tok)
    scored = contrast(tok, engine)
    ctx = Context(lambda m: (engine, m if m != "fake" else None), "req")
    strategy, p = strategies.resolve({"name": "critical_tokens", "positive_model": "pos", "negative_model": "neg",
                                      **params})
    return await strategy.run(ctx, query(ctx, engine), p), ctx, engine, scored


async def test_critical_tokens_masks_inside_the_engine(tok):
    res, _, engine, _ = await critical_tokens(tok, n=2, rounds=1, resample="all")
    resampled = [(prompt, spec.masked) for prompt, spec, _ in engine.calls if spec.masked]
    assert len(resampled) == 2 and res.info["resamples"] == 2
    for (prompt, masked), chain in zip(resampled, res.trace["chains"]):
        first = tok.encode(chain[0]["text"], add_special_tokens=False)
        assert chain[0]["critical"]["position"] == 2
        assert masked == ((0, first[2]),)  # banned at the first new position...
        assert prompt.endswith(tok.decode(first[:2]))  # ...after the prefix before it


async def test_critical_tokens_resamples_the_dissent_and_the_judge_decides(tok):
    # Seeds 1..8: the candidates of seeds 4 and 8 answer 7 (right), the other six 8; the judge prefers 7.
    res, ctx, engine, scored = await critical_tokens(tok, n=8, rounds=1, vote_share=1.0)
    chains = res.trace["chains"]
    assert [len(c) for c in chains] == [1, 1, 1, 2, 1, 1, 1, 2]  # only the two dissenters are resampled
    assert res.info["resamples"] == 2 and len(scored) == 2 * 4  # each dissenter and its resample, by -pos and -neg
    assert res.info["answer"] == "7" and res.info["judge_calls"] > 0
    assert all(g["a"] != g["b"] for r in res.trace["rounds"] for g in r["games"])
    voted, _, _, _ = await critical_tokens(tok, n=8, rounds=1, select="vote")
    assert voted.info["answer"] == "8"
    # A plurality of at least vote_share of the trajectories stands without a judge.
    share = voted.info["votes"]["8"] / sum(voted.info["votes"].values())
    settled, _, engine, _ = await critical_tokens(tok, n=8, rounds=1, vote_share=share)
    assert settled.info["answer"] == "8" and not any(JUDGE in prompt for prompt, _, _ in engine.calls)
    judged, _, _, _ = await critical_tokens(tok, n=8, rounds=1, vote_share=share + 0.01)
    assert judged.info["answer"] == "7"
    # Unanimous candidates: no scoring, no resample, no judge; self_consistency's cost.
    same, ctx, engine, scored = await critical_tokens(tok, n=2)
    assert same.info["answer"] == "8" and same.info["resamples"] == 0 and scored == [] and ctx.calls == 1


async def test_logprob_judge_cancels_a_position_bias(tok):
    """A judge that always writes "Solution 1" and leans 3 nats to it, but 1 nat to the right answer:
    text mode ties every pair; logprob mode picks the right one in either order."""
    engine = scripted(tok)
    engine.reply = lambda prompt, spec, model: "P: 3 + 4 = 7, says 7, ok\nWinner: Solution 1"
    one, two = (tok.encode(f"Winner: Solution {d}", add_special_tokens=False) for d in (1, 2))

    async def score(prompt, continuation, rid, *, model=None, top_logprobs=0):
        first = tok.decode(list(prompt)).split("Solution 1:\n")[1].split("Solution 2:")[0]
        margin = 3.0 + (1.0 if "Answer: 7" in first else -1.0)
        out = [lp(t, {t: -0.1}) for t in continuation[:-1]]
        return out + [lp(one[-1], {one[-1]: -0.1, two[-1]: -0.1 - margin})]

    engine.score = score
    ctx = Context(lambda m: (engine, None), "req")
    q = query(ctx, engine)
    cands = [Candidate(t, tuple(tok.encode(t, add_special_tokens=False)), None, "stop")
             for t in ("3 + 4 = 7\nAnswer: 7", "3 + 4 = 8\nAnswer: 8")]
    answers = ["7", "8"]
    for mode, expect in (("logprob", (0, 0)), ("text", None)):
        judge = tm.Judge(ctx, q, tm.Params(n=2, k=2, judge=mode), cands)
        games = [await judge.play(0, 1, answers), await judge.play(1, 0, answers)]
        if expect is None:
            assert [g["score"] for g in games] == [(1.0, 1.0), (1.0, 1.0)]  # a tie: the coin decides
        else:
            winners = tuple(tm.decide(g["a"], g["b"], g["score"], min) for g in games)
            assert winners == expect
            assert games[0]["margin"] == pytest.approx(1.0) and games[1]["margin"] == pytest.approx(-1.0)


async def test_greedy_n_samples_are_one_sample_repeated(tok):
    # vLLM refuses SamplingParams(n > 1, temperature=0); n greedy samples are all the same one.
    engine = scripted(tok)
    ctx = Context(lambda m: (engine, None), "req")
    q = query(ctx, engine)
    q = q.but(spec=q.spec.replace(temperature=0.0))
    cands, _ = await ctx.sample(q, 4)
    assert len(cands) == 4 and len({c.text for c in cands}) == 1 and engine.batches == [1]


async def test_rollouts_sample_each_prefix_in_one_call(tok):
    engine = FakeEngine(tok, lambda prompt, spec, model: "Answer: 7" if (spec.seed or 0) % 2 else "Answer: 8")
    ctx = Context(lambda m: (engine, None), "req")
    q = query(ctx, engine)
    cand = Candidate("3 + 4", tuple(tok.encode("3 + 4", add_special_tokens=False)), None, "stop")
    rates = await ct.rollout_success(ctx, q, cand, lambda text: "Answer: 7" in text, samples=4)
    assert rates == [0.5] * len(cand.token_ids)  # seeds 1..4: two odd
    assert engine.batches == [4] * len(cand.token_ids)


async def test_tournament_judges_each_order_in_one_call(tok):
    res, ctx, engine = await run(tok, "tournament", n=2, k=4, judge_same_answer=True)
    assert sorted(engine.batches) == [2, 2, 2] and res.info["judge_calls"] == 4 and ctx.calls == 3
    assert len(res.trace["rounds"][0]["games"][0]["calls"]) == 4
