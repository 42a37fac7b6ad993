"""RemoteEngine against vLLM's own OpenAI server (the scale-out path), two upstream URLs."""

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest

from ponder import strategies
from ponder.server.engine.remote import RemoteEngine
from ponder.strategies.base import Context, Query
from ponder.strategies.engine import SamplingSpec, collect, render_chat
from ponder.tasks import arith
from tests.conftest import MODEL, ROOT, free_port

Q = arith.dataset("test", 1)[0].question()
GREEDY = SamplingSpec(max_tokens=64, temperature=0.0)


@pytest.fixture(scope="module")
def upstream():
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL),
           "--served-model-name", "ponder-tiny", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096", "--gpu-memory-utilization", "0.3",
           "--max-logprobs", "64", "--logits-processors", "ponder.server.engine.logits:MaskTokensAtPositions"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"vllm api_server {'exited' if proc.returncode is not None else 'never became healthy'}")
        time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(60)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
async def remote(upstream):
    # The same upstream twice: two "replicas" to spread calls over.
    eng = RemoteEngine([upstream, upstream + "/"], "ponder-tiny", str(MODEL))
    yield eng
    await eng.aclose()


def prompt(engine) -> list[int]:
    return render_chat(engine.tokenizer, [{"role": "user", "content": Q}])


async def test_stream_and_whole_agree(remote):
    ids = prompt(remote)
    whole = await collect(remote.generate(ids, GREEDY, "w", stream=False))
    parts = [o async for o in remote.generate(ids, GREEDY, "p")]
    assert "".join(p.text for p in parts) == whole.text and whole.finish_reason == "stop"
    assert sum((p.token_ids for p in parts), ()) == whole.token_ids
    assert whole.prompt_tokens == len(ids)


async def test_calls_spread_over_upstreams_and_score(remote):
    ids = prompt(remote)
    seen = []
    real = remote._pick

    def pick():
        i = real()
        seen.append(i)
        return i

    remote._pick = pick
    outs = await asyncio.gather(*(collect(remote.generate(ids, GREEDY.replace(logprobs=3), f"r{i}", stream=False))
                                  for i in range(4)))
    assert set(seen) == {0, 1} and len({o.token_ids for o in outs}) == 1
    scored = await remote.score(ids, outs[0].token_ids, "s", top_logprobs=3)
    assert [s.token_id for s in scored] == list(outs[0].token_ids)
    assert all(s.logprob == pytest.approx(o.logprob, abs=0.05) for s, o in zip(scored, outs[0].logprobs))


async def test_masking_reaches_the_upstream_logits_processor(remote):
    ids = prompt(remote)
    base = await collect(remote.generate(ids, GREEDY, "b", stream=False))
    masked = await collect(remote.generate(ids, GREEDY.replace(masked=((0, base.token_ids[0]),)), "m", stream=False))
    assert masked.token_ids[0] != base.token_ids[0]


async def test_a_strategy_runs_over_the_remote_engine(remote):
    ctx = Context(lambda m: (remote, None if m == "ponder-tiny" else m), "remote")
    ids = prompt(remote)
    strategy, params = strategies.resolve({"name": "tournament", "n": 4})
    res = await strategy.run(ctx, Query("ponder-tiny", tuple(ids), Q, SamplingSpec(max_tokens=200, seed=1)), params)
    assert arith.extract_answer(res.choice.text) is not None and ctx.calls == 4 + res.info["judge_calls"]
