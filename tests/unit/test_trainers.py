"""Trainer smoke tests: the loss falls, the weights move, a killed run resumes."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ponder.tasks import arith
from ponder.trainers import pretrain
from ponder.trainers.tokenizer import END, encode_example
from tests.conftest import dies_at_call


def test_tokenizer_round_trips_and_masks_the_prompt(tok):
    for text in ["Tom has 123 apples.\nAnswer: 45", "héllo 🙂 1,000.5 <|x|>", "  spaces  \t\n"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert [tok.decode([t]) for t in tok.encode("1234", add_special_tokens=False)] == ["1", "2", "3", "4"]
    p = arith.dataset("train", 1)[0]
    msgs = arith.example(p, "forward", random.Random(0))
    ids, n_prompt = encode_example(tok, msgs)
    assert tok.decode(ids[n_prompt:]) == msgs[1]["content"] + END
    rendered = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids[:n_prompt]) == rendered


def small(out, **kw) -> pretrain.PretrainConfig:
    args = dict(out=str(out), preset="micro", steps=120, batch_size=16, micro_batch=8, lr=3e-3, warmup=10,
                vocab_size=512, ckpt_every=50, compile=False, mix="forward=1")
    return pretrain.PretrainConfig(**{**args, **kw})


@pytest.mark.slow  # trains or spawns
def test_pretrain_loss_falls_and_weights_change(tmp_path):
    cfg = small(tmp_path / "m")
    torch.manual_seed(cfg.seed)
    tok = pretrain.build_tokenizer(cfg.vocab_size, seed=cfg.seed)
    init = pretrain.LlamaForCausalLM(pretrain.ModelPreset.from_name("micro").llama_config(tok)).state_dict()
    pretrain.train(cfg)
    rec = json.loads((tmp_path / "m" / "train_record.json").read_text())
    assert rec["loss_last_50"] < 0.6 * rec["loss_first_50"]
    trained = load_file(tmp_path / "m" / "model.safetensors")
    w = "model.layers.0.mlp.up_proj.weight"
    assert trained[w].dtype == torch.bfloat16  # exported in bf16
    assert not torch.equal(trained[w], init[w].to(torch.bfloat16))
    assert not (tmp_path / "m" / "checkpoint").exists()
    assert (tmp_path / "m" / "tokenizer.json").exists() and (tmp_path / "m" / "generation_config.json").exists()
    # --init continues from the trained model: it starts where that one ended, far below a random
    # model's ln(vocab) = 6.2
    pretrain.train(small(tmp_path / "c", init=str(tmp_path / "m"), steps=20, warmup=2, ckpt_every=100))
    cont = json.loads((tmp_path / "c" / "train_record.json").read_text())
    assert cont["loss_first_50"] < 0.5 * math.log(cfg.vocab_size)
    assert cont["init_record"] == rec
    assert (tmp_path / "c" / "tokenizer.json").read_text() == (tmp_path / "m" / "tokenizer.json").read_text()


@pytest.mark.slow  # trains or spawns
def test_checkpoints_are_atomic_and_resume(tmp_path, monkeypatch):
    cfg = small(tmp_path / "r", steps=80)
    real = pretrain.batch_loss
    monkeypatch.setattr(pretrain, "batch_loss", dies_at_call(real, 61))  # killed in step 60
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(cfg)
    state = torch.load(tmp_path / "r" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 50 and len(state["losses"]) == 50
    monkeypatch.setattr(pretrain, "batch_loss", real)
    pretrain.train(cfg)
    rec = json.loads((tmp_path / "r" / "train_record.json").read_text())
    assert rec["config"]["steps"] == 80 and (tmp_path / "r" / "model.safetensors").exists()


def test_judge_examples_take_their_own_chain_length():
    cfg = small("/unused", max_steps_per_problem=3, judge_max_steps=10)
    rng, drawn = random.Random(0), arith.dataset("train", 1)[0]
    judged = [pretrain.problem("judge", drawn, rng, cfg) for _ in range(200)]
    assert {len(p.steps) for p in judged} == set(range(2, 11)) and {arith.split_of(p) for p in judged} == {"train"}
    assert pretrain.problem("forward", drawn, rng, cfg) is drawn
    with pytest.raises(ValueError, match="judge_max_steps"):
        small("/unused", judge_max_steps=17)


def test_resumed_batches_match_an_unbroken_run(tok):
    cfg = small("/unused", mix="forward=0.5,judge=0.5", judge_max_steps=9)
    stream = arith.problems("train")
    unbroken = [pretrain.make_batch(step, cfg, tok, stream) for step in range(8)][-1]
    stream = arith.problems("train")
    for _ in range(7 * cfg.batch_size):  # what train() does on resume at step 7
        next(stream)
    resumed = pretrain.make_batch(7, cfg, tok, stream)
    assert all(torch.equal(x, y) for a, b in zip(unbroken, resumed) for x, y in zip(a, b))


@pytest.mark.slow  # trains or spawns
def test_cdpo_contrast_model_loss_falls_and_merged_weights_change(tmp_path):
    from ponder.trainers import cdpo

    base = tmp_path / "base"
    # fp32: the same numbers on CPUs with and without bf16 units
    pretrain.train(small(base, steps=20, ckpt_every=100, bf16=False))
    rows = [{"question": p.question(), "text": p.forward_solution()} for p in arith.dataset("train", 16)]
    # one batch of the same 16 trajectories per step: the loss is comparable from step to step
    cfg = cdpo.ContrastConfig(base=str(base), epochs=30, batch_size=16, micro_batch=8, lr=1e-2, bf16=False)
    rec = cdpo.finetune(cfg, rows, tmp_path / "pos")
    assert rec["loss_last_10"] < 0.95 * rec["loss_first"], rec  # same batch every step: a real fall
    assert rec["tensors_changed"] == rec["tensors_trained"] > 0
    merged, before = load_file(tmp_path / "pos" / "model.safetensors"), load_file(base / "model.safetensors")
    assert merged.keys() == before.keys()  # a plain model: the adapter is merged in
    assert not torch.equal(merged["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    assert (tmp_path / "pos" / "tokenizer.json").exists()


def test_bf16_defaults_to_what_the_device_computes_natively(tmp_path):
    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert pretrain.PretrainConfig(out=str(tmp_path)).bf16 is native  # resolved, so train_record.json says which
    assert pretrain.PretrainConfig(out=str(tmp_path), bf16=not native).bf16 is not native
