"""Puzzle NAS without an engine: the model, the menu, BLD, scoring, costs' arithmetic, the MIP, GKD, export.

A micro parent (2 layers, hidden 128, random weights) keeps it fast; vLLM's timing
is replaced by a fake that is linear in the probe's shape, so the decomposition
into per-sub-block costs can be checked exactly. Real vLLM is in
tests/integration/test_nas_vllm.py.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, LlamaForCausalLM

from ponder.nas import bld, costs, data, evaluate, gkd, mip, pick, score, space
from ponder.nas.decilm import KINDS, BlockConfig, HeteroConfig, HeteroLlama, load, sub_block_params
from ponder.nas.export import export
from ponder.trainers.pretrain import ModelPreset

torch.set_num_threads(1)
MIX = "forward=1"  # the shortest examples: fast steps


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("parent")
    torch.manual_seed(0)
    LlamaForCausalLM(ModelPreset.from_name("micro").llama_config(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, parent_dir):
    """A run folder after `ponder nas space` and a short `ponder nas bld` of two variants."""
    folder = tmp_path_factory.mktemp("run")
    space.build(space.SpaceConfig(parent=str(parent_dir), run=str(folder), calib_examples=16, mix=MIX))
    bld.train(bld.BldConfig(run=str(folder), steps=60, warmup=2, batch_size=4, lr=3e-3, mix=MIX,
                            only="1.ffn.ffn50,1.attention.gqa2"))
    return folder


def ids(tok, n=3, seed=0):
    return data.heldout(tok, n, n, MIX, seed=seed)[0].ids


def test_hetero_llama_matches_transformers(parent_dir, tok):
    ours = load(parent_dir)
    theirs = LlamaForCausalLM.from_pretrained(parent_dir, dtype=torch.float32).eval()
    x = ids(tok)
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, theirs(x).logits, atol=1e-5)
        # left padding: a padded row computes what the unpadded prompt does
        mask = torch.ones_like(x)
        mask[0, :5] = 0
        padded = ours(x, mask).logits[0, 5:]
        assert torch.allclose(padded, ours(x[:1, 5:]).logits[0], atol=1e-5)


def test_menu_and_initialisation_come_from_the_parent(parent_dir, tok):
    parent = load(parent_dir)
    menu = space.variants(parent, kv_groups=[2], fractions=[0.5])
    names = {(v.layer, v.kind): [w.name for w in menu if (w.layer, w.kind) == (v.layer, v.kind)] for v in menu}
    assert names[0, "attention"] == ["parent", "gqa2"]  # layer 0 cannot drop its attention (see space.py)
    assert names[1, "attention"] == ["parent", "gqa2", "noop"]
    assert names[1, "ffn"] == ["parent", "ffn50", "noop"]
    by_key = {v.key: v for v in menu}
    # GQA: each KV head is the mean of the parent's heads it replaces
    gqa = space.init_variant(parent, by_key["1.attention.gqa2"], {})
    k = parent.layers[1].self_attn.k_proj.weight.view(2, 64, -1)
    assert torch.allclose(gqa.self_attn.k_proj.weight, k.mean(0))
    assert torch.equal(gqa.self_attn.q_proj.weight, parent.layers[1].self_attn.q_proj.weight)
    # FFN: the channels with the largest mean|X_i| * ||W_down[:, i]|| survive, in order
    d_ff = parent.cfg.intermediate_size
    scores = {1: torch.arange(d_ff, dtype=torch.float) / parent.layers[1].mlp.down_proj.weight.norm(dim=0)}
    half = space.init_variant(parent, by_key["1.ffn.ffn50"], scores)
    assert torch.equal(half.mlp.gate_proj.weight, parent.layers[1].mlp.gate_proj.weight[d_ff // 2 :])
    assert torch.equal(half.mlp.down_proj.weight, parent.layers[1].mlp.down_proj.weight[:, d_ff // 2 :])


def made_up_table(rng: random.Random, unit: float, n_slots: int = 4) -> list[mip.Option]:
    """Smaller variants cost less and score worse, with noise; `unit` scales the times (real ones are ~1e-4 s)."""
    out = []
    for s in range(n_slots):
        for j, name in enumerate(["parent", "half", "quarter", "noop"]):
            shrink = j / 3
            out.append(mip.Option(slot=f"{s}.ffn", name=name, score=0.0 if j == 0 else rng.uniform(0.01, 1) * j,
                                  cost={"decode_step_s": unit * (1 - shrink) * rng.uniform(0.5, 1.5),
                                        "prefill_s": unit * (1 - shrink) * rng.uniform(1, 3),
                                        "memory_bytes": (1 - shrink) * rng.uniform(1e5, 2e5)}))
    return out


def respects(options, choice, budgets, exclude=(), min_diff=1) -> bool:
    slots = {o.slot for o in options}
    _, cost = mip.total(options, choice)
    return (set(choice) == slots and all(cost[k] <= b for k, b in budgets.items())
            and all(mip.differs(choice, prev) >= min_diff for prev in exclude))


@pytest.mark.slow  # trains or spawns
@pytest.mark.parametrize("seed", range(6))
def test_mip_respects_every_constraint_and_matches_brute_force(seed):
    rng = random.Random(seed)
    options = made_up_table(rng, unit=1e-4 if seed % 2 else 1.0)
    full = mip.total(options, {f"{s}.ffn": "parent" for s in range(4)})[1]
    for d, p, m in itertools.product([1.0, 0.7, 0.4, 0.05], [1.0, 0.6], [1.0, 0.5]):
        budgets = {"decode_step_s": d * full["decode_step_s"], "prefill_s": p * full["prefill_s"],
                   "memory_bytes": m * full["memory_bytes"]}
        got, want = mip.solve(options, budgets), mip.brute_force(options, budgets)
        assert (got is None) == (want is None)
        if got is None:
            continue
        assert respects(options, got, budgets)
        assert mip.total(options, got)[0] == pytest.approx(mip.total(options, want)[0], abs=1e-9)
        # alternatives: each differs from all earlier ones in >= 2 slots, and is the best such
        found = [got]
        for _ in range(2):
            alt, alt_bf = mip.solve(options, budgets, found, 2), mip.brute_force(options, budgets, found, 2)
            assert (alt is None) == (alt_bf is None)
            if alt is None:
                break
            assert respects(options, alt, budgets, found, 2)
            assert mip.total(options, alt)[0] == pytest.approx(mip.total(options, alt_bf)[0], abs=1e-9)
            found.append(alt)


def test_bld_loss_falls_and_the_block_changes(run, tok):
    sp = space.Space.read(run)
    record = json.loads((run / "bld" / "0-of-1" / "losses.json").read_text())["losses"]
    assert set(record) == {"1.ffn.ffn50", "1.attention.gqa2"}
    parent, scores, trained = sp.parent(), sp.scores(), bld.trained(sp)
    batch = data.heldout(tok, 8, 8, MIX)[0]
    trace: dict = {}
    with torch.no_grad():
        out = parent(batch.ids, trace=trace)
    for key, r in record.items():
        v = sp.by_key()[key]
        curve = r["curve"]
        assert sum(curve[-5:]) < sum(curve[:5]), key  # training loss
        x, target = trace[v.layer, v.kind]
        init = sp.init(parent, v, scores)
        with torch.no_grad():
            held_out = [float(bld.normalised_mse(layer.delta(v.kind, x, out.rope, out.mask), target,
                                                 batch.token_mask()[..., None])) for layer in (init, trained[key])]
        assert held_out[1] < 0.8 * held_out[0], key  # and on held-out text
        before, after = init.state_dict(), trained[key].state_dict()
        assert any(not torch.equal(before[n], after[n]) for n in before), key
    assert not (run / "bld" / "0-of-1" / "checkpoint").exists()  # the final write replaced it


def test_bld_resumes_to_the_same_weights(run, monkeypatch):
    cfg = bld.BldConfig(run=str(run), steps=6, warmup=1, batch_size=2, mix=MIX, only="0.ffn.ffn25",
                        ckpt_every=3, shard="0/2")
    real = data.train_batch

    def crash_at_4(tok, step, *a):
        if step == 4:
            raise KeyboardInterrupt
        return real(tok, step, *a)

    monkeypatch.setattr(data, "train_batch", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        bld.train(cfg)
    monkeypatch.setattr(data, "train_batch", real)
    out = bld.train(cfg)
    resumed = load_file(str(out / "weights.safetensors"))
    shutil.rmtree(out)
    whole = load_file(str(bld.train(cfg) / "weights.safetensors"))  # uninterrupted
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in resumed)


def test_replace_one_block_scores_the_parents_own_block_zero(run, tok):
    sp = space.Space.read(run)
    parent, variants = sp.parent(), bld.trained(sp)
    batches = data.heldout(tok, 4, 4, MIX)
    ref = evaluate.reference(parent, batches)
    by_key = sp.by_key()
    for kind in KINDS:
        assert score.replace_one_block(parent, by_key[f"1.{kind}.parent"], variants[f"1.{kind}.parent"],
                                       batches, ref) == 0.0
        assert score.replace_one_block(parent, by_key[f"1.{kind}.noop"], variants[f"1.{kind}.noop"],
                                       batches, ref) > 0.0
    assert isinstance(parent.layers[1].self_attn, torch.nn.Module)  # restored afterwards


def fake_measure(folder, out, settings, timeout):
    """Time linear in the probe's parameters and KV heads, plus a fixed overhead."""
    cfg = HeteroConfig.from_hf(json.loads((folder / "config.json").read_text()))
    p = sum(sub_block_params(cfg, b, k) for b in cfg.blocks for k in KINDS)
    kv = sum(0 if b.attn_no_op else cfg.num_attention_heads // b.n_heads_in_group for b in cfg.blocks)
    return {"prefill_s": 0.01 + p * 1e-8, "decode_step_s": 0.002 + p * 1e-9 + kv * 1e-4,
            "dtype": "torch.float32", "device": "fake"}


@pytest.mark.slow  # trains or spawns
def test_pipeline_costs_mip_gkd_export(run, tok, monkeypatch, tmp_path):
    score.score(score.ScoreConfig(run=str(run), examples=4, batch_size=4, mix=MIX, accuracy_problems=0))
    monkeypatch.setattr(costs, "measure_in_subprocess", fake_measure)
    table = costs.costs(costs.CostConfig(run=str(run), batch_size=8))
    cfg = load(space.Space.read(run).cfg.parent).cfg
    for t, row in table["types"].items():  # the probes recover each sub-block's own cost exactly
        kind, name = t.split(".")
        v = next(v for v in space.Space.read(run).variants if v.type == t)
        kv = 0 if v.no_op or kind == "ffn" else cfg.num_attention_heads // v.block.n_heads_in_group
        assert row["params"] == sub_block_params(cfg, v.block, kind)
        assert row["decode_step_s"] == pytest.approx(row["params"] * 1e-9 + kv * 1e-4, rel=1e-6, abs=1e-12)
    parent = table["parent"]
    assert parent["predicted"]["decode_step_s"] == pytest.approx(parent["measured"]["decode_step_s"])

    plan = mip.plan(mip.MipConfig(run=str(run), speedups="1.05,1.15", alternatives=1))
    assert {c["name"] for c in plan["children"]} == {"x1.05", "x1.05-alt1", "x1.15", "x1.15-alt1"}
    for c in plan["children"] + plan["uniform"]:
        assert c["predicted"]["decode_speedup"] >= c["target"] - 1e-9
        assert c["blocks"][0]["attention"] != "noop"
    # each target's pick: the MIP architecture of least measured held-out KL of the whole child
    picked = pick.pick(pick.PickConfig(run=str(run)))
    assert picked == mip.read_plan(str(run))
    for t in ("1.05", "1.15"):
        mine = [c for c in picked["children"] if f"{c['target']:.2f}" == t]
        kl = {c["name"]: c["measured_kl"] for c in mine}
        assert len(mine) == 2 and kl[picked["picked"][t]] == min(kl.values())
    assert all(c["measured_kl"] >= 0 for c in picked["children"] + picked["uniform"])

    # GKD on a child the random parent is far from (a MIP child of it is already close)
    damaged = {"name": "damaged", "target": 0, "blocks": [{"attention": "gqa2", "ffn": "ffn25"},
                                                          {"attention": "noop", "ffn": "ffn25"}]}
    plan["children"].append(damaged)
    (run / "mip.json").write_text(json.dumps(plan))
    child = "damaged"
    out = gkd.train(gkd.GkdConfig(run=str(run), child=child, steps=30, warmup=2, batch_size=4, lr=1e-3,
                                  mix=MIX, eval_examples=8))
    record = json.loads((out / "record.json").read_text())
    assert record["loss_last_20"] < record["loss_first_20"]
    assert record["kl_after"] < record["kl_before"]

    model = gkd.build_child(space.Space.read(run), child, "gkd")
    folder = export(model, tmp_path / "child", space.Space.read(run).cfg.parent, {"child": child})
    again = load(folder)
    x = ids(tok)
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)
    assert again.config().blocks == model.config().blocks


def test_gkd_micro_batches_give_the_whole_batch_gradient(parent_dir, tok):
    parent = load(parent_dir).eval()
    batch = data.heldout(tok, 4, 4, "forward=1,judge=1")[0]  # rows of unequal length: padding differs
    grads = []
    for micro in (4, 1, 3):
        child = load(parent_dir)
        child.layers[1] = child.layers[1].with_part("attention", bld.empty_layer())
        loss = gkd.accumulate(child, parent, batch, micro, "cosine_kl")
        grads.append((loss, [p.grad.clone() for p in child.parameters() if p.grad is not None]))
    (loss, whole), *parts = grads
    assert loss > 0
    for part_loss, part in parts:
        assert part_loss == pytest.approx(loss, rel=1e-5)
        assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(whole, part))


def test_exported_decilm_checkpoint(parent_dir, tmp_path, tok):
    """A mixed child: the config vLLM reads, no tensors for no-ops, and a round trip through ponder's loader."""
    parent = load(parent_dir)
    gqa = space.Variant(0, "attention", "gqa2", BlockConfig(n_heads_in_group=2, ffn_no_op=True))
    child_layers = [parent.layers[0].with_part("attention", space.init_variant(parent, gqa, {})),
                    parent.layers[1].with_part("attention", bld.empty_layer())]
    child = HeteroLlama(parent.cfg, child_layers)
    folder = export(child, tmp_path / "child", parent_dir, {})
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["DeciLMForCausalLM"] and cfg["model_type"] == "nemotron-nas"
    assert cfg["block_configs"][0]["attention"] == {"no_op": False, "n_heads_in_group": 2}
    assert cfg["block_configs"][1]["attention"]["no_op"] is True
    assert "ffn_mult" not in cfg["block_configs"][0]["ffn"]  # vLLM would prefer it over intermediate_size
    assert cfg["dtype"] == json.loads((Path(parent_dir) / "config.json").read_text())["dtype"]  # served alike
    names = set(load_file(str(folder / "model.safetensors")))
    assert "model.layers.1.self_attn.q_proj.weight" not in names and "lm_head.weight" not in names
    assert load_file(str(folder / "model.safetensors"))["model.layers.0.self_attn.k_proj.weight"].shape[0] == 64
    hf = AutoConfig.from_pretrained(folder, trust_remote_code=True)  # what vLLM reads
    assert hf.block_configs[1].attention.no_op and hf.block_configs[0].attention.n_heads_in_group == 2
    assert not hasattr(hf.block_configs[0].ffn, "ffn_mult")
    x = ids(tok)
    with torch.no_grad():
        assert torch.equal(load(folder)(x).logits, child(x).logits)


def test_ponder_nas_command_lists_the_steps(capsys):
    from ponder.cli import main

    with pytest.raises(SystemExit, match="usage: ponder nas"):
        main(["nas"])
    assert "ponder nas export" in capsys.readouterr().out
