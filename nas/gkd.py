"""Puzzle step 6: global knowledge distillation (GKD) of an assembled child.

    ponder nas gkd --run runs/nas --child x1.50 --steps 300

The child (its sub-blocks as BLD left them, chosen by the MIP) learns from the
parent on the run's text (its stored parent replies, else the task's), every
token, all of its weights trainable:

    L = sum_layers (1 - cos(h_child, h_parent)) + KL(p_parent || p_child)

(Puzzle, arXiv:2411.19146, step 6), with no LM loss: the paper found it hurt.
`--loss-type kl` or `cosine` keeps one term (ablations). Held-out KL(parent ||
child) per reply token is printed before and after.

Writes run/children/<child>/gkd/weights.safetensors and record.json; while
training, run/children/<child>/gkd/checkpoint/ (atomic, resumed from).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ponder import flags
from ponder.nas import data, evaluate
from ponder.nas.bld import assemble, same_settings, trained
from ponder.nas.decilm import HeteroLlama, load_weights, save_weights
from ponder.nas.mip import find
from ponder.nas.space import Space
from ponder.trainers.toolbox import lr_at, save_atomic

LOSS_TYPES = ("cosine_kl", "kl", "cosine")


@dataclass
class GkdConfig:
    run: str = field(metadata={"help": "the NAS run folder (after `ponder nas mip`)"})
    child: str = field(metadata={"help": "a child of run/mip.json by name (x1.50, x1.50-alt1, uniform-x1.50)"})
    steps: int = field(default=300, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "examples per step"})
    micro_batch: int = field(default=4, metadata={
        "help": "examples per forward pass; gradients accumulate over the step (memory: a 49k vocabulary's "
                "[B, T, V] log-probs are 0.8 GB each at 16 x 256)"})
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate (AdamW)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps"})
    loss_type: str = field(default="cosine_kl", metadata={"help": f"one of {LOSS_TYPES}"})
    mix: str = field(default=data.DEFAULT_MIX, metadata={
        "help": "format=weight,... of the task text (runs without stored data)"})
    max_len: int = field(default=0, metadata={"help": "crop each row to this many tokens (0: whole rows)"})
    eval_examples: int = field(default=64, metadata={"help": "held-out examples for the KL printed before and after"})
    seed: int = field(default=1, metadata={"help": "seeds the batches (BLD's default is 0: other text)"})
    ckpt_every: int = field(default=100, metadata={"help": "steps between atomic checkpoints"})
    threads: int = field(default=1, metadata={"help": "torch threads"})

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}")
        if self.warmup >= self.steps:
            raise ValueError("warmup must be shorter than steps")
        data.parse_mix(self.mix)


def gkd_loss(child_out, parent_out, mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Puzzle's GKD loss over the real tokens (mask [B, T], 1 on tokens)."""
    n = mask.sum()
    loss = torch.zeros(())
    if loss_type in ("cosine_kl", "cosine"):
        # sum over layers of (1 - cos(h_child, h_parent)), each averaged over tokens
        for hc, hp in zip(child_out.hidden, parent_out.hidden):
            loss = loss + ((1 - F.cosine_similarity(hc, hp, dim=-1)) * mask).sum() / n
    if loss_type in ("cosine_kl", "kl"):
        ref = F.log_softmax(parent_out.logits.float(), dim=-1)
        loss = loss + (evaluate.kl_per_token(ref, child_out.logits) * mask).sum() / n
    return loss


def accumulate(child, parent, batch, micro_batch: int, loss_type: str) -> float:
    """Backward of one step's GKD loss, micro-batch by micro-batch (each weighted by its share of the
    step's tokens, so the gradient is the whole batch's); returns the step's loss."""
    mask = batch.token_mask()
    total = 0.0
    for i in range(0, len(mask), micro_batch):
        ids, m = batch.ids[i : i + micro_batch], mask[i : i + micro_batch]
        with torch.no_grad():
            teacher = parent(ids)
        loss = gkd_loss(child(ids), teacher, m, loss_type) * (m.sum() / mask.sum())
        loss.backward()
        total += loss.item()
    return total


def child_dir(run: str | Path, child: str) -> Path:
    return Path(run) / "children" / child


def build_child(space: Space, child: str, stage: str) -> HeteroLlama:
    """A child as BLD left it ("bld") or after GKD ("gkd")."""
    model = assemble(space.parent(), find(str(space.run), child)["blocks"], trained(space))
    if stage == "gkd":
        path = child_dir(space.run, child) / "gkd" / "weights.safetensors"
        if not path.exists():
            raise SystemExit(f"ponder nas: {path} is missing; run `ponder nas gkd --child {child}` first")
        load_weights(model, path)
    elif stage != "bld":
        raise ValueError("stage is 'bld' or 'gkd'")
    return model.eval()


def train(cfg: GkdConfig) -> Path:
    torch.set_num_threads(cfg.threads)
    space = Space.read(cfg.run)
    out = child_dir(cfg.run, cfg.child) / "gkd"
    if (out / "weights.safetensors").exists():
        done_with = json.loads((out / "record.json").read_text())["config"]
        if same_settings(done_with, asdict(cfg), ignore=("threads", "micro_batch", "ckpt_every")):
            print(f"{out} is done")
            return out
        raise SystemExit(f"ponder nas: {out} was trained with other settings ({done_with}); remove it to retrain")
    parent = space.parent()
    text = space.text(cfg.mix, cfg.max_len)
    parent.requires_grad_(False)
    child = build_child(space, cfg.child, "bld")
    heldout = text.heldout(cfg.eval_examples, cfg.micro_batch)
    opt = torch.optim.AdamW(child.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt = out / "checkpoint"
    losses: list[float] = []
    start, spent, kl_before = 0, 0.0, None
    if (ckpt / "state.pt").exists():
        load_weights(child, ckpt / "weights.safetensors")
        state = torch.load(ckpt / "state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        start, losses, spent, kl_before = state["step"], state["losses"], state["seconds"], state["kl_before"]
        print(f"resuming {out} at step {start}")
    if kl_before is None:  # the parent's held-out log-probs are GBs: computed when needed, not kept
        kl_before = evaluate.mean_kl(child, heldout, evaluate.reference(parent, heldout))
    print(f"GKD of {cfg.child}: held-out KL(parent || child) {kl_before:.4f}; config {json.dumps(asdict(cfg))}")

    def checkpoint(step: int) -> None:
        def write(d: Path) -> None:
            save_weights(child, d / "weights.safetensors")
            torch.save({"step": step, "optimizer": opt.state_dict(), "losses": losses, "kl_before": kl_before,
                        "seconds": spent + time.time() - t0}, d / "state.pt")
        save_atomic(ckpt, write)

    t0 = time.time()
    child.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"gkd {cfg.child}", mininterval=30)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss = accumulate(child, parent, text.train_batch(step, cfg.seed, cfg.batch_size), cfg.micro_batch,
                          cfg.loss_type)
        torch.nn.utils.clip_grad_norm_(child.parameters(), 1.0)
        opt.step()
        losses.append(loss)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)
    child.eval()
    kl_after = evaluate.mean_kl(child, heldout, evaluate.reference(parent, heldout))
    print(f"held-out KL(parent || child): {kl_before:.4f} -> {kl_after:.4f}")

    def final(d: Path) -> None:
        save_weights(child, d / "weights.safetensors")
        record = {"config": asdict(cfg), "kl_before": kl_before, "kl_after": kl_after,
                  "seconds": round(spent + time.time() - t0, 1), "loss_first_20": sum(losses[:20]) / len(losses[:20]),
                  "loss_last_20": sum(losses[-20:]) / len(losses[-20:]), "curve": losses[:: max(1, len(losses) // 50)]}
        (d / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    save_atomic(out, final)
    return out


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(GkdConfig, argv, "ponder nas gkd", __doc__)
    train(cfg)
