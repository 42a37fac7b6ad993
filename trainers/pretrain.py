"""From-scratch training of a tiny Llama on the built-in arithmetic task.

    ponder-train pretrain --out models/ponder-tiny --preset tiny --steps 6000

Every step draws a fresh batch from the task generator (seeded by step, so a
resumed run sees exactly the batches it would have seen), mixes the four
formats, and takes the loss on the assistant reply only. Checkpoints are
written atomically (tmp folder + rename) and training resumes from the last one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ponder.tasks import arith
from ponder.trainers.tokenizer import END, build_tokenizer, encode_example

IGNORE = -100


@dataclass(frozen=True)
class ModelPreset:
    """A Llama shape. head_dim is 64: vLLM's CPU attention refuses 16."""

    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    max_len: int = 1024

    @classmethod
    def from_name(cls, name: str) -> ModelPreset:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name]

    def llama_config(self, tok: PreTrainedTokenizerFast) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=len(tok),
            hidden_size=self.d_model,
            intermediate_size=self.d_ff,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.n_head,
            head_dim=self.d_model // self.n_head,
            max_position_embeddings=self.max_len,
            tie_word_embeddings=True,
            eos_token_id=tok.convert_tokens_to_ids(END),
            pad_token_id=tok.pad_token_id,
            bos_token_id=None,
        )


PRESETS = {
    "micro": ModelPreset(n_layer=2, d_model=128, n_head=2, d_ff=256),  # smoke tests, 0.4M
    "tiny": ModelPreset(n_layer=4, d_model=256, n_head=4, d_ff=768),  # 3.6M
    "small": ModelPreset(n_layer=6, d_model=256, n_head=4, d_ff=768),  # 5.3M
    "base": ModelPreset(n_layer=8, d_model=384, n_head=6, d_ff=1152),  # 14.6M
}


@dataclass
class PretrainConfig:
    out: str = field(metadata={"help": "output folder: the final model, plus checkpoint/ while training"})
    preset: str = field(default="tiny", metadata={"help": f"model shape, one of {sorted(PRESETS)}"})
    steps: int = field(default=3600, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    micro_batch: int = field(default=4, metadata={"help": "examples per forward pass (sorted by length)"})
    lr: float = field(default=1.5e-3, metadata={"help": "peak learning rate (AdamW)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    warmup: int = field(default=200, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    mix: str = field(default="forward=0.3,judge=0.3,backward=0.3,backward_question=0.1",
                     metadata={"help": "format=weight,... sampling mix of the task formats"})
    max_steps_per_problem: int = field(default=5, metadata={"help": "task difficulty: longest chain"})
    max_value: int = field(default=999, metadata={"help": "task difficulty: largest intermediate value"})
    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size"})
    seed: int = field(default=0, metadata={"help": "seeds the tokenizer, the weights and every batch"})
    ckpt_every: int = field(default=500, metadata={"help": "steps between atomic checkpoints"})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = all cores)"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast (1.4x faster on AVX512-BF16 CPUs)"})
    compile: bool = field(default=True, metadata={"help": "torch.compile the forward (1.3x on CPU, ~1 min to compile)"})

    def __post_init__(self) -> None:
        ModelPreset.from_name(self.preset)
        weights = self.mixture()
        if not weights or any(w < 0 for w in weights.values()):
            raise ValueError("mix needs positive weights")
        if self.warmup >= self.steps:
            raise ValueError("warmup must be shorter than steps")

    def mixture(self) -> dict[str, float]:
        out = {}
        for part in self.mix.split(","):
            name, _, weight = part.partition("=")
            if name not in arith.FORMATS:
                raise ValueError(f"unknown format {name!r} in mix; expected {arith.FORMATS}")
            out[name] = float(weight)
        return out

    def task(self) -> arith.ArithConfig:
        return arith.ArithConfig(max_steps=self.max_steps_per_problem, max_value=self.max_value)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_batch(step: int, cfg: PretrainConfig, tok: PreTrainedTokenizerFast,
               stream: Iterator[arith.Problem]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One step's examples: a seeded mix of the task formats, as micro-batches."""
    rng = random.Random(f"{cfg.seed}-batch-{step}")
    mix = cfg.mixture()
    formats = rng.choices(list(mix), weights=list(mix.values()), k=cfg.batch_size)
    rows = [encode_example(tok, arith.example(next(stream), fmt, rng)) for fmt in formats]
    return collate(rows, tok.pad_token_id, cfg.micro_batch)


def collate(rows: list[tuple[list[int], int]], pad_id: int,
            micro_batch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(token ids, prompt length) rows -> micro-batches of similar length: (ids, mask, labels).

    Judge examples are three times longer than the rest; sorting by length and
    padding each micro-batch on its own cuts the padding (and the step time)
    by about a third. Labels are -100 on the prompt and the padding.
    """
    rows = sorted(rows, key=lambda r: len(r[0]))
    batches = []
    for chunk in (rows[i : i + micro_batch] for i in range(0, len(rows), micro_batch)):
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), IGNORE)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (row, n_prompt) in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
            mask[i, : len(row)] = 1
        batches.append((ids, mask, labels))
    return batches


def batch_loss(model, batches, cfg) -> float:
    """Backward over the micro-batches; returns the mean loss per target token.

    `cfg` needs `device` and `bf16` (PretrainConfig and the cDPO config have both).
    """
    n_total = sum(int((labels[:, 1:] != IGNORE).sum()) for _, _, labels in batches)
    total = 0.0
    for ids, mask, labels in batches:
        ids, mask, labels = ids.to(cfg.device), mask.to(cfg.device), labels.to(cfg.device)
        n = int((labels[:, 1:] != IGNORE).sum())
        with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * (n / n_total)
        loss.backward()
        total += loss.item()
    return total


def save_atomic(folder: Path, write) -> None:
    """Write into folder.tmp, then rename over folder: a crash leaves the old one."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def train(cfg: PretrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    torch.manual_seed(cfg.seed)
    if (ckpt / "state.pt").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(ckpt)
        model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        state = torch.load(ckpt / "state.pt", weights_only=False)
        start, spent = state["step"], state["seconds"]
        print(f"resuming from {ckpt} at step {start}")
    else:
        tok = build_tokenizer(cfg.vocab_size, seed=cfg.seed)
        model = LlamaForCausalLM(ModelPreset.from_name(cfg.preset).llama_config(tok))
        state, start, spent = None, 0, 0.0
    model.to(cfg.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config: {json.dumps(asdict(cfg))}\nparameters: {n_params:,}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    # The problem stream is replayed up to `start` so resumed batches match.
    stream = arith.problems("train", seed=cfg.seed, cfg=cfg.task())
    for _ in range(start * cfg.batch_size):
        next(stream)

    def checkpoint(step: int, losses: list[float]) -> None:
        def write(d: Path) -> None:
            model.save_pretrained(d)
            tok.save_pretrained(d)
            torch.save({"step": step, "optimizer": opt.state_dict(), "losses": losses,
                        "seconds": spent + time.time() - t0}, d / "state.pt")
        save_atomic(ckpt, write)

    losses: list[float] = state["losses"] if state else []
    model.train()
    if cfg.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        losses.append(batch_loss(model, make_batch(step, cfg, tok, stream), cfg))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", lr=f"{lr_at(step, cfg):.2e}")
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1, losses)
    export(model, tok, out, cfg, losses, spent + time.time() - t0)
    shutil.rmtree(ckpt, ignore_errors=True)
    return out


def export(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out: Path,
           cfg: PretrainConfig, losses: list[float], seconds: float) -> None:
    """The servable folder: config, safetensors, tokenizer, generation config."""
    model.generation_config = GenerationConfig(
        eos_token_id=tok.convert_tokens_to_ids(END), pad_token_id=tok.pad_token_id,
        do_sample=False, max_new_tokens=256)
    model.to("cpu").save_pretrained(out)
    tok.save_pretrained(out)
    record = {"config": asdict(cfg), "train_seconds": round(seconds, 1),
              "parameters": sum(p.numel() for p in model.parameters()),
              "loss_first_50": sum(losses[:50]) / max(1, len(losses[:50])),
              "loss_last_50": sum(losses[-50:]) / max(1, len(losses[-50:]))}
    (out / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
    os.sync()


def main(argv: list[str] | None = None) -> None:
    from transformers import HfArgumentParser

    (cfg,) = HfArgumentParser(PretrainConfig).parse_args_into_dataclasses(argv)
    train(cfg)


if __name__ == "__main__":
    main()
