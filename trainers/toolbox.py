"""The trainers' shared toolbox: batching, the masked loss, the lr schedule, atomic saves.

Every trainer (pretrain, cDPO, RevThink) and Puzzle (nas/) build on these; none of
them is a recipe of its own.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.nn.parallel import DistributedDataParallel

from ponder.tasks import MODEL_FILE

IGNORE = -100


BF16_HELP = "bf16 autocast; default: on where the device has bf16 units (CUDA, AVX512-BF16 or AMX CPUs)"


@functools.cache
def native_bf16(device: str) -> bool:
    """Whether bf16 autocast pays on `device`: without bf16 units (e.g. an AVX2-only CPU) a bf16
    matmul is ~100x slower than fp32 (bench/dtype_sweep.py), with them ~1.4x faster."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(kw_only=True)
class Loop:
    """The fields every training loop declares alike (one default each); the recipe's own (lr, batch
    sizes, epochs, checkpoint interval) stay in each trainer's config, at its paper's values."""

    seed: int = field(default=0, metadata={"help": "seeds everything random in the run (data, order, initial weights)"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = native_bf16(self.device)

    def autocast(self) -> torch.autocast:
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=bool(self.bf16))


class Schedule(Protocol):
    """What lr_at reads of a trainer's config."""

    lr: float
    warmup: int
    steps: int
    min_lr_ratio: float


def lr_at(step: int, cfg: Schedule) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def count_targets(batches) -> int:
    """Tokens that carry a loss (labels shift by one inside the model)."""
    return sum(int((labels[:, 1:] != IGNORE).sum()) for _, _, labels in batches)


def batch_loss(model, batches, cfg: Loop, n_total: int | None = None, grad_scale: float = 1.0) -> float:
    """Backward over the micro-batches; returns the mean loss per target token.

    `cfg` is the trainer's config (its autocast).
    Data parallel: `batches` is this rank's share of the step, `n_total` the target tokens of the
    whole step and `grad_scale` the world size, which DDP's gradient mean divides by again, so the
    synced gradient is the one-process gradient; the return value is this rank's share of the
    step's loss (the ranks' values add up to it). Under DDP only the last micro-batch syncs.
    """
    n_total = count_targets(batches) if n_total is None else n_total
    total = 0.0
    for i, (ids, mask, labels) in enumerate(batches):
        ids, mask, labels = ids.to(cfg.device), mask.to(cfg.device), labels.to(cfg.device)
        n = int((labels[:, 1:] != IGNORE).sum())
        last = i == len(batches) - 1
        with nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync():
            with cfg.autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * (n / n_total)
            (loss if grad_scale == 1 else loss * grad_scale).backward()
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


def declare_task(folder: Path, task: str = "arith") -> None:
    """The ponder.json a model folder carries: the task whose formats it was trained on (all of
    ponder's trainers train on the built-in arithmetic task), so `ponder serve` reads it that way."""
    (folder / MODEL_FILE).write_text(json.dumps({"task": task}) + "\n")


def save_model(out: Path, model, tok, record: dict) -> None:
    """A servable model folder, written atomically: weights, tokenizer and train_record.json."""
    def write(d: Path) -> None:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        declare_task(d)
        (d / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")

    save_atomic(out, write)
