"""cDPO, stage 1: the positive and negative models behind contrastive estimation (Lin et al. 2024).

    ponder train cdpo-contrast --base models/ponder-small

1. Sample the base model (through vLLM) on training problems, `samples` per problem.
2. Split the trajectories by the task's checker into correct and incorrect.
3. Fine-tune one LoRA adapter on the correct ones (positive) and one on the
   incorrect ones (negative): completion-only loss, the paper's LoRA r=8,
   lr 3e-4 (its 1 epoch; more here, see `epochs`, because a tiny model's two
   adapters barely part after one).
4. Merge each adapter into a copy of the base and save it as a full model
   (with the base's tokenizer) that ponder serves beside the base
   (`--model ponder-small --model ponder-small-pos --model ponder-small-neg`); the
   critical_tokens strategy contrasts them token by token. Merged, not served
   as LoRA: vLLM's CPU LoRA path fails on prompt log-probs (its punica CPU
   wrapper maps LoRA logits per request, not per prompt token), and scoring is
   all prompt log-probs. At 3.6M parameters a merged copy costs 14 MB.

Stage 2, token-level DPO weighted by these models' critical tokens, is trainers/dpo.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ponder import flags
from ponder.tasks import ARITH, arith
from ponder.trainers.tokenizer import encode_example
from ponder.trainers.toolbox import Loop, batch_loss, collate, declare_task, save_atomic


@dataclass
class ContrastConfig(Loop):
    base: str = field(default="models/ponder-small", metadata={"help": "the base model folder"})
    out_prefix: str = field(default="", metadata={"help": "adapters go to <prefix>-pos and <prefix>-neg "
                                                           "(default: the base folder's path)"})
    problems: int = field(default=2000, metadata={"help": "training problems to sample"})
    samples: int = field(default=4, metadata={"help": "trajectories per problem"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    rank: int = field(default=8, metadata={"help": "LoRA rank (paper: 8)"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate (paper: 3e-4)"})
    epochs: int = field(default=2, metadata={"help": "passes over each set (paper: 1)"})
    batch_size: int = field(default=32, metadata={"help": "trajectories per step"})
    micro_batch: int = field(default=8, metadata={"help": "trajectories per forward pass"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.problems < 1 or self.samples < 1 or self.epochs < 1:
            raise ValueError("problems, samples and epochs must be >= 1")

    def out(self, kind: str) -> Path:
        return Path(f"{self.out_prefix or self.base.rstrip('/')}-{kind}")


async def sample(cfg: ContrastConfig) -> list[dict]:
    """Trajectories of the base model on training problems, each marked correct or not."""
    from ponder.engine.protocol import SamplingSpec, collect, render_chat
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine

    engine = VllmEngine(VllmConfig(model=cfg.base))
    tok = engine.tokenizer
    problems = arith.dataset("train", cfg.problems, seed=cfg.seed + 1)
    try:
        async def one(i: int, p: arith.Problem, j: int) -> dict:
            ids = render_chat(tok, [{"role": "user", "content": arith.forward_prompt(p.question())}])
            spec = SamplingSpec(max_tokens=256, temperature=cfg.temperature, seed=cfg.seed * 1_000_003 + i * 64 + j)
            out = await collect(engine.generate(list(ids), spec, f"cdpo-{i}-{j}", stream=False))
            return {"question": p.question(), "text": out.text, "token_ids": list(out.token_ids),
                    "correct": ARITH.correct(out.text, p.answer)}

        jobs = [one(i, p, j) for i, p in enumerate(problems) for j in range(cfg.samples)]
        from tqdm.asyncio import tqdm as atqdm

        return list(await atqdm.gather(*jobs, desc="sample base model"))
    finally:
        await engine.aclose()


def finetune(cfg: ContrastConfig, trajectories: list[dict], out: Path) -> dict:
    """One LoRA adapter on the given trajectories; returns its training record."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(cfg.base)
    model = LlamaForCausalLM.from_pretrained(cfg.base, dtype=torch.float32)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora).to(cfg.device)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    rows = [encode_example(tok, [{"role": "user", "content": arith.forward_prompt(t["question"])},
                                 {"role": "assistant", "content": t["text"]}]) for t in trajectories]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    losses = []
    steps = [i for _ in range(cfg.epochs) for i in range(0, len(rows), cfg.batch_size)]
    model.train()
    for i in tqdm(steps, desc=f"lora {out.name}"):
        if i == 0:
            rng.shuffle(rows)
        opt.zero_grad(set_to_none=True)
        losses.append(batch_loss(model, collate(rows[i : i + cfg.batch_size], tok.pad_token_id, cfg.micro_batch),
                                 cfg))
        opt.step()
    changed = sum(int(not torch.equal(p.detach(), before[n])) for n, p in model.named_parameters() if n in before)
    merged = model.merge_and_unload().to(torch.bfloat16)  # what vLLM serves it in; half the bytes
    save_atomic(out, lambda d: (merged.save_pretrained(d), tok.save_pretrained(d), declare_task(d)))
    return {"trajectories": len(rows), "steps": len(steps), "loss_first": losses[0],
            "loss_last_10": sum(losses[-10:]) / len(losses[-10:]), "tensors_changed": changed,
            "tensors_trained": len(before)}


def train(cfg: ContrastConfig) -> dict:
    t0 = time.time()
    trajectories = asyncio.run(sample(cfg))
    good = [t for t in trajectories if t["correct"]]
    bad = [t for t in trajectories if not t["correct"]]
    print(f"sampled {len(trajectories)} trajectories: {len(good)} correct, {len(bad)} incorrect")
    record = {"config": asdict(cfg), "sampled": len(trajectories), "correct": len(good),
              "sample_seconds": round(time.time() - t0, 1)}
    for kind, subset in (("pos", good), ("neg", bad)):
        record[kind] = finetune(cfg, subset, cfg.out(kind))
    record["total_seconds"] = round(time.time() - t0, 1)
    for kind in ("pos", "neg"):
        (cfg.out(kind) / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(ContrastConfig, argv, "ponder train cdpo-contrast", __doc__)
    print(json.dumps(train(cfg), indent=2))


if __name__ == "__main__":
    main()
