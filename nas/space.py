"""Puzzle step 1: the search space per layer, initialised from the parent.

    ponder nas space --parent models/ponder-small --run runs/nas

Every layer offers the same menu (Puzzle, arXiv:2411.19146, step 1):
  attention: parent | GQA with n_heads_in_group in kv_groups (fewer KV heads) | no-op
  ffn:       parent | each fraction of ffn_fractions of the parent's width | no-op
A GQA variant must group the parent's own KV groups whole: n_heads_in_group a
multiple of the parent's that divides the head count (SmolLM2, 9 query heads in
3 groups of 3: only 9, one KV head). A candidate sub-block starts as a slice of
the parent's: K/V heads mean-pooled over the parent's KV heads it merges; FFN
channels ranked by mean|X_i| * ||W_down[:, i]|| (X = the activation entering
down_proj, measured on calibration text: the run's stored text when
`ponder nas data` has run, else the task's) and the top ones kept.

Layer 0's attention has no no-op: vLLM's DeciLM layer cannot run an FFN whose
layer has no attention before any residual exists (its RMSNorm is then called
without one), so that variant could never be served.

Writes run/space.json (the parent, the menu) and run/channel_scores.pt.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from ponder import flags
from ponder.nas import data
from ponder.nas.decilm import KINDS, Attention, BlockConfig, HeteroLlama, Layer, load


@dataclass(frozen=True)
class Variant:
    """One candidate sub-block of one layer; `key` names it everywhere ("2.ffn.ffn50")."""

    layer: int
    kind: str  # "attention" | "ffn"
    name: str  # "parent", "gqa2" (2 query heads per KV head), "ffn50" (50% width), "noop"
    block: BlockConfig  # this sub-block alone: the other kind is a no-op

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.kind}.{self.name}"

    @property
    def no_op(self) -> bool:
        return self.block.no_op(self.kind)

    @property
    def type(self) -> str:
        """The layer-independent shape ("ffn.ffn50"): what a cost is measured for."""
        return f"{self.kind}.{self.name}"


@dataclass
class SpaceConfig:
    parent: str = field(metadata={"help": "the parent model folder (Llama or DeciLM)"})
    run: str = field(metadata={"help": "the NAS run folder: every step reads and writes here"})
    kv_groups: str = field(default="", metadata={
        "help": "n_heads_in_group values for the GQA variants, comma-separated; empty: every divisor of "
                "the head count above the parent's"})
    ffn_fractions: str = field(default="0.75,0.5,0.25", metadata={"help": "FFN widths as fractions of the parent's"})
    ffn_multiple: int = field(default=16, metadata={"help": "round reduced FFN widths to a multiple of this"})
    calib_examples: int = field(default=256, metadata={"help": "examples of text that rank the FFN channels"})
    max_len: int = field(default=0, metadata={"help": "crop calibration rows to this many tokens (0: whole rows)"})
    mix: str = field(default=data.DEFAULT_MIX, metadata={"help": "format=weight,... of the task text"})
    seed: int = field(default=0, metadata={"help": "seeds the calibration text"})
    threads: int = field(default=1, metadata={"help": "torch threads"})

    def fractions(self) -> list[float]:
        out = [float(f) for f in self.ffn_fractions.split(",") if f]
        if any(not 0 < f < 1 for f in out):
            raise ValueError("ffn_fractions must lie in (0, 1)")
        return out

    def __post_init__(self) -> None:
        self.fractions()
        data.parse_mix(self.mix)


def kv_group_sizes(heads: int, parent_group: int) -> list[int]:
    """Every n_heads_in_group a GQA variant of this parent may have: multiples of the parent's
    that divide the head count, the parent's own excluded."""
    return [g for g in range(parent_group + 1, heads + 1) if heads % g == 0 and g % parent_group == 0]


def variants(model: HeteroLlama, kv_groups: list[int], fractions: list[float], multiple: int = 16) -> list[Variant]:
    """The menu of every layer of `model` (the parent); kv_groups outside kv_group_sizes are skipped."""
    cfg = model.cfg
    if any(b.attn_no_op or b.ffn_no_op for b in cfg.blocks):
        raise ValueError("the parent has no-op sub-blocks; Puzzle starts from a full parent")
    out = []
    for i, parent in enumerate(cfg.blocks):
        attn = BlockConfig(n_heads_in_group=parent.n_heads_in_group, ffn_no_op=True)
        out.append(Variant(i, "attention", "parent", attn))
        allowed = kv_group_sizes(cfg.num_attention_heads, parent.n_heads_in_group)
        for g in sorted(set(kv_groups)):
            if g in allowed:
                out.append(Variant(i, "attention", f"gqa{g}", BlockConfig(n_heads_in_group=g, ffn_no_op=True)))
        if i > 0:
            out.append(Variant(i, "attention", "noop", BlockConfig(attn_no_op=True, ffn_no_op=True)))
        width = parent.intermediate_size
        out.append(Variant(i, "ffn", "parent", BlockConfig(attn_no_op=True, intermediate_size=width)))
        for f in sorted(set(fractions), reverse=True):
            reduced = max(multiple, round(width * f / multiple) * multiple)
            if reduced < width:
                out.append(Variant(i, "ffn", f"ffn{round(f * 100)}",
                                   BlockConfig(attn_no_op=True, intermediate_size=reduced)))
        out.append(Variant(i, "ffn", "noop", BlockConfig(attn_no_op=True, ffn_no_op=True)))
    return out


@torch.no_grad()
def channel_scores(model: HeteroLlama, batches: list[data.Batch]) -> dict[int, torch.Tensor]:
    """Per layer, mean|X_i| over real tokens of the activation X entering down_proj ([d_ff])."""
    sums: dict[int, torch.Tensor] = {}
    count = 0
    hooks = []
    current: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(model.layers):
        if not layer.block.ffn_no_op:
            def hook(_mod, args, i=i):
                x = args[0].abs() * current["mask"][..., None]
                sums[i] = sums.get(i, 0) + x.sum(dim=(0, 1))
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(hook))
    try:
        for b in tqdm(batches, desc="channel scores", mininterval=10):
            current["mask"] = b.token_mask()
            model(b.ids, head=False)
            count += int(b.mask.sum())
    finally:
        for h in hooks:
            h.remove()
    return {i: s / count for i, s in sums.items()}


@torch.no_grad()
def init_variant(parent: HeteroLlama, v: Variant, scores: dict[int, torch.Tensor]) -> Layer:
    """A fresh Layer holding variant v, its weights sliced from the parent's layer v.layer."""
    src = parent.layers[v.layer]
    layer = Layer.new(parent.cfg, v.block)
    if v.no_op:
        return layer
    if v.kind == "attention":
        layer.input_layernorm.load_state_dict(src.input_layernorm.state_dict())
        pooled: Attention = layer.self_attn
        pooled.q_proj.weight.copy_(src.self_attn.q_proj.weight)
        pooled.o_proj.weight.copy_(src.self_attn.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(src.self_attn, name).weight  # [nkv_parent * hd, H]
            hd = pooled.head_dim
            heads = w.view(src.self_attn.n_kv_heads, hd, -1)
            merged = heads.view(pooled.n_kv_heads, -1, hd, heads.shape[-1]).mean(dim=1)
            getattr(pooled, name).weight.copy_(merged.reshape(pooled.n_kv_heads * hd, -1))
        return layer
    layer.post_attention_layernorm.load_state_dict(src.post_attention_layernorm.state_dict())
    down = src.mlp.down_proj.weight  # [H, d_ff]
    rank = scores[v.layer] * down.norm(dim=0)
    keep = rank.topk(v.block.intermediate_size).indices.sort().values
    layer.mlp.gate_proj.weight.copy_(src.mlp.gate_proj.weight[keep])
    layer.mlp.up_proj.weight.copy_(src.mlp.up_proj.weight[keep])
    layer.mlp.down_proj.weight.copy_(down[:, keep])
    return layer


def parent_variant(parent: HeteroLlama, layer: int, kind: str) -> Layer:
    """The parent's own sub-block (shared modules) as a one-part Layer."""
    src = parent.layers[layer]
    empty = Layer(BlockConfig(attn_no_op=True, ffn_no_op=True), None, None)
    return empty.with_part(kind, src)


@dataclass
class Space:
    """What `ponder nas space` wrote, as the later steps read it."""

    run: Path
    cfg: SpaceConfig
    variants: list[Variant]

    @classmethod
    def read(cls, run: str | Path) -> Space:
        run = Path(run)
        path = run / "space.json"
        if not path.exists():
            raise SystemExit(f"ponder nas: {path} is missing; run `ponder nas space --run {run}` first")
        d = json.loads(path.read_text())
        vs = [Variant(v["layer"], v["kind"], v["name"], BlockConfig(**v["block"])) for v in d["variants"]]
        return cls(run=run, cfg=SpaceConfig(**d["config"]), variants=vs)

    def parent(self) -> HeteroLlama:
        return load(self.cfg.parent)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return PreTrainedTokenizerFast.from_pretrained(self.cfg.parent)

    def text(self, mix: str, max_len: int = 0) -> data.Text:
        """What this run distils and scores on: its stored replies, else the task's `mix`."""
        return data.Text.of(self.run, self.tokenizer(), mix, max_len)

    def scores(self) -> dict[int, torch.Tensor]:
        return torch.load(self.run / "channel_scores.pt")

    def by_key(self) -> dict[str, Variant]:
        return {v.key: v for v in self.variants}

    def init(self, parent: HeteroLlama, v: Variant, scores: dict[int, torch.Tensor]) -> Layer:
        """The variant's starting weights (the parent's own sub-block for 'parent')."""
        return parent_variant(parent, v.layer, v.kind) if v.name == "parent" else init_variant(parent, v, scores)


def build(cfg: SpaceConfig) -> Space:
    run = Path(cfg.run)
    if (run / "space.json").exists():
        space = Space.read(run)
        if asdict(space.cfg) != asdict(cfg):
            raise SystemExit(f"ponder nas: {run} was made with another space config; use a new --run")
        print(f"{run}/space.json exists: {len(space.variants)} variants")
        return space
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    parent = load(cfg.parent)
    tok = PreTrainedTokenizerFast.from_pretrained(cfg.parent)
    heads = parent.cfg.num_attention_heads
    groups = [int(g) for g in cfg.kv_groups.split(",") if g] or \
        kv_group_sizes(heads, min(b.n_heads_in_group for b in parent.cfg.blocks))
    menu = variants(parent, groups, cfg.fractions(), cfg.ffn_multiple)
    text = data.Text.of(run, tok, cfg.mix, cfg.max_len)
    print(f"calibration text: {text.source}")
    scores = channel_scores(parent, text.calibration(cfg.calib_examples, cfg.seed))
    torch.save(scores, run / "channel_scores.pt")
    record = {"config": asdict(cfg), "text": text.source,
              "variants": [{"layer": v.layer, "kind": v.kind, "name": v.name, "block": asdict(v.block)}
                           for v in menu]}
    tmp = run / "space.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, run / "space.json")
    per_layer = {k: [v.name for v in menu if v.layer == 0 and v.kind == k] for k in KINDS}
    print(f"{len(menu)} variants over {parent.cfg.num_hidden_layers} layers; layer 0 offers {per_layer}")
    return Space(run=run, cfg=cfg, variants=menu)


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(SpaceConfig, argv, "ponder nas space", __doc__)
    print(f"config: {json.dumps(asdict(cfg))}")
    build(cfg)
