"""cDPO stage 2: the losses' identities, and a few steps that raise the chosen-vs-rejected margin."""

import random

import pytest
import torch
from transformers import LlamaForCausalLM

from ponder.engine.protocol import render_chat
from ponder.tasks import arith
from ponder.trainers import dpo
from ponder.trainers.pretrain import ModelPreset
from tests.conftest import dies_at_call


def logps(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(*shape, generator=g) * 3, -torch.rand(*shape, generator=g) * 3


def test_cdpo_with_unit_weights_is_dpo():
    (pc, rc), (pr, rr) = logps(4, 7), logps(4, 9, seed=1)
    ones = torch.ones(4, 9)
    cdpo = dpo.preference_loss(pc, rc, pr, rr, ones, "cdpo", 0.5)
    plain = dpo.preference_loss(pc, rc, pr, rr, torch.rand(4, 9), "dpo", 0.5)
    assert torch.allclose(cdpo, plain)
    expected = -torch.nn.functional.logsigmoid(0.5 * ((pc - rc).sum(-1) - (pr - rr).sum(-1))).mean()
    assert torch.allclose(cdpo, expected)


def test_cdpo_with_zero_weights_ignores_the_rejected_answer():
    (pc, rc), (pr, rr) = logps(3, 5), logps(3, 6, seed=2)
    pr = pr.clone().requires_grad_(True)
    loss = dpo.preference_loss(pc, rc, pr, rr, torch.zeros(3, 6), "cdpo", 1.0)
    loss.backward()
    assert torch.count_nonzero(pr.grad) == 0
    assert torch.allclose(loss, dpo.preference_loss(pc, rc, pr.detach() - 5, rr, torch.zeros(3, 6), "cdpo", 1.0))


def base_and_pairs(tmp_path, tok, n=16):
    torch.manual_seed(0)
    base = tmp_path / "base"
    LlamaForCausalLM(ModelPreset.from_name("micro").llama_config(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    rng = random.Random(0)
    pairs = []
    for p in arith.dataset("train", n):
        prompt = render_chat(tok, [{"role": "user", "content": arith.forward_prompt(p.question())}])
        chosen, rejected = (tok.encode(t, add_special_tokens=False) for t in (p.forward_solution(),
                                                                               p.wrong_solution(rng)))
        pairs.append({"question": p.question(), "prompt": prompt, "chosen": chosen, "rejected": rejected,
                      "weights": [rng.random() for _ in rejected]})
    return base, pairs


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, tok, monkeypatch):
    base, pairs = base_and_pairs(tmp_path, tok, n=8)

    def cfg(out):
        return dpo.DPOConfig(base=str(base), pos="-", neg="-", out=str(tmp_path / out), lora_rank=0, lr=1e-3,
                             epochs=3, batch_size=4, micro_batch=4, ckpt_every=2)

    unbroken = dpo.train(cfg("a"), pairs)
    real = dpo.preference_loss
    monkeypatch.setattr(dpo, "preference_loss", dies_at_call(real, 4))
    with pytest.raises(KeyboardInterrupt):
        dpo.train(cfg("b"), pairs)
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists()
    monkeypatch.setattr(dpo, "preference_loss", real)
    resumed = dpo.train(cfg("b"), pairs)
    assert resumed["loss_last_10"] == pytest.approx(unbroken["loss_last_10"], rel=1e-4)


@pytest.mark.slow  # trains or spawns
def test_a_few_steps_raise_the_margin_and_change_the_weights(tmp_path, tok):
    base, pairs = base_and_pairs(tmp_path, tok)
    for loss, lora in (("cdpo", 4), ("dpo", 0)):
        cfg = dpo.DPOConfig(base=str(base), pos="-", neg="-", out=str(tmp_path / loss), loss=loss, lora_rank=lora,
                            lr=5e-3, epochs=6, batch_size=8, micro_batch=4, ckpt_every=5)
        rec = dpo.train(cfg, pairs)
        assert rec["margin_last_10"] > rec["margin_first"] + 0.5, rec
        assert rec["tensors_changed"] == rec["tensors_trained"] > 0
        assert (tmp_path / loss / "model.safetensors").exists()
