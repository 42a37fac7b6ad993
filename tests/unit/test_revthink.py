
"""RevThink: the data step against a live OpenAI-compatible server (ponder's app on a scripted engine),
and a student whose three losses fall."""

import asyncio
import json
import random

import pytest
import torch
import uvicorn
from transformers import LlamaForCausalLM

from ponder.server.app import create_app
from ponder.server.serving import Limits, OpenAIServing
from ponder.tasks import ARITH, arith
from ponder.trainers import revthink
from ponder.trainers.pretrain import ModelPreset
from tests.fake_engine import FakeEngine

PROBLEMS = {p.question(): p for p in arith.dataset("train", 6, seed=7)}


def teacher(prompt: str, spec, model) -> str:
    """A wrong forward answer on every third problem; everything else by the book."""
    for q, p in PROBLEMS.items():
        if prompt.endswith(q + "<|end|>\n<|assistant|>\n") and "inverse" not in prompt:
            return p.forward_solution() if list(PROBLEMS).index(q) % 3 else "1 + 1 = 2\nAnswer: 2"
        if "inverse question" in prompt and q in prompt:
            return p.backward_question(1)
        if "backward question" in prompt and p.backward_question(1) in prompt:
            return p.backward_solution(1)
    return "?"


async def serve_teacher(tok):
    engine = FakeEngine(tok, teacher, name="teacher", max_model_len=1024)
    app = create_app(OpenAIServing([engine], Limits()))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", ws="none"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, engine, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"


async def test_data_keeps_only_consistent_items_and_resumes(tok, tmp_path):
    server, task, engine, url = await serve_teacher(tok)
    try:
        cfg = revthink.DataConfig(teacher_base_url=url, teacher_model="teacher", out=str(tmp_path), problems=6)
        rec = await revthink.ask_teacher(cfg)
        asked = len(engine.calls)
        assert rec["asked"] == 6 and rec["kept"] == 4 and asked == 18  # three calls per item
        kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
        assert all(revthink.drop_reason(k) is None and ARITH.correct(k["forward"], k["answer"]) for k in kept)
        dropped = [json.loads(line) for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
        assert {d["dropped"] for d in dropped} == {"forward answer is not the gold answer"}
        tokens = rec["teacher_tokens"]  # summed from each item's own usage, so it survives a resume
        assert tokens["completion_tokens"] > 0 and tokens["prompt_tokens"] > tokens["completion_tokens"]
        rec = await revthink.ask_teacher(cfg)  # everything answered: nothing is asked again
        assert len(engine.calls) == asked and rec["kept"] == 4 and rec["teacher_tokens"] == tokens
    finally:
        server.should_exit = True
        await task


def test_an_answer_reached_through_a_false_equation_is_dropped():
    p = arith.dataset("train", 1)[0]
    item = {"answer": p.answer, "forward": p.forward_solution(), "backward_question": p.backward_question(0),
            "backward": p.backward_solution(0), "masked": str(p.quantities[0])}
    assert revthink.drop_reason(item) is None
    first = p.forward_solution().splitlines()[0]
    a, op, b, _, c = first.split()
    slipped = f"{a} {op} {b} = {int(c) + 1}"  # the next line still reads the right value: answer unchanged
    item["forward"] = p.forward_solution().replace(first, slipped, 1)
    assert ARITH.correct(item["forward"], p.answer)
    assert revthink.drop_reason(item) == "a reasoning has a false equation"


@pytest.mark.slow  # trains or spawns
def test_student_learns_all_three_objectives(tok, tmp_path):
    torch.manual_seed(0)
    student = tmp_path / "student"
    LlamaForCausalLM(ModelPreset.from_name("micro").llama_config(tok)).save_pretrained(student)
    tok.save_pretrained(student)
    rng = random.Random(0)
    kept = []
    for p in arith.dataset("train", 24):
        masked = rng.randrange(len(p.quantities))
        kept.append({"question": p.question(), "answer": p.answer, "forward": p.forward_solution(),
                     "backward_question": p.backward_question(masked), "backward": p.backward_solution(masked)})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "kept.jsonl").write_text("".join(json.dumps(k) + "\n" for k in kept))
    cfg = revthink.StudentConfig(data=str(tmp_path / "data"), student=str(student), out=str(tmp_path / "out"),
                                 lr=3e-3, epochs=8, batch_size=24, micro_batch=12, ckpt_every=4, bf16=False)
    rec = revthink.train(cfg)
    assert rec["examples"] == 3 * 24 and rec["tensors_changed"] == rec["tensors_trained"]
    from transformers import AutoTokenizer

    trained = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    fresh = LlamaForCausalLM.from_pretrained(student)
    t = AutoTokenizer.from_pretrained(tmp_path / "out")
    from ponder.trainers.tokenizer import encode_example
    from ponder.trainers.toolbox import batch_loss, collate

    for objective in range(3):  # each objective's own loss falls, and the prompt is masked out of it
        rows = [encode_example(t, revthink.examples([k], "all")[objective]) for k in kept[:8]]
        losses = []
        for model in (fresh, trained):
            model.zero_grad()
            losses.append(batch_loss(model, collate(rows, t.pad_token_id, 8), cfg))
        assert losses[1] < 0.8 * losses[0], (objective, losses)
        ids, mask, labels = collate(rows, t.pad_token_id, 8)[0]
        assert all((labels[i, : n] == -100).all() for i, (_, n) in enumerate(sorted(rows, key=lambda r: len(r[0]))))
