"""RemoteEngine against vLLM's own OpenAI server (the scale-out path), two upstream URLs
(the same server, given with and without /v1). The server loads ponder's logits processor as
compose.yaml's replicas do: from the one mounted file, with ponder itself unimportable."""

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ponder import strategies
from ponder.engine.protocol import SamplingSpec, collect, render_chat
from ponder.engine.remote import RemoteEngine, UpstreamError
from ponder.strategies.base import Context, Query
from ponder.tasks import ARITH, arith
from tests.conftest import MODEL, NAME, ROOT, free_port

Q = arith.dataset("test", 1)[0].question()
GREEDY = SamplingSpec(max_tokens=64, temperature=0.0)


def compose_replica(root: Path) -> tuple[dict[str, str], list[str]]:
    """compose.yaml's replica, outside any container and outside ponder's install: its mounted
    files copied under `root` at their container paths, its PYTHONPATH re-rooted there, a
    sitecustomize that makes `ponder` unimportable in every process vLLM starts, and the
    replica's --logits-processors argument."""
    replica = yaml.safe_load((ROOT / "compose.yaml").read_text())["x-vllm"]
    for volume in replica["volumes"]:
        src, dst = volume.split(":")[:2]
        if src.startswith("./"):
            target = root / dst.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / src, target)
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text("import sys\nsys.modules['ponder'] = None  # not installed\n")
    path = [str(root / "site"), *(str(root / p.lstrip("/")) for p in replica["environment"]["PYTHONPATH"].split(":"))]
    return {"PYTHONPATH": ":".join(path)}, [a for a in replica["command"] if a.startswith("--logits-processors")]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    port = free_port()
    env, processors = compose_replica(tmp_path_factory.mktemp("replica"))
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL),
           "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096", "--gpu-memory-utilization", "0.3",
           "--max-logprobs", "64", *processors]
    env = {**os.environ, **env, "VLLM_CPU_KVCACHE_SPACE": "1"}
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
    # The same upstream twice, as a root and as an OpenAI base URL: two "replicas" to spread calls over.
    eng = RemoteEngine([upstream, upstream + "/v1"], NAME, str(MODEL))
    await eng.start()
    posts: list[str] = []

    async def count(request: httpx.Request) -> None:
        if request.method == "POST":
            posts.append(str(request.url))

    eng.fleet.client.event_hooks["request"].append(count)
    eng.posts = posts  # every upstream call, by URL
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
    assert remote.max_model_len == 1024  # the context the upstream serves, from its /v1/models


async def test_calls_spread_over_upstreams_and_score(remote):
    ids = prompt(remote)
    seen = []
    real = remote.fleet._pick

    def pick(exclude=None):
        r = real(exclude)
        seen.append(remote.fleet.replicas.index(r))
        return r

    remote.fleet._pick = pick
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
    ctx = Context(lambda m: (remote, None if m == NAME else m), "remote")
    ids = prompt(remote)
    strategy, params = strategies.resolve({"name": "tournament", "n": 4})
    res = await strategy.run(ctx, Query(NAME, tuple(ids), Q, SamplingSpec(max_tokens=200, seed=1), ARITH), params)
    assert ARITH.extract(res.choice.text) is not None and ctx.calls == 1 + res.info["judge_calls"]


async def test_n_samples_in_one_call_are_distinct_seeded_and_reproducible(remote):
    ids = prompt(remote)
    # T=2: at T=1 ponder-small often samples the same solution 8 times
    spec = SamplingSpec(max_tokens=64, temperature=2.0, seed=11)
    a = await remote.sample(ids, spec, 8, "n-a")
    b = await remote.sample(ids, spec, 8, "n-b")
    assert len(remote.posts) == 2 and all(u.endswith("/v1/completions") for u in remote.posts)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]  # same seed, same samples
    assert len({o.token_ids for o in a}) > 1
    other = await remote.sample(ids, spec.replace(seed=12), 8, "n-c")
    assert [o.token_ids for o in other] != [o.token_ids for o in a]
    assert all(o.prompt_tokens == len(ids) and o.completion_tokens == len(o.token_ids) > 0 for o in a)
    assert all(o.finish_reason in ("stop", "length") for o in a)


async def test_a_strategy_makes_one_upstream_call_per_round(remote):
    ctx = Context(lambda m: (remote, None), "sc")
    ids = prompt(remote)
    strategy, params = strategies.resolve({"name": "self_consistency", "n": 8})
    spec = SamplingSpec(max_tokens=200, temperature=1.0, seed=3)
    res = await strategy.run(ctx, Query(NAME, tuple(ids), Q, spec, ARITH), params)
    assert ctx.calls == 1 and len(remote.posts) == 1 and len(res.trace["candidates"]) == 8
    assert ctx.prompt_tokens == len(ids)  # one prefill for eight samples
    again = Context(lambda m: (remote, None), "sc2")
    res2 = await strategy.run(again, Query(NAME, tuple(ids), Q, spec, ARITH), params)
    assert res2.trace == res.trace and again.completion_tokens == ctx.completion_tokens


async def test_a_wrong_path_is_a_start_up_error_naming_the_url(upstream):
    eng = RemoteEngine([upstream + "/openai/v1"], NAME, str(MODEL))
    with pytest.raises(UpstreamError, match=f"GET {upstream}/openai/v1/models answered 404"):
        await eng.start()
    await eng.aclose()
