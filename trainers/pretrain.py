"""From-scratch training of a tiny Llama on the built-in arithmetic task.

    ponder train pretrain --out models/ponder-small   # the defaults are ponder-small's recipe

Every step draws a fresh batch from the task generator (seeded by step, so a
resumed run sees exactly the batches it would have seen), mixes the four
formats, and takes the loss on the assistant reply only. Checkpoints are
written atomically (tmp folder + rename) and training resumes from the last one.

Data parallel under torchrun (trainers/distributed.py): every rank draws the
step's whole batch and trains on every world-th micro-batch of it, so the
global batch is the one-process batch and a checkpoint resumes on any number
of ranks. `--optimizer adamw` all-reduces gradients (DDP); `--optimizer demo`
(trainers/demo.py) exchanges only the top-k DCT components of the momentum;
`--optimizer signum`, a reference for DeMo, steps by the sign of the DDP-synced momentum.
"""

from __future__ import annotations

import copy
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
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ponder import flags
from ponder.tasks import arith
from ponder.trainers import distributed
from ponder.trainers.demo import DeMo, Signum
from ponder.trainers.tokenizer import END, build_tokenizer, encode_example
from ponder.trainers.toolbox import (
    Loop,
    batch_loss,
    collate,
    count_targets,
    declare_task,
    lr_at,
    save_atomic,
)


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
class PretrainConfig(Loop):
    out: str = field(metadata={"help": "output folder: the final model, plus checkpoint/ while training"})
    preset: str = field(default="small", metadata={"help": f"model shape, one of {sorted(PRESETS)}"})
    init: str = field(default="", metadata={
        "help": "continue from this model folder (its weights, shape and tokenizer; a fresh optimizer) "
                "instead of random weights: e.g. to teach a trained model a changed format"})
    steps: int = field(default=5000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    micro_batch: int = field(default=4, metadata={"help": "examples per forward pass (sorted by length)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    warmup: int = field(default=250, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "decoupled weight decay of the matrices"})
    mix: str = field(default=arith.DEFAULT_MIX,
                     metadata={"help": "format=weight,... sampling mix of the task formats"})
    max_steps_per_problem: int = field(default=5, metadata={"help": "task difficulty: longest chain"})
    judge_max_steps: int = field(default=0, metadata={
        "help": "judge examples' longest chain (0: --max-steps-per-problem): longer than the solver's, so the "
                "judge checks chains past those it learnt to solve (the hard split's)"})
    max_value: int = field(default=999, metadata={"help": "task difficulty: largest intermediate value"})
    many_paths: bool = field(default=False, metadata={
        "help": "forward and judge solutions take one of many paths (a + or - step done whole or in parts, "
                "346 + 150 = 496 + 8 = 504): other computations to one answer, whose slips differ (what "
                "self-consistency votes over)"})
    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size"})
    ckpt_every: int = field(default=250, metadata={"help": "steps between atomic checkpoints"})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = all cores)"})
    compile: bool = field(default=True, metadata={"help": "torch.compile the forward (1.3x on CPU, ~1 min to compile)"})
    optimizer: str = field(default="adamw", metadata={
        "help": "adamw (betas 0.9, 0.95; DDP all-reduces gradients), demo (DeMo: ranks exchange only the "
                "top-k DCT components of their momentum; Peng et al. 2024, arXiv:2411.19870) or signum (DDP "
                "all-reduces; the sign of the momentum: DeMo's step with nothing compressed, a reference)"})
    demo_beta: float = field(default=0.999, metadata={"help": "DeMo: momentum decay (the paper's compression decay)"})
    demo_chunk: int = field(default=64, metadata={"help": "DeMo: largest DCT chunk side (chunks of <= 64 x 64)"})
    demo_topk: int = field(default=32, metadata={"help": "DeMo: DCT coefficients each rank sends per chunk"})
    metrics: str = field(default="", metadata={
        "help": "optional JSON-lines file (rank 0 appends): step, loss, lr and bytes sent, one line per step"})

    def __post_init__(self) -> None:
        super().__post_init__()
        ModelPreset.from_name(self.preset)
        self.mixture()
        if self.judge_max_steps and not 2 <= self.judge_max_steps <= len(arith.LABELS[0]):
            raise ValueError(f"judge_max_steps must be 0 or in [2, {len(arith.LABELS[0])}] (the judge's labels)")
        if self.warmup >= self.steps:
            raise ValueError("warmup must be shorter than steps")
        if self.optimizer not in ("adamw", "demo", "signum"):
            raise ValueError(f"optimizer must be adamw, demo or signum, got {self.optimizer!r}")
        if not 0 <= self.demo_beta < 1 or self.demo_chunk < 1 or self.demo_topk < 1:
            raise ValueError("demo_beta must be in [0, 1); demo_chunk and demo_topk positive")

    def mixture(self) -> dict[str, float]:
        return arith.parse_mix(self.mix)

    def task(self, fmt: str = "forward") -> arith.ArithConfig:
        steps = self.judge_max_steps if fmt == "judge" and self.judge_max_steps else self.max_steps_per_problem
        return arith.ArithConfig(max_steps=steps, max_value=self.max_value)


def make_batch(step: int, cfg: PretrainConfig, tok: PreTrainedTokenizerFast,
               stream: Iterator[arith.Problem]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One step's examples: a seeded mix of the task formats, as micro-batches."""
    rng = random.Random(f"{cfg.seed}-batch-{step}")
    mix = cfg.mixture()
    formats = rng.choices(list(mix), weights=list(mix.values()), k=cfg.batch_size)
    rows = [encode_example(tok, arith.example(problem(fmt, next(stream), rng, cfg), fmt, rng, cfg.many_paths))
            for fmt in formats]
    return collate(rows, tok.pad_token_id, cfg.micro_batch)


def problem(fmt: str, drawn: arith.Problem, rng: random.Random, cfg: PretrainConfig) -> arith.Problem:
    """The stream's problem, or for a judge example with its own difficulty (--judge-max-steps) a train
    problem drawn from the step's rng (the stream still advances once per example, so resuming replays it)."""
    if cfg.task(fmt) == cfg.task():
        return drawn
    while arith.split_of(p := arith.sample_problem(rng, cfg.task(fmt))) != "train":
        pass
    return p


def make_optimizer(model: LlamaForCausalLM, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """Weight decay on the matrices only; AdamW, DeMo or Signum by cfg.optimizer."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "demo":
        return DeMo(groups, lr=cfg.lr, beta=cfg.demo_beta, chunk=cfg.demo_chunk, topk=cfg.demo_topk)
    if cfg.optimizer == "signum":
        return Signum(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def train(cfg: PretrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank = distributed.setup(cfg.device)
    try:
        return _train(cfg, rank)
    finally:
        distributed.close()


def _train(cfg: PretrainConfig, rank: distributed.Rank) -> Path:
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    torch.manual_seed(cfg.seed)
    if (ckpt / "state.pt").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(ckpt)
        model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        state = torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")
        start, spent = state["step"], state["seconds"]
        if state.get("optimizer_name", "adamw") != cfg.optimizer:  # key absent: written by AdamW
            raise ValueError(f"{ckpt} was written by {state.get('optimizer_name', 'adamw')}, not {cfg.optimizer}")
        if rank.main:
            print(f"resuming from {ckpt} at step {start}")
    elif cfg.init:
        tok = PreTrainedTokenizerFast.from_pretrained(cfg.init)
        model = LlamaForCausalLM.from_pretrained(cfg.init, dtype=torch.float32)
        state, start, spent = None, 0, 0.0
    else:
        tok = build_tokenizer(cfg.vocab_size, seed=cfg.seed)
        model = LlamaForCausalLM(ModelPreset.from_name(cfg.preset).llama_config(tok))
        state, start, spent = None, 0, 0.0
    rank.check_same("the step to start from", start)
    n_micro = math.ceil(cfg.batch_size / cfg.micro_batch)
    if rank.world > n_micro:
        raise ValueError(f"{rank.world} ranks but {n_micro} micro-batches per step: every rank needs one")
    model.to(cfg.device)
    n_params = sum(p.numel() for p in model.parameters())
    if rank.main:
        print(f"config: {json.dumps(asdict(cfg))}\nparameters: {n_params:,}")
        if rank.world > 1:
            print(f"data parallel: {rank.world} ranks, {n_micro} micro-batches per step shared among them")

    opt = make_optimizer(model, cfg)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    # The problem stream is replayed up to `start` so resumed batches match.
    stream = arith.problems("train", seed=cfg.seed, cfg=cfg.task())
    for _ in range(start * cfg.batch_size):
        next(stream)

    def checkpoint(step: int, losses: list[float]) -> None:
        # DeMo's residual momentum differs per rank: the checkpoint keeps its mean (a collective)
        opt_state = opt.averaged_state_dict() if isinstance(opt, DeMo) else opt.state_dict()
        extra = {} if cfg.optimizer == "adamw" else {"optimizer_name": cfg.optimizer}

        def write(d: Path) -> None:
            model.save_pretrained(d)
            tok.save_pretrained(d)
            torch.save({"step": step, "optimizer": opt_state, "losses": losses,
                        "seconds": spent + time.time() - t0, **extra}, d / "state.pt")
        if rank.main:
            save_atomic(ckpt, write)
        rank.barrier()

    losses: list[float] = state["losses"] if state else []
    model.train()
    if cfg.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    net = model
    if rank.distributed and cfg.optimizer != "demo":
        net = DistributedDataParallel(model, device_ids=[rank.local] if torch.device(cfg.device).type == "cuda"
                                      else None)  # also broadcasts rank 0's weights
    elif rank.distributed:
        rank.broadcast(list(model.state_dict().values()))  # DeMo needs no DDP; start from rank 0's weights
    # Bytes each rank puts into the step's collective: DDP all-reduces every gradient; DeMo all-gathers
    # its chosen DCT indices and values. (On two ranks this is also what a ring sends per rank.)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    sent_total = 0
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain", disable=not rank.main)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        batches = make_batch(step, cfg, tok, stream)
        # each rank trains on every world-th micro-batch; the sum over ranks is the one-process loss
        losses.append(rank.sum(batch_loss(net, batches[rank.rank :: rank.world], cfg,
                                          n_total=count_targets(batches), grad_scale=rank.world)))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sent = 0 if rank.world == 1 else opt.bytes_sent if isinstance(opt, DeMo) else grad_bytes
        sent_total += sent
        postfix = {"loss": f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", "lr": f"{lr_at(step, cfg):.2e}"}
        if rank.world > 1:
            postfix["sent"] = f"{sent / 1e6:.3g}MB"
        bar.set_postfix(**postfix)
        if cfg.metrics and rank.main:
            with open(cfg.metrics, "a") as f:
                f.write(json.dumps({"step": step, "loss": losses[-1], "lr": lr_at(step, cfg), "bytes_sent": sent,
                                    "seconds": round(time.time() - t0, 3)}) + "\n")
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1, losses)
    if rank.main:
        traffic = {"optimizer": cfg.optimizer, "world_size": rank.world,
                   "bytes_sent_per_step": sent_total / max(1, cfg.steps - start)}
        export(model, tok, out, cfg, losses, spent + time.time() - t0, traffic)
        shutil.rmtree(ckpt, ignore_errors=True)
    rank.barrier()
    return out


def export(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out: Path,
           cfg: PretrainConfig, losses: list[float], seconds: float, traffic: dict | None = None) -> None:
    """The servable folder: config, bf16 safetensors (half the bytes; vLLM serves bf16), tokenizer,
    generation config. The model itself stays as it trained (fp32)."""
    model.generation_config = GenerationConfig(
        eos_token_id=tok.convert_tokens_to_ids(END), pad_token_id=tok.pad_token_id,
        do_sample=False, max_new_tokens=256)
    copy.deepcopy(model).to("cpu", torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    declare_task(out)
    record = {"config": asdict(cfg), "train_seconds": round(seconds, 1),
              "parameters": sum(p.numel() for p in model.parameters()),
              "loss_first_50": sum(losses[:50]) / max(1, len(losses[:50])),
              "loss_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])), **(traffic or {})}
    parent = Path(cfg.init) / "train_record.json"
    if cfg.init and parent.exists():  # a continued run keeps the record of the run it continued
        record["init_record"] = json.loads(parent.read_text())
    (out / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
    os.sync()


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(PretrainConfig, argv, "ponder train pretrain", __doc__)
    train(cfg)


if __name__ == "__main__":
    main()
