"""A Puzzle child of SmolLM2 exported as DeciLM: vLLM's nemotron_nas computes what ponder's PyTorch does.

The third-party case of tests/integration/test_nas_vllm.py: 30 layers, GQA merged from 3 KV heads to
1, tied embeddings, rope_theta 1e5, a bf16 checkpoint with a ChatML template, every kind of block
mixed in, initialised from the parent (no training: the check is of the forward pass). Both sides
run in float32. Skips where SmolLM2 has not been imported (`make smollm2`).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from ponder.engine.protocol import SamplingSpec, collect
from ponder.nas import data, generate, space
from ponder.nas.bld import assemble
from ponder.nas.decilm import load
from ponder.nas.export import export
from tests.conftest import ROOT

SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct"
PATTERN = [{"attention": "gqa9", "ffn": "ffn50"}, {"attention": "noop", "ffn": "parent"},
           {"attention": "parent", "ffn": "noop"}, {"attention": "parent", "ffn": "ffn25"}]
PROMPTS = ["What is 7 + 8?", "Write a haiku about the moon.", "Explain why the sky is blue."]
TOL = 2e-3  # log-prob; float32 on both sides agrees to ~1e-5, 30 layers deep

pytestmark = [pytest.mark.slow,  # spawns vLLM
              pytest.mark.skipif(not (SMOLLM2 / "config.json").exists(), reason="SmolLM2 not imported")]


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    torch.set_num_threads(1)
    parent = load(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    rows = [(generate.render(tok, p), 0) for p in PROMPTS]
    scores = space.channel_scores(parent, data.batches(rows, tok.pad_token_id, 4))
    menu = space.variants(parent, kv_groups=space.kv_group_sizes(9, 3), fractions=[0.5, 0.25])
    layers = {v.key: space.parent_variant(parent, v.layer, v.kind) if v.name == "parent"
              else space.init_variant(parent, v, scores) for v in menu}
    blocks = [PATTERN[i % len(PATTERN)] for i in range(parent.cfg.num_hidden_layers)]
    folder = export(assemble(parent, blocks, layers), tmp_path_factory.mktemp("nas") / "child", SMOLLM2,
                    {"blocks": blocks})
    return load(folder), tok, folder  # the weights as exported (bf16), computed in float32


@pytest.fixture(scope="module")
async def child_engine(child):
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine

    eng = VllmEngine(VllmConfig(model=str(child[2]), max_logprobs=5, max_model_len=1024,
                                engine_args={"dtype": "float32"}))
    yield eng
    await eng.aclose()


def test_the_exported_child_keeps_the_parents_format(child):
    _, _, folder = child
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["tie_word_embeddings"] and cfg["max_position_embeddings"] == 8192
    assert cfg["rope_parameters"]["rope_theta"] == 100000.0
    assert cfg["block_configs"][0]["attention"] == {"no_op": False, "n_heads_in_group": 9}
    assert (folder / "chat_template.jinja").read_text() == (SMOLLM2 / "chat_template.jinja").read_text()


async def test_greedy_tokens_and_logprobs_match_pytorch(child, child_engine):
    model, tok, _ = child
    spec = SamplingSpec(max_tokens=24, temperature=0.0, logprobs=1)
    for i, text in enumerate(PROMPTS):
        ids = generate.render(tok, text)
        out = await collect(child_engine.generate(ids, spec, f"smol-{i}", stream=False))
        assert len(out.token_ids) > 2
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids + list(out.token_ids)])).logits[0].float(), dim=-1)
        for j, (token, scored) in enumerate(zip(out.token_ids, out.logprobs)):
            row = logp[len(ids) + j - 1]
            assert scored.logprob == pytest.approx(float(row[token]), abs=TOL)
            top = row.topk(2)
            assert token == int(top.indices[0]) or float(top.values[0] - top.values[1]) < TOL
