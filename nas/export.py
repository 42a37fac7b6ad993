"""Puzzle step 7: a child as a DeciLM checkpoint that vLLM and ponder both load.

    ponder nas export --run runs/nas --child x1.50 --out models/ponder-small-puzzle

The folder holds config.json (`architectures: ["DeciLMForCausalLM"]`,
`model_type: "nemotron-nas"`, one `block_configs` entry per layer), the config
class file its `auto_map` names (configuration_decilm.py: transformers has no
nemotron-nas config of its own), model.safetensors with Hugging Face names in
the parent's dtype (no tensors for a no-op; no KV cache for a no-op attention
in vLLM), the parent's tokenizer, chat template, generation config and, when
the parent has one, its ponder.json (the task it declares), and
nas_record.json (how it was made).

vLLM serves it with its own `nemotron_nas` model, given trust_remote_code:
    ponder serve --model models/ponder-small-puzzle --engine-arg trust_remote_code=true
ponder's PyTorch code loads it with `ponder.nas.decilm.load`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ponder import flags
from ponder.nas.decilm import HeteroLlama, save_weights
from ponder.nas.folders import copy_tokenizer, write_config
from ponder.trainers.toolbox import save_atomic


def export(model: HeteroLlama, out: str | Path, tokenizer_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write `model` as a DeciLM checkpoint folder, atomically (tmp folder + rename)."""
    out = Path(out)

    def write(d: Path) -> None:
        save_weights(model, d / "model.safetensors", model.cfg.dtype)  # served as the parent is
        write_config(d, model.config())
        copy_tokenizer(tokenizer_dir, d)
        (d / "nas_record.json").write_text(json.dumps(record, indent=1) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(out, write)
    return out


@dataclass
class ExportConfig:
    run: str = field(metadata={"help": "the NAS run folder"})
    child: str = field(metadata={"help": "a child of run/mip.json by name (x1.50, uniform-x1.50, ...)"})
    out: str = field(metadata={"help": "the checkpoint folder to write"})
    stage: str = field(default="gkd", metadata={"help": "the weights: 'gkd' (after GKD) or 'bld' (BLD only)"})

    def __post_init__(self) -> None:
        if self.stage not in ("bld", "gkd"):
            raise ValueError("stage is 'bld' or 'gkd'")


def main(argv: list[str] | None = None) -> None:
    from ponder.nas.gkd import build_child, child_dir
    from ponder.nas.mip import find
    from ponder.nas.space import Space

    cfg = flags.parse(ExportConfig, argv, "ponder nas export", __doc__)
    print(f"config: {json.dumps(asdict(cfg))}")
    space = Space.read(cfg.run)
    model = build_child(space, cfg.child, cfg.stage)
    plan = find(cfg.run, cfg.child)
    gkd_record = child_dir(cfg.run, cfg.child) / "gkd" / "record.json"
    record = {"parent": space.cfg.parent, "child": plan, "stage": cfg.stage, "export": asdict(cfg),
              "gkd": json.loads(gkd_record.read_text()) if cfg.stage == "gkd" and gkd_record.exists() else None}
    out = export(model, cfg.out, space.cfg.parent, record)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n:,} parameters, blocks {[b.to_json() for b in model.config().blocks]}")
