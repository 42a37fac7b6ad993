"""Puzzle on a Hugging Face Llama that is not ponder's own: GQA, tied embeddings, bf16, its own chat
template, and distillation text of the parent's own replies (`ponder nas data`).

A tiny random parent stands in for SmolLM2 (9 query heads in 3 KV groups of 3, tied, bf16, ChatML):
6 query heads in 2 KV groups of 3, tied, bf16, ponder's tokenizer and template. One check runs on
SmolLM2 itself where it has been imported (`make smollm2`) and skips otherwise. vLLM is replaced by
a fake here; tests/integration/test_nas_data_vllm.py runs the real one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ponder.nas import bld, data, evaluate, export, generate, score, space
from ponder.nas.decilm import load
from ponder.tasks import MODEL_FILE
from tests.conftest import ROOT

torch.set_num_threads(1)
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct"


def gqa_config(tok) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tok), hidden_size=192, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                       rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                       max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)


@pytest.fixture(scope="module")
def gqa_parent(tmp_path_factory, tok):
    """A bf16, tied-embedding GQA Llama folder with a chat template and no ponder.json."""
    folder = tmp_path_factory.mktemp("gqa-parent")
    torch.manual_seed(0)
    LlamaForCausalLM(gqa_config(tok)).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def fake_rows(tok, n: int, seed: int) -> list[dict]:
    """Rows as `ponder nas data` writes them: a rendered prompt, then a reply ending at end-of-turn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = generate.render(tok, f"What is {rng.randint(1, 99)} + {rng.randint(1, 99)}?")
        reply = [rng.randrange(8, len(tok)) for _ in range(rng.randint(3, 40))] + [tok.eos_token_id]
        rows.append({"ids": prompt + reply, "prompt_len": len(prompt), "split": "train", "source": "ops",
                     "finish": "stop"})
    return rows


def store(run: Path, tok, n_train: int = 48, n_heldout: int = 8) -> None:
    d = data.data_dir(run)
    d.mkdir(parents=True, exist_ok=True)
    data.write_rows(d / "train.jsonl", fake_rows(tok, n_train, 0))
    data.write_rows(d / "heldout.jsonl", fake_rows(tok, n_heldout, 1))
    (d / "record.json").write_text("{}")


def prompt_ids(tok, text: str) -> torch.Tensor:
    return torch.tensor([generate.render(tok, text)])


@pytest.mark.skipif(not (SMOLLM2 / "config.json").exists(), reason="SmolLM2 not imported (make smollm2)")
def test_hetero_llama_reproduces_transformers_on_smollm2():
    """GQA (3 KV heads), tied embeddings, rope_theta 1e5 and rms_norm_eps from the parent, in fp32."""
    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    ours = load(SMOLLM2)
    assert ours.cfg.blocks[0].n_heads_in_group == 3 and ours.cfg.tie_word_embeddings
    assert ours.cfg.rope_theta == 100000.0 and ours.cfg.dtype == torch.bfloat16
    theirs = LlamaForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    x = prompt_ids(tok, "What is the capital of France?")
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, theirs(x).logits, atol=1e-4)
    assert space.kv_group_sizes(9, 3) == [9]  # SmolLM2's one GQA variant: a single KV head


def test_hetero_llama_reproduces_transformers_on_a_gqa_tied_parent(gqa_parent, tok):
    ours = load(gqa_parent)
    theirs = LlamaForCausalLM.from_pretrained(gqa_parent, dtype=torch.float32).eval()
    x = prompt_ids(tok, "What is 2 + 3?")
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, theirs(x).logits, atol=1e-5)
        assert ours(x, head=False).logits is None


def test_gqa_variants_merge_the_parents_kv_groups_whole(gqa_parent):
    assert space.kv_group_sizes(6, 3) == [6]
    assert space.kv_group_sizes(8, 1) == [2, 4, 8]
    assert space.kv_group_sizes(12, 2) == [4, 6, 12]
    parent = load(gqa_parent)
    menu = space.variants(parent, kv_groups=[2, 3, 6], fractions=[0.5])
    assert [v.name for v in menu if v.layer == 1 and v.kind == "attention"] == ["parent", "gqa6", "noop"]
    # Where the parent's two KV heads are equal, the merged one computes exactly what they did.
    attn = parent.layers[1].self_attn
    with torch.no_grad():
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight[32:] = proj.weight[:32]
    v = next(v for v in menu if v.key == "1.attention.gqa6")
    merged = space.init_variant(parent, v, {})
    assert merged.self_attn.n_kv_heads == 1
    x = torch.randn(2, 5, 192)
    out = parent(torch.zeros(1, 5, dtype=torch.long))
    with torch.no_grad():
        assert torch.allclose(merged.delta("attention", x, out.rope, None),
                              parent.layers[1].delta("attention", x, out.rope, None), atol=1e-5)


def test_replace_one_block_from_the_parents_layer_inputs_is_the_full_forward(gqa_parent, tmp_path, tok):
    parent = load(gqa_parent)
    store(tmp_path, tok)
    batches = data.Text.of(tmp_path, tok).heldout(8, 4)
    ref = evaluate.reference(parent, batches)
    states = evaluate.layer_inputs(parent, batches)
    menu = {v.key: v for v in space.variants(parent, kv_groups=[6], fractions=[0.5])}
    for key in ("0.attention.gqa6", "1.attention.noop", "1.ffn.ffn50"):
        v = menu[key]
        layer = space.init_variant(parent, v, {1: torch.rand(256), 0: torch.rand(256)})
        full = score.replace_one_block(parent, v, layer, batches, ref)
        assert full > 0 and score.replace_one_block(parent, v, layer, batches, ref, states) == pytest.approx(full)


def test_stored_batches_cover_every_row_once_per_epoch_and_pad_little():
    rows = tuple(([7] * n, 2) for n in random.Random(0).choices(range(3, 200), k=100))
    steps = -(-len(rows) // 8)
    for epoch in range(2):
        seen = [id(r) for s in range(epoch * steps, (epoch + 1) * steps)
                for r in data.stored_batch(rows, s, seed=0, batch_size=8)]
        assert sorted(seen) == sorted(id(r) for r in rows)
    assert data.stored_batch(rows, 3, 0, 8) == data.stored_batch(rows, 3, 0, 8)  # a resumed run sees the same
    assert data.stored_batch(rows, 3, 0, 8) != data.stored_batch(rows, 3, 1, 8)
    padded = sum(8 * max(len(r[0]) for r in data.stored_batch(rows, s, 0, 8)) for s in range(steps))
    assert padded < 1.3 * sum(len(r[0]) for r in rows)  # sorted within pools: a random batch would pad ~2x
    assert data.crop([([1, 2, 3, 4, 5], 4)], 3) == [([1, 2, 3], 3)]


def test_a_run_without_stored_data_keeps_the_task_text(tmp_path, tok):
    text = data.Text.of(tmp_path, tok, "forward=1")
    assert text.stored is None and text.source.startswith("task")
    want = data.train_batch(tok, 5, 0, 4, "forward=1")
    assert torch.equal(text.train_batch(5, 0, 4).ids, want.ids)
    store(tmp_path, tok)
    text = data.Text.of(tmp_path, tok, "forward=1", max_len=20)
    assert text.source == "stored" and text.train_batch(0, 0, 4).ids.shape[1] <= 20
    assert len(text.heldout(8, 4)) == 2
    spread = data.heldout(tok, 3, 4, "", stored=data.Stored(train=(), heldout=tuple(([i], 0) for i in range(9))))
    assert sorted(spread[0].ids[:, 0].tolist()) == [0, 3, 6]  # every source keeps its share


def test_the_plan_holds_out_prompts_training_never_sees():
    cfg = generate.DataConfig(run="unused", parent="unused", arith_train=20, arith_heldout=5, ops_train=30,
                              ops_heldout=10)
    plan = generate.plan(cfg)
    train = {(p.source, p.text) for p in plan if p.split == "train"}
    held = {(p.source, p.text) for p in plan if p.split == "heldout"}
    assert not train & held
    opens = generate.open_prompts(generate.PROMPTS_FILE)
    assert len(opens) >= 300 and len(set(opens)) == len(opens)
    assert sum(p.source == "open" and p.split == "heldout" for p in plan) == len(opens) // 10
    assert sum(p.source == "open" and p.split == "train" for p in plan) == 2 * (len(opens) - len(opens) // 10)
    assert {s: sum(p.source == s for p in plan if p.split == "heldout") for s in ("arith", "ops")} == \
        {"arith": 5, "ops": 10}
    for q in (p.text for p in plan if p.source == "ops"):
        a, op, b = q.split(" ")[-3:]
        if op == "/":
            assert int(a) % int(b.rstrip("?.")) == 0


class FakeLLM:
    """vLLM's offline LLM as generate_part uses it: a fixed reply per prompt, counted."""

    def __init__(self, eos: int):
        self.eos, self.prompts = eos, 0

    def generate(self, prompts, params, use_tqdm=False):
        self.prompts += len(prompts)
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[9, 10, self.eos], finish_reason="stop")])
                for _ in prompts]


def test_ponder_nas_data_writes_rows_in_parts_and_resumes(tmp_path, gqa_parent, tok, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\n" + "".join(f"Tell me about the number {i}.\n" for i in range(10)))
    cfg = generate.DataConfig(run=str(tmp_path / "run"), parent=str(gqa_parent), prompts=str(prompts),
                              arith_train=3, arith_heldout=2, ops_train=4, ops_heldout=2, chunk=8)
    fake = FakeLLM(tok.eos_token_id)
    monkeypatch.setattr(generate, "open_engine", lambda cfg, max_len: fake)
    out = generate.build(cfg)
    n = len(generate.plan(cfg))
    assert fake.prompts == n
    stored = data.Stored.read(cfg.run)
    assert len(stored.train) + len(stored.heldout) == n
    ids, n_prompt = stored.train[0]
    assert ids[:n_prompt] == generate.render(tok, "Tell me about the number 0.")
    assert ids[n_prompt:] == [9, 10, tok.eos_token_id]
    record = json.loads((out / "record.json").read_text())
    assert record["stats"]["heldout"]["rows"] == 1 + 2 + 2
    # a run killed after some parts: only the missing ones are generated again
    (out / "record.json").unlink()
    (out / "parts" / "0001.jsonl").unlink()
    fake.prompts = 0
    generate.build(cfg)
    assert fake.prompts == 8
    assert data.Stored.read(cfg.run) == stored
    (out / "record.json").unlink()
    (out / "parts" / "0001.jsonl").unlink()
    with pytest.raises(SystemExit, match="parts of other settings"):  # part i is chunk i: same chunks only
        generate.build(generate.DataConfig(**{**cfg.__dict__, "chunk": 5}))
    generate.build(cfg)
    with pytest.raises(SystemExit, match="other settings"):
        generate.build(generate.DataConfig(**{**cfg.__dict__, "temperature": 0.2}))


@pytest.mark.slow  # trains
def test_space_bld_score_export_on_stored_text_of_a_gqa_bf16_parent(tmp_path, gqa_parent, tok):
    run = tmp_path / "run"
    store(run, tok)
    sp = space.build(space.SpaceConfig(parent=str(gqa_parent), run=str(run), calib_examples=16,
                                       ffn_fractions="0.5"))
    assert json.loads((run / "space.json").read_text())["text"] == "stored"
    assert {v.name for v in sp.variants if v.kind == "attention"} == {"parent", "gqa6", "noop"}
    bld.train(bld.BldConfig(run=str(run), steps=30, warmup=2, batch_size=8, lr=3e-3, max_len=48,
                            only="1.ffn.ffn50,1.attention.gqa6"))
    losses = json.loads((run / "bld" / "0-of-1" / "losses.json").read_text())["losses"]
    for key, r in losses.items():
        assert sum(r["curve"][-5:]) < sum(r["curve"][:5]), key
    record = score.score(score.ScoreConfig(run=str(run), examples=8, batch_size=4, accuracy_problems=0))
    assert record["kl"]["1.attention.parent"] == 0.0 and record["kl"]["1.ffn.noop"] > 0.0

    blocks = [{"attention": "gqa6", "ffn": "ffn50"}, {"attention": "noop", "ffn": "parent"}]
    child = bld.assemble(sp.parent(), blocks, bld.trained(sp))
    folder = export.export(child, tmp_path / "child", gqa_parent, {})
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["tie_word_embeddings"] is True
    assert cfg["rope_parameters"]["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    weights = load_file(str(folder / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16} and "lm_head.weight" not in weights
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (32, 192)  # one KV head
    assert (folder / "tokenizer.json").exists() and not (folder / MODEL_FILE).exists()  # the parent has none
    x = prompt_ids(tok, "What is 2 + 3?")
    with torch.no_grad():
        want = child.to(torch.bfloat16).float()(x).logits
        assert torch.allclose(load(folder)(x).logits, want, atol=1e-4)
    (Path(gqa_parent) / MODEL_FILE).write_text('{"task": "arith"}')
    try:
        folder = export.export(child, tmp_path / "child2", gqa_parent, {})
        assert json.loads((folder / MODEL_FILE).read_text()) == {"task": "arith"}
    finally:
        (Path(gqa_parent) / MODEL_FILE).unlink()
