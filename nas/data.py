"""The text Puzzle distils on, as padded token batches.

Two sources, one interface (`Text`):
  - stored: the parent's own replies that `ponder nas data` wrote into the run
    (run/data/train.jsonl, heldout.jsonl); any chat model, no dataset download;
  - task: the arithmetic task's chat examples that ponder's own models were
    trained on (tasks/arith.py), used when the run has no stored data.

BLD and GKD draw batches from the train rows, seeded by step (a resumed run
sees the batches it would have seen); scoring uses a fixed held-out set (the
task's val split, or the stored held-out prompts, which training never sees);
the task's test split stays for the final accuracy figures (bench).
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ponder.tasks import arith
from ponder.trainers.tokenizer import encode_example
from ponder.trainers.toolbox import IGNORE, collate

DEFAULT_MIX = arith.DEFAULT_MIX  # the parent's own training mix: its blocks are distilled on what it saw
DATA_DIR = "data"  # run/data: what `ponder nas data` writes
SPLITS = ("train", "heldout")
POOL = 16  # batches whose rows are sorted by length together: little padding, still shuffled

Row = tuple[list[int], int]  # (token ids, prompt length)


def parse_mix(mix: str) -> dict[str, float]:
    return arith.parse_mix(mix, arith.FORMATS)


@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor  # [B, T], right-padded
    labels: torch.Tensor  # [B, T], IGNORE on prompt and padding
    mask: torch.Tensor  # [B, T], 1 on tokens

    def token_mask(self) -> torch.Tensor:
        """[B, T] float: every real token (GKD, BLD)."""
        return self.mask.float()

    def reply_mask(self) -> torch.Tensor:
        """[B, T] float: positions whose next token is part of a reply (what scoring compares)."""
        out = torch.zeros_like(self.mask, dtype=torch.float)
        out[:, :-1] = (self.labels[:, 1:] != IGNORE).float()
        return out


def examples(tok, split: str, n: int, seed: str, mix: str) -> list[Row]:
    """n chat examples of the task's mixed formats, as (token ids, prompt length)."""
    rng = random.Random(f"nas-{seed}-{split}")
    weights = parse_mix(mix)
    stream = arith.problems(split, seed=seed)  # type: ignore[arg-type]  # the seed is formatted into a string
    formats = rng.choices(list(weights), weights=list(weights.values()), k=n)
    return [encode_example(tok, arith.example(next(stream), fmt, rng)) for fmt in formats]


def batches(rows: list[Row], pad_id: int, batch_size: int) -> list[Batch]:
    """Rows -> length-sorted right-padded batches (the padding never reaches a real token)."""
    return [Batch(ids=ids, labels=labels, mask=mask) for ids, mask, labels in collate(rows, pad_id, batch_size)]


def crop(rows: list[Row], max_len: int) -> list[Row]:
    """Each row cut to its first max_len tokens (0: uncut); the prompt is kept, the reply shortened."""
    if max_len <= 0:
        return rows
    return [(ids[:max_len], min(n, max_len)) for ids, n in rows]


# Stored data -------------------------------------------------------------------------------------

def data_dir(run: str | Path) -> Path:
    return Path(run) / DATA_DIR


def has_stored(run: str | Path) -> bool:
    """Whether `ponder nas data` has finished in this run (its record is written last)."""
    return (data_dir(run) / "record.json").exists()


def write_rows(path: Path, rows: list[dict]) -> None:
    """JSON lines, one row a line ({"ids", "prompt_len", ...}), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@dataclass(frozen=True)
class Stored:
    """The parent's own replies as `ponder nas data` stored them, as rows."""

    train: tuple[Row, ...]
    heldout: tuple[Row, ...]

    @classmethod
    def read(cls, run: str | Path) -> Stored:
        d = data_dir(run)
        rows = {s: tuple((r["ids"], r["prompt_len"]) for r in read_rows(d / f"{s}.jsonl")) for s in SPLITS}
        return cls(train=rows["train"], heldout=rows["heldout"])


@functools.lru_cache(maxsize=8)
def epoch_plan(lengths: tuple[int, ...], batch_size: int, seed: int, epoch: int) -> tuple[tuple[int, ...], ...]:
    """One epoch over the rows as batches of row indices: shuffled, then sorted by length within
    pools of POOL batches (so a batch pads little), and the batches shuffled again."""
    rng = random.Random(f"nas-stored-{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    plan = []
    size = POOL * batch_size
    for start in range(0, len(order), size):
        pool = sorted(order[start : start + size], key=lambda i: lengths[i])
        plan += [tuple(pool[i : i + batch_size]) for i in range(0, len(pool), batch_size)]
    rng.shuffle(plan)
    return tuple(plan)


def stored_batch(rows: tuple[Row, ...], step: int, seed: int, batch_size: int) -> list[Row]:
    """The rows of training step `step`: epoch after epoch, each row once per epoch."""
    lengths = tuple(len(ids) for ids, _ in rows)
    per_epoch = -(-len(rows) // batch_size)
    epoch, i = divmod(step, per_epoch)
    return [rows[j] for j in epoch_plan(lengths, batch_size, seed, epoch)[i]]


# What the steps call ----------------------------------------------------------------------------

def train_batch(tok, step: int, seed: int, batch_size: int, mix: str, stored: Stored | None = None,
                max_len: int = 0) -> Batch:
    """The training batch of one step: seeded by (seed, step), so a resumed run is reproducible."""
    if stored is not None:
        rows = stored_batch(stored.train, step, seed, batch_size)
    else:
        rows = examples(tok, "train", batch_size, f"{seed}-{step}", mix)
    (batch,) = batches(crop(rows, max_len), tok.pad_token_id, batch_size)
    return batch


def heldout(tok, n: int, batch_size: int, mix: str, seed: int = 0, stored: Stored | None = None,
            max_len: int = 0) -> list[Batch]:
    """A fixed held-out set: n stored held-out rows spread evenly over them (they come source by
    source, so every source keeps its share), or n examples of the task's val split."""
    if stored is not None:
        rows = [stored.heldout[i * len(stored.heldout) // n] for i in range(min(n, len(stored.heldout)))]
    else:
        rows = examples(tok, "val", n, str(seed), mix)
    return batches(crop(rows, max_len), tok.pad_token_id, batch_size)


@dataclass(frozen=True)
class Text:
    """What a run distils on: its stored replies when it has them, else the task's text."""

    tok: object
    mix: str = DEFAULT_MIX
    stored: Stored | None = None
    max_len: int = 0  # crop rows to this many tokens (0: whole rows)

    @classmethod
    def of(cls, run: str | Path, tok, mix: str = DEFAULT_MIX, max_len: int = 0) -> Text:
        return cls(tok=tok, mix=mix, stored=Stored.read(run) if has_stored(run) else None, max_len=max_len)

    @property
    def source(self) -> str:
        return "stored" if self.stored is not None else f"task ({self.mix})"

    def train_batch(self, step: int, seed: int, batch_size: int) -> Batch:
        return train_batch(self.tok, step, seed, batch_size, self.mix, self.stored, self.max_len)

    def heldout(self, n: int, batch_size: int, seed: int = 0) -> list[Batch]:
        return heldout(self.tok, n, batch_size, self.mix, seed, self.stored, self.max_len)

    def calibration(self, n: int, seed: int, batch_size: int = 16) -> list[Batch]:
        """n training rows (the FFN channel ranking's text)."""
        if self.stored is not None:
            rng = random.Random(f"nas-calib-{seed}")
            rows = rng.sample(list(self.stored.train), min(n, len(self.stored.train)))
        else:
            rows = examples(self.tok, "train", n, f"{seed}-calib", self.mix)
        return batches(crop(rows, self.max_len), self.tok.pad_token_id, batch_size)
