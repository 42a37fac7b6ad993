"""Every strategy on a model that follows none of ponder's formats, with the default `math` task: a scripted
engine that answers like a foreign chat model (prose, "The answer is", \\boxed{}), judges in prose without
ever writing a verdict in the task's format, and leans to the right solution only in its log-probabilities.
The verdict is still read, every answer extracted, and what was read how is reported."""

import pytest

from ponder import strategies
from ponder.engine.protocol import SamplingSpec, TokenLogprob
from ponder.strategies.base import Context, Query
from ponder.tasks import CHOICE, FREE, MATH
from ponder.tasks.answers import extract_number, last_boxed, normalize
from tests.fake_engine import FakeEngine

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def reply(prompt: str, spec: SamplingSpec, model: str | None) -> str:
    if "## Solution 1" in prompt:  # the math task's judge prompt: prose, no <winner> tag
        return "Both solutions look reasonable to me. The first one adds, the second one also adds."
    if "If we know the answer to the above question is" in prompt:  # FOBAR: 3 + x = 7 gives 4, 3 + x = 8 gives 5
        return "We subtract: x = 4." if "is 7," in prompt else "So x is 5."
    seed = spec.seed or 0
    if seed % 3 == 0:
        return "Tom starts with 3 apples and gets 4 more, so $3 + 4 = \\boxed{7}$."
    if seed % 3 == 1:
        return "He has 3 + 4 apples. The answer is: 7 apples."
    return "3 plus 4 makes 8, I think. The final answer is 8."


def engine(tok) -> FakeEngine:
    eng = FakeEngine(tok, reply)

    one, two = (tok.encode(f"<winner>Solution {d}", add_special_tokens=False) for d in (1, 2))
    d = next(i for i, (p, q) in enumerate(zip(one, two)) if p != q)

    async def score(prompt, continuation, rid, *, model=None, top_logprobs=0):
        """At the verdict, the judge leans 2 nats to the solution that says 7, whichever position it is in."""
        first = tok.decode(list(prompt)).split("## Solution 1")[1].split("## Solution 2")[0]
        lp = {one[d]: -1.0, two[d]: -3.0} if "7" in first else {one[d]: -3.0, two[d]: -1.0}
        return [TokenLogprob(t, tok.decode([t]), lp.get(t, -5.0), tuple((k, "", v) for k, v in lp.items()))
                for t in continuation]

    eng.score = score
    return eng


async def run(tok, spec: dict, task=MATH, seed: int = 1):
    eng = engine(tok)
    ctx = Context(lambda m: (eng, None), "req")
    ids = ctx.render("fake", [{"role": "user", "content": QUESTION}])
    strategy, params = strategies.resolve(spec)
    for p in strategies.tree(params):
        p.check_task(task)
    result = await strategy.run(ctx, Query("fake", ids, QUESTION, SamplingSpec(max_tokens=64, seed=seed), task),
                                params)
    return result, ctx


def test_math_extraction_follows_the_harnesses():
    assert extract_number("so \\boxed{\\frac{1}{2}} and later \\boxed{1,000.}") == "1000"
    assert extract_number("The final answer is $42.00. Then 17 more words 5") == "42"
    assert extract_number("#### 1,234\nbut 9") == "1234"
    assert extract_number("Answer: -3.50") == "-3.5"
    assert extract_number("it is 7 or maybe 9.") == "9"
    assert extract_number("no numbers") is None
    assert last_boxed("x \\boxed{a{b}c} y") == "a{b}c"
    assert last_boxed("\\boxed{7} then cut off in \\boxed{1") is None  # the last box is unclosed
    assert normalize("$1,000.") == normalize("1000.0") == normalize(" 1000 ") == "1000"
    assert normalize("x = 5") == "5"
    assert CHOICE.extract("Thinking... the answer is (C).") == "C" and CHOICE.extract("Answer: B") == "B"
    assert FREE.extract("The answer is 7") is None and not FREE.has_answers


def test_a_verdict_is_read_from_the_task_format_only_when_it_is_unambiguous():
    assert MATH.read_verdict("<compare>...</compare><winner>Solution 2</winner>") == 2
    assert MATH.read_verdict("<winner>Tie</winner>") == 0
    # a weak judge that copies the prompt's list of verdicts wrote none of them
    assert MATH.read_verdict("<winner>Solution 1</winner>, <winner>Solution 2</winner> or <winner>Tie</winner>") \
        is None
    head, one, two = MATH.verdict_slots("I compared them. <winner>Solution 1</winner>")
    assert head == "I compared them. " and (one, two) == ("<winner>Solution 1", "<winner>Solution 2")


async def test_self_consistency_extracts_every_prose_answer(tok):
    result, ctx = await run(tok, {"name": "self_consistency", "n": 6})
    assert result.info["answer"] == "7" and result.info["unextracted"] == 0
    assert ctx.counts["answers", "extracted"] == 6 and ctx.counts["answers", "unextracted"] == 0


async def test_the_tournament_reads_every_prose_verdict_from_log_probs(tok):
    result, ctx = await run(tok, {"name": "tournament", "n": 6, "k": 2}, seed=2)
    calls = [c for r in result.trace["rounds"] for g in r["games"] for c in g["calls"]]
    assert calls and all(c["read"] == "constrained" and c["margin"] is not None for c in calls)
    assert result.info["verdicts"] == {"written": 0, "constrained": len(calls), "unread": 0}
    assert ctx.counts["verdicts", "constrained"] == len(calls)
    assert result.info["answer"] == "7" and result.info["judge_agreement"] == 1.0  # never a coin toss


async def test_reverse_verify_asks_fobar_backward_questions(tok):
    result, _ = await run(tok, {"name": "reverse_verify", "n": 6, "m": 2, "alpha": 0.0})
    backward = {b["answer"]: b for b in result.trace["backward"]}
    assert backward["7"]["question"].startswith("Tom has 3 apples and buys x more.")
    assert backward["7"]["masked"] == "4"
    assert result.info["verified"] == {"7": 2, "8": 0} and result.info["answer"] == "7"
    assert result.info["backward"] == "mask"


async def test_the_free_task_judges_whole_replies_and_refuses_votes(tok):
    result, _ = await run(tok, {"name": "tournament", "n": 4}, task=FREE)
    assert result.info["answer"] is None and result.info["judge_calls"] == 3 * 2  # nothing skipped as "same"
    for spec in ({"name": "self_consistency"}, {"name": "reverse_verify"}):
        _, params = strategies.resolve(spec)
        with pytest.raises(ValueError, match="no extractable answers"):
            params.check_task(FREE)
    _, params = strategies.resolve({"name": "reverse_verify"})
    with pytest.raises(ValueError, match="no backward questions"):
        params.check_task(CHOICE)


async def test_log_prob_verdicts_are_averaged_over_both_orders(tok):
    """A judge that always prefers the first position (by 3 nats) and the right answer by only 1: each
    call read alone says "Solution 1", a tie for the coin; averaged over both orders, the 7 wins."""
    eng = engine(tok)
    one, two = (tok.encode(f"<winner>Solution {d}", add_special_tokens=False) for d in (1, 2))
    d = next(i for i, (p, q) in enumerate(zip(one, two)) if p != q)

    async def biased(prompt, continuation, rid, *, model=None, top_logprobs=0):
        first = tok.decode(list(prompt)).split("## Solution 1")[1].split("## Solution 2")[0]
        lp = {one[d]: -1.0, two[d]: -1.0 - (3.0 + (1.0 if "7" in first else -1.0))}
        return [TokenLogprob(t, "", lp.get(t, -9.0), tuple((k, "", v) for k, v in lp.items())) for t in continuation]

    eng.score = biased
    ctx = Context(lambda m: (eng, None), "req")
    ids = ctx.render("fake", [{"role": "user", "content": QUESTION}])
    strategy, params = strategies.resolve({"name": "tournament", "n": 6, "k": 2})
    result = await strategy.run(ctx, Query("fake", ids, QUESTION, SamplingSpec(max_tokens=64, seed=2), MATH), params)
    games = [g for r in result.trace["rounds"] for g in r["games"] if g["calls"]]
    assert games and all(g["agreement"] == (1.0, 1.0) for g in games)  # every call alone: position 1
    assert all(abs(g["margin"]) == pytest.approx(1.0) for g in games)
    assert result.info["answer"] == "7"
