"""Task text for Puzzle: the chat examples the parent was trained on, as padded token batches.

BLD and GKD draw fresh batches from the train split, seeded by step (a resumed
run sees the batches it would have seen); scoring uses a fixed held-out set
from the val split; test stays for the final accuracy figures (bench).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ponder.tasks import arith
from ponder.trainers.tokenizer import encode_example
from ponder.trainers.toolbox import IGNORE, collate

# The parent's own training mix is the default: its blocks are distilled on what it saw.
DEFAULT_MIX = arith.DEFAULT_MIX  # the parent's own training mix: its blocks are distilled on what it saw


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


def examples(tok, split: str, n: int, seed: str, mix: str) -> list[tuple[list[int], int]]:
    """n chat examples of the mixed formats, as (token ids, prompt length)."""
    rng = random.Random(f"nas-{seed}-{split}")
    weights = parse_mix(mix)
    stream = arith.problems(split, seed=seed)  # type: ignore[arg-type]  # the seed is formatted into a string
    formats = rng.choices(list(weights), weights=list(weights.values()), k=n)
    return [encode_example(tok, arith.example(next(stream), fmt, rng)) for fmt in formats]


def batches(rows: list[tuple[list[int], int]], pad_id: int, batch_size: int) -> list[Batch]:
    """Rows -> length-sorted right-padded batches (the padding never reaches a real token)."""
    return [Batch(ids=ids, labels=labels, mask=mask) for ids, mask, labels in collate(rows, pad_id, batch_size)]


def train_batch(tok, step: int, seed: int, batch_size: int, mix: str) -> Batch:
    """The training batch of one step: seeded by (seed, step), so a resumed run is reproducible."""
    (batch,) = batches(examples(tok, "train", batch_size, f"{seed}-{step}", mix), tok.pad_token_id, batch_size)
    return batch


def heldout(tok, n: int, batch_size: int, mix: str, seed: int = 0) -> list[Batch]:
    """A fixed held-out set from the val split."""
    return batches(examples(tok, "val", n, str(seed), mix), tok.pad_token_id, batch_size)
