"""RevThink (Chen et al. 2024): a teacher behind the OpenAI API writes forward and backward
reasoning; a student learns all three tasks at once.

    ponder train revthink-data --teacher-base-url http://localhost:8000/v1 --teacher-model ponder-small \
        --teacher-strategy '{"name": "tournament", "n": 8}' --problems 2000 --out runs/revthink
    ponder train revthink --data runs/revthink --student models/student --out runs/revthink-student \
        [--objectives forward] [--fraction 0.1]

Data: for each training question Q with gold answer A the teacher (any
OpenAI-compatible server; ponder itself with a strategy distills test-time
compute) writes R_f for Q, a backward question Q_b for "Q. The correct answer
is A.", and R_b for Q_b. A sample is kept when R_f's answer is A and R_b
recovers the quantity Q_b masked (on the built-in task both checks are exact,
and every equation of R_f and R_b must hold; `--check teacher` asks the
teacher instead, for tasks without gold values).
Every item is appended to items.jsonl as it finishes, so a rerun asks only
what is missing; the dataset is kept.jsonl, with dropped.jsonl saying why.

The student must be weaker than the teacher and must not have seen the task
solved: e.g. `ponder train pretrain --preset tiny --mix
question=0.2,arithmetic=0.5,numbers=0.3 --out runs/student`, a "base model of
this world" that has read the task's questions, listed their numbers and drilled
its arithmetic, never a problem solved (bench/RESULTS.md, RevThink section, has
the measured recipe; bench/student_skills.py measures those skills).

Training: loss = (CE(Q -> R_f) + CE(Q -> Q_b) + CE(Q_b -> R_b)) / 3 with the
prompt masked (the official code forgot to), or `--objectives forward` for the
SFT baseline on the same data. Written on pretrain's completion-only loop, not
TRL's SFTTrainer: TRL 1.16 would add datasets, pyarrow and pandas for what is
here one loop over three chat formats, and HF Trainer's checkpoints are not
written atomically.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ponder import flags
from ponder.tasks import ARITH, arith
from ponder.tasks.formats import masked_quantity
from ponder.trainers.tokenizer import encode_example
from ponder.trainers.toolbox import Loop, batch_loss, collate, save_atomic, save_model

OBJECTIVES = ("forward", "backward_question", "backward")


@dataclass
class DataConfig:
    teacher_base_url: str = field(metadata={"help": "the teacher's OpenAI-compatible /v1 URL"})
    teacher_model: str = field(metadata={"help": "the teacher's model id"})
    out: str = field(metadata={"help": "output folder: items.jsonl, kept.jsonl, dropped.jsonl, record.json"})
    teacher_strategy: str = field(default="", metadata={"help": "ponder strategy for the forward reasoning "
                                                                "(a name or JSON object; empty: none)"})
    teacher_api_key: str = field(default="EMPTY", metadata={"help": "the teacher's API key"})
    task: str = field(default="arith", metadata={"help": "the built-in task"})
    problems: int = field(default=2000, metadata={"help": "training questions to ask about"})
    temperature: float = field(default=0.8, metadata={"help": "teacher temperature (paper: 0.8)"})
    check: str = field(default="exact", metadata={"help": "'exact' (gold values) or 'teacher' (the teacher judges "
                                                          "whether Q_b's answer matches what Q gave)"})
    concurrency: int = field(default=32, metadata={"help": "items in flight"})
    retries: int = field(default=3, metadata={"help": "attempts per teacher call"})
    seed: int = field(default=0, metadata={"help": "seeds the problems and the teacher's sampling"})

    def __post_init__(self) -> None:
        if self.task != "arith":
            raise ValueError("the built-in task is 'arith'")
        if self.check not in ("exact", "teacher"):
            raise ValueError("check must be 'exact' or 'teacher'")


def _strategy(spec: str):
    return (json.loads(spec) if spec.startswith("{") else spec) if spec else None


async def ask_teacher(cfg: DataConfig) -> dict:
    """Ask for every missing item (resumable), then split items into kept and dropped."""
    from openai import AsyncOpenAI

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    items_path = out / "items.jsonl"
    done = {json.loads(line)["i"]: json.loads(line) for line in items_path.read_text().splitlines()} \
        if items_path.exists() else {}
    problems = arith.dataset("train", cfg.problems, seed=cfg.seed + 7)
    sem = asyncio.Semaphore(cfg.concurrency)
    strategy = _strategy(cfg.teacher_strategy)
    async with AsyncOpenAI(base_url=cfg.teacher_base_url, api_key=cfg.teacher_api_key,
                           max_retries=cfg.retries, timeout=600) as client:

        async def chat(prompt: str, seed: int, usage: Counter, with_strategy: bool = False) -> str:
            extra = {"strategy": strategy} if with_strategy and strategy else {}
            r = await client.chat.completions.create(
                model=cfg.teacher_model, messages=[{"role": "user", "content": prompt}], max_tokens=256,
                temperature=cfg.temperature, seed=seed, extra_body=extra or None)
            usage.update(prompt_tokens=r.usage.prompt_tokens, completion_tokens=r.usage.completion_tokens)
            return r.choices[0].message.content or ""

        async def one(i: int, p: arith.Problem) -> dict:
            async with sem:
                q, seed, usage = p.question(), cfg.seed * 1_000_003 + 3 * i, Counter()
                forward = await chat(arith.forward_prompt(q), seed, usage, with_strategy=True)
                bq = (await chat(arith.backward_question_prompt(q, p.answer), seed + 1, usage)).strip()
                backward = await chat(arith.backward_prompt(bq), seed + 2, usage)
                item = {"i": i, "question": q, "answer": p.answer, "forward": forward,
                        "backward_question": bq, "backward": backward,
                        "masked": masked_quantity(q, bq, str(p.answer))}
                if cfg.check == "teacher":
                    verdict = await chat(f"Question: {q}\nInverse question: {bq}\nIts solution: {backward}\n"
                                         "Does the solution recover the quantity the inverse question hides? "
                                         "Answer yes or no.", seed + 3, usage)
                    item["teacher_check"] = verdict.strip().lower().startswith("yes")
                item["usage"] = dict(usage)  # the teacher's tokens for this item, strategy included
                with items_path.open("a") as f:  # one line per finished item: a rerun skips it
                    f.write(json.dumps(item) + "\n")
                return item

        todo = [one(i, p) for i, p in enumerate(problems) if i not in done]
        from tqdm.asyncio import tqdm as atqdm

        for item in await atqdm.gather(*todo, desc="ask the teacher"):
            done[item["i"]] = item
    kept, dropped = [], []
    for item in (done[i] for i in sorted(done)):
        why = drop_reason(item, cfg.check)
        (dropped if why else kept).append({**item, "dropped": why} if why else item)
    (out / "kept.jsonl").write_text("".join(json.dumps(k) + "\n" for k in kept))
    (out / "dropped.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dropped))
    record = {"config": asdict(cfg), "asked": len(done), "kept": len(kept), "yield": len(kept) / max(1, len(done)),
              "dropped_by_reason": dict(Counter(d["dropped"] for d in dropped)),
              "teacher_tokens": dict(sum((Counter(item.get("usage", {})) for item in done.values()), Counter()))}
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def drop_reason(item: dict, check: str = "exact") -> str | None:
    """Why an item is not kept (None: kept): the paper's two filters, then (where a task can
    check them) every equation of both reasonings, so the student is not taught an answer
    reached through a slip ("379 + 29 = 308" cancelled out by a later step)."""
    if not ARITH.correct(item["forward"], item["answer"]):
        return "forward answer is not the gold answer"
    if check == "teacher":
        return None if item.get("teacher_check") else "teacher says the backward reasoning is inconsistent"
    if item["masked"] is None:
        return "backward question does not hide exactly one quantity of the question"
    got = ARITH.extract(item["backward"])
    if got is None or got != item["masked"]:
        return "backward reasoning does not recover it"
    if not (arith.equations_hold(item["forward"]) and arith.equations_hold(item["backward"])):
        return "a reasoning has a false equation"
    return None


@dataclass
class StudentConfig(Loop):
    data: str = field(metadata={"help": "folder with kept.jsonl (from revthink-data)"})
    student: str = field(metadata={"help": "the student model folder (any Hugging Face causal LM)"})
    out: str = field(metadata={"help": "output folder: the trained model, plus checkpoint/ while training"})
    objectives: str = field(default="all", metadata={"help": "'all' (RevThink) or 'forward' (the SFT baseline)"})
    fraction: float = field(default=1.0, metadata={"help": "share of the kept data to train on"})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank (paper: 16-32); 0 = full fine-tune"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    epochs: int = field(default=3, metadata={"help": "passes over the data (paper: 3 on math)"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    micro_batch: int = field(default=8, metadata={"help": "examples per forward pass"})
    ckpt_every: int = field(default=100, metadata={"help": "steps between atomic checkpoints"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objectives not in ("all", "forward") or not 0 < self.fraction <= 1:
            raise ValueError("objectives is 'all' or 'forward'; fraction in (0, 1]")


def examples(kept: list[dict], objectives: str) -> list[list[dict[str, str]]]:
    """Chat examples: every objective of every kept item (equal weights: one example each)."""
    out = []
    for k in kept:
        pairs = [(arith.forward_prompt(k["question"]), k["forward"])]
        if objectives == "all":
            pairs += [(arith.backward_question_prompt(k["question"], k["answer"]), k["backward_question"]),
                      (arith.backward_prompt(k["backward_question"]), k["backward"])]
        out += [[{"role": "user", "content": u}, {"role": "assistant", "content": a}] for u, a in pairs]
    return out


def train(cfg: StudentConfig) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kept = [json.loads(line) for line in Path(cfg.data, "kept.jsonl").read_text().splitlines()]
    random.Random(cfg.seed).shuffle(kept)
    kept = kept[: max(1, round(cfg.fraction * len(kept)))]
    tok = AutoTokenizer.from_pretrained(cfg.student)
    rows = [encode_example(tok, ex) for ex in examples(kept, cfg.objectives)]
    out, ckpt = Path(cfg.out), Path(cfg.out) / "checkpoint"
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.student, dtype=torch.float32)
    if cfg.lora_rank:
        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                                                 task_type="CAUSAL_LM", target_modules="all-linear"))
    model.to(cfg.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    state = torch.load(ckpt / "state.pt", weights_only=False) if (ckpt / "state.pt").exists() else None
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    steps = [(e, i) for e in range(cfg.epochs) for i in range(0, len(rows), cfg.batch_size)]
    losses: list[float] = state["losses"] if state else []
    t0 = time.time() - (state["seconds"] if state else 0.0)
    model.train()
    for step in tqdm(range(len(losses), len(steps)), initial=len(losses), total=len(steps),
                     desc=f"revthink {cfg.objectives}"):
        epoch, start = steps[step]
        order = list(range(len(rows)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        opt.zero_grad(set_to_none=True)
        batch = [rows[j] for j in order[start : start + cfg.batch_size]]
        losses.append(batch_loss(model, collate(batch, tok.pad_token_id, cfg.micro_batch), cfg))
        opt.step()
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < len(steps):
            save_atomic(ckpt, lambda d: torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                    "losses": losses, "seconds": time.time() - t0}, d / "state.pt"))
    record = {"config": asdict(cfg), "items": len(kept), "examples": len(rows), "steps": len(steps),
              "train_seconds": round(time.time() - t0, 1), "loss_first": losses[0],
              "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
              "tensors_changed": sum(int(not torch.equal(p.detach(), b)) for p, b in zip(trainable, before)),
              "tensors_trained": len(trainable)}
    final = model.merge_and_unload() if cfg.lora_rank else model
    save_model(out, final, tok, record)
    return record


def main_data(argv: list[str] | None = None) -> None:
    cfg = flags.parse(DataConfig, argv, "ponder train revthink-data", __doc__)
    print(json.dumps(asyncio.run(ask_teacher(cfg)), indent=2))


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(StudentConfig, argv, "ponder train revthink", __doc__)
    print(json.dumps(train(cfg), indent=2))


if __name__ == "__main__":
    main()
