"""VllmEngine against real vLLM on the default model."""

import asyncio

import pytest

from ponder.engine.protocol import SamplingSpec, collect
from ponder.tasks import ARITH, arith

Q = arith.dataset("test", 1)[0].question()
VARIED = arith.dataset("hard", 1)[0].question()  # a 9-step chain: unlike Q's, its samples differ
GREEDY = SamplingSpec(max_tokens=64, temperature=0.0)


async def gen(engine, ids, spec, rid, **kw):
    return await collect(engine.generate(ids, spec, rid, **kw))


async def test_streamed_deltas_join_to_the_final_output(engine, render):
    ids = render(Q)
    whole = await gen(engine, ids, GREEDY, "whole", stream=False)
    parts = [o async for o in engine.generate(ids, GREEDY, "parts")]
    assert len(parts) > 1 and parts[-1].finish_reason == whole.finish_reason == "stop"
    assert "".join(p.text for p in parts) == whole.text
    assert sum((p.token_ids for p in parts), ()) == whole.token_ids
    assert whole.prompt_tokens == len(ids) and whole.completion_tokens == len(whole.token_ids)


async def test_seeds_reproduce_and_differ(engine, render):
    ids = render(VARIED)
    spec = SamplingSpec(max_tokens=64, temperature=1.0, seed=7)
    a, b, c = await asyncio.gather(*(gen(engine, ids, s, f"seed-{i}")
                                     for i, s in enumerate([spec, spec, spec.replace(seed=8)])))
    assert a.token_ids == b.token_ids
    outs = await asyncio.gather(*(gen(engine, ids, spec.replace(seed=s), f"s{s}") for s in range(8)))
    assert len({o.token_ids for o in outs}) > 1


async def test_n_samples_in_one_call_are_distinct_and_reproducible(engine, render):
    ids = render(VARIED)
    spec = SamplingSpec(max_tokens=64, temperature=1.0, seed=7, logprobs=2)
    a, b = await asyncio.gather(engine.sample(ids, spec, 8, "n-a"), engine.sample(ids, spec, 8, "n-b"))
    assert len(a) == 8 and [o.token_ids for o in a] == [o.token_ids for o in b]
    assert len({o.token_ids for o in a}) > 1
    assert all(o.prompt_tokens == len(ids) and o.completion_tokens == len(o.token_ids) == len(o.logprobs)
               for o in a)


async def test_cancelling_n_samples_aborts_all_of_them(engine, render):
    eos = engine.tokenizer.eos_token_id
    spec = SamplingSpec(max_tokens=900, temperature=1.0, seed=1, logit_bias=((eos, -100.0),))
    task = asyncio.ensure_future(engine.sample(render(Q), spec, 4, "n-long"))
    for _ in range(600):
        if engine.num_unfinished() == 4:
            break
        await asyncio.sleep(0.05)
    assert engine.num_unfinished() == 4  # the four children run
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_idle(engine)


async def test_prompt_logprobs_score_what_sampling_saw(engine, render):
    ids = render(Q)
    out = await gen(engine, ids, GREEDY.replace(logprobs=5), "lp")
    scored = await engine.score(ids, out.token_ids, "score", top_logprobs=5)
    assert [s.token_id for s in scored] == list(out.token_ids)
    for s, o in zip(scored, out.logprobs):
        assert s.logprob == pytest.approx(o.logprob, abs=0.05)
        assert s.top[0][0] == s.token_id  # greedy: the chosen token is the top one


async def test_masked_token_never_appears_there_and_nothing_else_moves(engine, render):
    ids = render(Q)
    base = await gen(engine, ids, GREEDY, "base")
    k = 3
    prefix = list(base.token_ids[:k])
    masked_spec = GREEDY.replace(masked=((0, base.token_ids[k]),))
    masked, again = await asyncio.gather(gen(engine, ids + prefix, masked_spec, "masked"),
                                         gen(engine, ids, GREEDY, "unmasked-neighbour"))
    assert masked.token_ids[0] != base.token_ids[k]
    assert again.token_ids == base.token_ids  # a request in the same batch is untouched
    later = await gen(engine, ids, GREEDY.replace(masked=((k, base.token_ids[k]),)), "later")
    assert later.token_ids[:k] == base.token_ids[:k] and later.token_ids[k] != base.token_ids[k]
    sampled = await asyncio.gather(*(gen(engine, ids + prefix, masked_spec.replace(temperature=1.5, seed=s), f"m{s}")
                                     for s in range(16)))
    assert all(o.token_ids[0] != base.token_ids[k] for o in sampled)


async def test_abort_frees_the_engine(engine, render):
    eos = engine.tokenizer.eos_token_id
    spec = SamplingSpec(max_tokens=900, temperature=1.0, seed=1, logit_bias=((eos, -100.0),))  # never stops early
    started = asyncio.Event()

    async def consume():
        async for _ in engine.generate(render(Q), spec, "long"):
            started.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(started.wait(), 60)
    assert engine.num_unfinished() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_idle(engine)


async def test_committed_model_answers_in_format(engine, render):
    problems = arith.dataset("test", 40)
    outs = await asyncio.gather(*(gen(engine, render(p.question()), GREEDY.replace(max_tokens=200), f"fmt-{i}")
                                  for i, p in enumerate(problems)))
    assert all(ARITH.extract(o.text) is not None for o in outs)
    assert all(arith.EQUATION_RE.search(o.text) for o in outs)
    assert sum(ARITH.correct(o.text, p.answer) for o, p in zip(outs, problems)) >= 10


async def until_idle(engine, timeout: float = 5.0) -> None:
    """Every aborted request has left the engine within `timeout` seconds."""
    for _ in range(int(timeout * 10)):
        if engine.num_unfinished() == 0:
            return
        await asyncio.sleep(0.1)
    assert engine.num_unfinished() == 0
