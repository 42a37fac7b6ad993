"""A Puzzle child exported as DeciLM: real vLLM (its nemotron_nas model) computes what ponder's PyTorch does.

The child comes from the committed model, every kind of block mixed in: GQA
with 2 and 1 KV heads, a no-op attention, a no-op FFN, FFNs at 50% and 25%,
initialised from the parent (no training: the check is of the forward pass).
Both sides run in float32 on the weights as exported (in the parent's dtype, bf16).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from ponder.engine.protocol import SamplingSpec, collect
from ponder.nas import data, evaluate, space
from ponder.nas.bld import assemble
from ponder.nas.decilm import load
from ponder.nas.export import export
from ponder.tasks import arith
from tests.conftest import MODEL

BLOCKS = [{"attention": "gqa2", "ffn": "ffn50"}, {"attention": "noop", "ffn": "parent"},
          {"attention": "parent", "ffn": "noop"}, {"attention": "gqa4", "ffn": "ffn25"}]
TOL = 1e-3  # log-prob; float32 on both sides agrees to ~1e-5


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    torch.set_num_threads(1)
    parent = load(MODEL)
    tok = PreTrainedTokenizerFast.from_pretrained(MODEL)
    scores = space.channel_scores(parent, data.heldout(tok, 16, 16, "forward=1"))
    layers = {v.key: space.parent_variant(parent, v.layer, v.kind) if v.name == "parent"
              else space.init_variant(parent, v, scores)
              for v in space.variants(parent, kv_groups=[2, 4], fractions=[0.5, 0.25])}
    folder = export(assemble(parent, BLOCKS, layers), tmp_path_factory.mktemp("nas") / "child", MODEL,
                    {"blocks": BLOCKS})
    return load(folder), tok, folder  # the weights as exported (in the parent's dtype), computed in float32


@pytest.fixture(scope="module")
async def child_engine(child):
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine

    eng = VllmEngine(VllmConfig(model=str(child[2]), max_logprobs=5,
                                engine_args={"trust_remote_code": True, "dtype": "float32"}))
    yield eng
    await eng.aclose()


def torch_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)  # [T, V]


def test_the_child_is_heterogeneous(child):
    model = child[0]
    kv_heads = [None if b.attn_no_op else 4 // b.n_heads_in_group for b in model.cfg.blocks]
    assert kv_heads == [2, None, 4, 1]
    assert [None if b.ffn_no_op else b.intermediate_size for b in model.cfg.blocks] == [384, 768, None, 192]


async def test_greedy_tokens_and_logprobs_match_pytorch(child, child_engine):
    model, tok, _ = child
    problems = arith.dataset("test", 4)
    prompts = [evaluate.prompt_ids(tok, p.question()) for p in problems]
    spec = SamplingSpec(max_tokens=48, temperature=0.0, logprobs=1)
    outs = [await collect(child_engine.generate(ids, spec, f"nas-{i}", stream=False)) for i, ids in enumerate(prompts)]
    ours = evaluate.greedy(model, prompts, 48, tok.eos_token_id, tok.pad_token_id)
    for ids, out, mine in zip(prompts, outs, ours):
        assert len(out.token_ids) > 4
        logp = torch_logprobs(model, ids + list(out.token_ids))
        for i, (token, scored) in enumerate(zip(out.token_ids, out.logprobs)):
            row = logp[len(ids) + i - 1]
            assert scored.logprob == pytest.approx(float(row[token]), abs=TOL)
            top = row.topk(2)
            # greedy picks PyTorch's argmax, unless the top two are closer than the tolerance
            assert token == int(top.indices[0]) or float(top.values[0] - top.values[1]) < TOL
        n = next((i for i, (a, b) in enumerate(zip(out.token_ids, mine)) if a != b), None)
        assert n is None or float(logp[len(ids) + n - 1].topk(2).values.diff().abs()) < TOL, "greedy diverged"


async def test_prompt_logprobs_match_pytorch(child, child_engine):
    """A long teacher-forced prefill (prompt + the right solution) through every layer kind."""
    model, tok, _ = child
    p = arith.dataset("test", 1)[0]
    prompt = evaluate.prompt_ids(tok, p.question())
    reply = tok.encode(p.forward_solution(), add_special_tokens=False)
    scored = await child_engine.score(prompt, reply, "nas-score", top_logprobs=1)
    logp = torch_logprobs(model, prompt + reply)
    got = torch.tensor([s.logprob for s in scored])
    want = torch.stack([logp[len(prompt) + i - 1, t] for i, t in enumerate(reply)])
    assert torch.allclose(got, want, atol=TOL)
