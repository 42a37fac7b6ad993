"""Puzzle step 3: score every variant by "replace one block".

    ponder nas score --run runs/nas

Each variant (as BLD left it) goes alone into the otherwise untouched parent,
and the model is scored by KL(parent || model) per reply token on held-out text
(the run's stored held-out replies, else the task's val split): the score the
paper found best (Puzzle, arXiv:2411.19146, step 3). An architecture's
predicted damage is the sum of its blocks' scores; the MIP minimises it. The
parent's own block scores exactly 0 and is not evaluated.

Greedy accuracy on a few val problems is recorded too, for the variants
`--accuracy-for` names: KL ranks well, but accuracy is what a user sees.

Writes run/scores.json after every variant (atomically), and skips variants
already there on a rerun.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ponder import flags
from ponder.nas import data, evaluate
from ponder.nas.bld import trained
from ponder.nas.decilm import HeteroLlama, Layer
from ponder.nas.space import Space, Variant
from ponder.tasks import arith


@dataclass
class ScoreConfig:
    run: str = field(metadata={"help": "the NAS run folder (after `ponder nas bld`)"})
    examples: int = field(default=128, metadata={"help": "held-out examples the KL is taken on"})
    max_len: int = field(default=0, metadata={"help": "crop each held-out row to this many tokens (0: whole rows)"})
    batch_size: int = field(default=16, metadata={"help": "examples per forward pass"})
    mix: str = field(default=data.DEFAULT_MIX, metadata={
        "help": "format=weight,... of the held-out task text (runs without stored data)"})
    accuracy_problems: int = field(default=32, metadata={
        "help": "val problems each accuracy-checked variant answers greedily (0: no accuracy)"})
    accuracy_for: str = field(default="noop,ffn25", metadata={
        "help": "variants to accuracy-check: 'all', or comma-separated key prefixes ('3.', '1.ffn.noop') "
                "or variant names ('noop')"})
    max_new_tokens: int = field(default=96, metadata={"help": "reply length limit of the accuracy check"})
    threads: int = field(default=1, metadata={"help": "torch threads"})

    def __post_init__(self) -> None:
        data.parse_mix(self.mix)

    def wants_accuracy(self, v: Variant) -> bool:
        if self.accuracy_problems <= 0:
            return False
        wanted = [p for p in self.accuracy_for.split(",") if p]
        return self.accuracy_for == "all" or any(v.key.startswith(p) or v.name == p for p in wanted)


@contextmanager
def replaced(model: HeteroLlama, layer: int, kind: str, donor: Layer):
    """`model` with layer `layer`'s `kind` sub-block taken from `donor`, restored afterwards."""
    original = model.layers[layer]
    model.layers[layer] = original.with_part(kind, donor)
    try:
        yield model
    finally:
        model.layers[layer] = original


def replace_one_block(parent: HeteroLlama, v: Variant, layer: Layer, batches: list[data.Batch],
                      ref: list[torch.Tensor], states: list[evaluate.LayerInputs] | None = None) -> float:
    """KL(parent || parent with v in its place), per reply token; with `states`, the layers below
    v's are not run again."""
    with replaced(parent, v.layer, v.kind, layer):
        return evaluate.mean_kl(parent, batches, ref, v.layer, states)


def write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def read_scores(run: str | Path) -> dict:
    path = Path(run) / "scores.json"
    if not path.exists():
        raise SystemExit(f"ponder nas: {path} is missing; run `ponder nas score --run {run}` first")
    return json.loads(path.read_text())


def score(cfg: ScoreConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    space = Space.read(cfg.run)
    path = space.run / "scores.json"
    # Scores are of BLD's weights as they are now: retraining a shard invalidates them.
    bld = sorted(f"{f.parent.name}:{f.stat().st_mtime_ns}" for f in (space.run / "bld").glob("*/weights.safetensors"))
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("run", "threads", "accuracy_for")} | {"bld": bld}
    record = json.loads(path.read_text()) if path.exists() else {}
    if record.get("settings") != settings:
        record = {"settings": settings, "kl": {}, "accuracy": {}}
    problems = arith.dataset("val", cfg.accuracy_problems, seed=0) if cfg.accuracy_problems else []
    todo = [v for v in space.variants if v.key not in record["kl"]
            or (cfg.wants_accuracy(v) and v.key not in record["accuracy"])]
    if not todo and (not problems or "parent_accuracy" in record):  # done: no forward pass at all
        print_table(space, record)
        return record
    parent, tok = space.parent(), space.tokenizer()
    variants = trained(space)
    text = space.text(cfg.mix, cfg.max_len)
    batches = text.heldout(cfg.examples, cfg.batch_size)
    print(f"held-out text: {text.source}, {sum(int(b.mask.sum()) for b in batches)} tokens")
    ref = evaluate.reference(parent, batches)
    states = evaluate.layer_inputs(parent, batches)
    if problems and "parent_accuracy" not in record:
        record["parent_accuracy"] = evaluate.accuracy(parent, tok, problems, cfg.max_new_tokens)
        write_json(path, record)
    bar = tqdm(todo, desc="replace-one-block", mininterval=30)
    for v in bar:
        bar.set_postfix(variant=v.key)
        if v.name == "parent":  # changes nothing: exactly 0, not worth a forward pass
            record["kl"][v.key] = 0.0
        else:
            record["kl"][v.key] = replace_one_block(parent, v, variants[v.key], batches, ref, states)
        if cfg.wants_accuracy(v):
            with replaced(parent, v.layer, v.kind, variants[v.key]):
                record["accuracy"][v.key] = evaluate.accuracy(parent, tok, problems, cfg.max_new_tokens)
        write_json(path, record)
    print_table(space, record)
    return record


def print_table(space: Space, record: dict) -> None:
    acc = record.get("accuracy", {})
    print(f"parent accuracy: {record.get('parent_accuracy', float('nan')):.3f}")
    print(f"{'variant':<24}{'KL':>10}{'accuracy':>10}")
    for v in space.variants:
        a = acc.get(v.key)
        print(f"{v.key:<24}{record['kl'].get(v.key, float('nan')):>10.4f}{'' if a is None else f'{a:.3f}':>10}")


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(ScoreConfig, argv, "ponder nas score", __doc__)
    print(f"config: {json.dumps(asdict(cfg))}")
    score(cfg)
