"""Puzzle step 2: blockwise local distillation (BLD).

    ponder nas bld --run runs/nas --steps 400 [--workers 2]

Each candidate sub-block gets the parent's own input to that sub-block (the
residual stream entering it, from the parent's forward pass) and learns to
reproduce what the parent's sub-block adds there (Puzzle, arXiv:2411.19146, step 2):

    L_v = MSE(o_parent, o_v) / MSE(o_parent, 0)        over real tokens

so a no-op scores exactly 1 and the parent's own block 0. Attention and FFN
variants are trained decoupled (each on its own sub-block's input and target).
The text is the run's stored parent replies when `ponder nas data` has run
(rows cropped to --max-len tokens), else the task's --mix.

How it parallelises: blocks never see each other, so one parent forward per
batch feeds every variant at once (one optimiser over all of them; AdamW and
per-variant gradient clipping keep their updates independent). With
`--workers N` the variants are dealt round-robin to N processes, each with its
own parent forward and `--threads` torch threads; on a GPU host the same
sharding maps a shard per device. On this 2-core machine, next to other work,
one worker with one thread; on an idle one, `--workers 2 --threads 1`.

Writes run/bld/<shard>/weights.safetensors and losses.json; while training,
run/bld/<shard>/checkpoint/ (atomic, resumed from).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ponder import flags
from ponder.nas import data
from ponder.nas.decilm import BlockConfig, HeteroLlama, Layer
from ponder.nas.space import Space, Variant
from ponder.trainers.toolbox import lr_at, save_atomic


@dataclass
class BldConfig:
    run: str = field(metadata={"help": "the NAS run folder (after `ponder nas space`)"})
    steps: int = field(default=400, metadata={"help": "optimizer steps (one parent forward each)"})
    batch_size: int = field(default=16, metadata={"help": "examples per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine floor as a fraction of lr"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps"})
    mix: str = field(default=data.DEFAULT_MIX, metadata={
        "help": "format=weight,... of the task text (runs without stored data)"})
    max_len: int = field(default=0, metadata={"help": "crop each row to this many tokens (0: whole rows)"})
    only: str = field(default="", metadata={
        "help": "train only variants whose key starts with one of these comma-separated prefixes ('3.ffn')"})
    seed: int = field(default=0, metadata={"help": "seeds the batches"})
    ckpt_every: int = field(default=100, metadata={"help": "steps between atomic checkpoints"})
    threads: int = field(default=1, metadata={"help": "torch threads per worker"})
    workers: int = field(default=1, metadata={"help": "processes, each training its share of the variants"})
    shard: str = field(default="", metadata={"help": "i/n: this process's share (set by --workers)"})

    def __post_init__(self) -> None:
        data.parse_mix(self.mix)
        if self.warmup >= self.steps:
            raise ValueError("warmup must be shorter than steps")
        if self.shard:
            i, n = self.shard_index()
            if not 0 <= i < n:
                raise ValueError("shard must be i/n with 0 <= i < n")

    def shard_index(self) -> tuple[int, int]:
        i, _, n = (self.shard or "0/1").partition("/")
        return int(i), int(n)


def trainable(space: Space, cfg: BldConfig) -> list[Variant]:
    """This shard's variants: not the parent's own (already exact), not no-ops (nothing to learn)."""
    prefixes = [p for p in cfg.only.split(",") if p]
    out = [v for v in space.variants if v.name != "parent" and not v.no_op
           and (not prefixes or any(v.key.startswith(p) for p in prefixes))]
    i, n = cfg.shard_index()
    return out[i::n]


def normalised_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE(target, pred) / MSE(target, 0) over the tokens where mask ([B, T, 1]) is 1."""
    return ((pred - target).pow(2) * mask).sum() / (target.pow(2) * mask).sum().clamp_min(1e-12)


def same_settings(a: dict, b: dict, ignore: tuple[str, ...] = ("threads", "workers")) -> bool:
    """Whether two configs of a step would produce the same result (threads and workers do not matter)."""
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def shard_dir(run: Path, cfg: BldConfig) -> Path:
    i, n = cfg.shard_index()
    return run / "bld" / f"{i}-of-{n}"


def flat(layers: dict[str, Layer]) -> dict[str, torch.Tensor]:
    return {f"{key}/{name}": p.detach().contiguous() for key, layer in layers.items()
            for name, p in layer.state_dict().items()}


def unflat(layers: dict[str, Layer], weights: dict[str, torch.Tensor]) -> None:
    for key, layer in layers.items():
        prefix = f"{key}/"
        layer.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})


def train(cfg: BldConfig) -> Path:
    """Train this shard's variants; returns the shard folder (weights.safetensors, losses.json)."""
    torch.set_num_threads(cfg.threads)
    space = Space.read(cfg.run)
    out = shard_dir(space.run, cfg)
    if (out / "weights.safetensors").exists():
        done_with = json.loads((out / "losses.json").read_text())["config"]
        if same_settings(done_with, asdict(cfg)):
            print(f"{out} is done")
            return out
        raise SystemExit(f"ponder nas: {out} was trained with other settings ({done_with}); remove it to retrain")
    parent, scores = space.parent(), space.scores()
    text = space.text(cfg.mix, cfg.max_len)
    parent.requires_grad_(False)
    todo = trainable(space, cfg)
    layers = {v.key: space.init(parent, v, scores) for v in todo}
    groups = [{"params": list(layers[v.key].parameters()), "key": v.key} for v in todo]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt = out / "checkpoint"
    losses: dict[str, list[float]] = {v.key: [] for v in todo}
    start, spent = 0, 0.0
    if (ckpt / "state.pt").exists():
        unflat(layers, load_file(str(ckpt / "weights.safetensors")))
        state = torch.load(ckpt / "state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        start, losses, spent = state["step"], state["losses"], state["seconds"]
        print(f"resuming {out} at step {start}")
    n_params = sum(p.numel() for layer in layers.values() for p in layer.parameters())
    print(f"BLD {cfg.shard or '0/1'}: {len(todo)} variants ({n_params / 1e6:.1f}M parameters) on {text.source} "
          f"text, config {json.dumps(asdict(cfg))}", flush=True)

    def checkpoint(step: int) -> None:
        def write(d: Path) -> None:
            save_file(flat(layers), str(d / "weights.safetensors"))
            torch.save({"step": step, "optimizer": opt.state_dict(), "losses": losses,
                        "seconds": spent + time.time() - t0}, d / "state.pt")
        save_atomic(ckpt, write)
        done = step - start
        print(f"checkpoint at step {step}: {(time.time() - t0) / max(1, done):.1f} s/step this session", flush=True)

    t0 = time.time()
    i, _ = cfg.shard_index()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"bld {cfg.shard or '0/1'}", position=i,
               mininterval=30)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = text.train_batch(step, cfg.seed, cfg.batch_size)
        trace: dict = {}
        with torch.no_grad():
            run = parent(batch.ids, trace=trace, head=False)
        mask = batch.token_mask()[..., None]
        opt.zero_grad(set_to_none=True)
        total = torch.zeros(())
        for v in todo:
            x, target = trace[v.layer, v.kind]
            loss = normalised_mse(layers[v.key].delta(v.kind, x, run.rope, run.mask), target, mask)
            losses[v.key].append(loss.item())
            total = total + loss
        total.backward()
        for group in opt.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], 1.0)
        opt.step()
        recent = [sum(ls[-20:]) / len(ls[-20:]) for ls in losses.values() if ls]
        bar.set_postfix(mean_loss=f"{sum(recent) / max(1, len(recent)):.4f}")
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)

    def final(d: Path) -> None:
        save_file(flat(layers), str(d / "weights.safetensors"))
        summary = {k: {"first": ls[0], "last_20": sum(ls[-20:]) / len(ls[-20:]), "curve": ls[:: max(1, len(ls) // 50)]}
                   for k, ls in losses.items() if ls}
        record = {"config": asdict(cfg), "seconds": round(spent + time.time() - t0, 1), "losses": summary}
        (d / "losses.json").write_text(json.dumps(record, indent=1) + "\n")
    save_atomic(out, final)  # replaces the folder, checkpoint included
    return out


def run_workers(cfg: BldConfig) -> None:
    """--workers N: one spawned process per shard; fails if any shard fails."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=train, args=(replace(cfg, workers=1, shard=f"{i}/{cfg.workers}"),))
             for i in range(cfg.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise SystemExit(f"ponder nas bld: shards {failed} failed")


def trained(space: Space) -> dict[str, Layer]:
    """Every variant of the space as a Layer: the parent's own, no-ops, and BLD's trained ones.

    A variant BLD has not trained (yet) keeps its initialisation, and is reported."""
    parent, scores = space.parent(), space.scores()
    weights: dict[str, torch.Tensor] = {}
    for f in sorted((space.run / "bld").glob("*/weights.safetensors")):
        weights.update(load_file(str(f)))
    out: dict[str, Layer] = {}
    untrained = []
    for v in space.variants:
        layer = space.init(parent, v, scores)
        if v.name != "parent" and not v.no_op:
            if any(k.startswith(f"{v.key}/") for k in weights):
                unflat({v.key: layer}, weights)
            else:
                untrained.append(v.key)
        out[v.key] = layer
    if untrained:
        print(f"not trained by BLD (initialisation used): {', '.join(untrained)}")
    return out


def empty_layer() -> Layer:
    return Layer(BlockConfig(attn_no_op=True, ffn_no_op=True), None, None)


def assemble(parent: HeteroLlama, choice: list[dict[str, str]], variants: dict[str, Layer]) -> HeteroLlama:
    """A child: per layer {"attention": name, "ffn": name}, sub-blocks copied out of `variants`."""
    import copy

    layers = []
    for i, names in enumerate(choice):
        layer = empty_layer()
        for kind, name in names.items():
            layer = layer.with_part(kind, variants[f"{i}.{kind}.{name}"])
        layers.append(copy.deepcopy(layer))
    child = HeteroLlama(parent.cfg, layers)  # its config takes the layers' blocks
    child.model.embed_tokens.load_state_dict(parent.model.embed_tokens.state_dict())
    child.model.norm.load_state_dict(parent.model.norm.state_dict())
    if not parent.cfg.tie_word_embeddings:
        child.lm_head.load_state_dict(parent.lm_head.state_dict())
    return child.eval()


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(BldConfig, argv, "ponder nas bld", __doc__)
    if cfg.workers > 1 and not cfg.shard:
        run_workers(cfg)
    else:
        train(cfg)
