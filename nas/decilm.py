"""ponder's own PyTorch model for Puzzle children: a Llama whose layers differ.

A DeciLM ("nemotron-nas") checkpoint describes each layer by a block config:
its attention is the parent's, a GQA with fewer KV heads (`n_heads_in_group`
query heads share one KV head) or a no-op; its FFN has its own intermediate
size or is a no-op. A plain Llama checkpoint loads as the homogeneous case, so
the parent and every child run through this one module. Weight names are
Hugging Face's (`model.layers.3.self_attn.k_proj.weight`), which vLLM's
`nemotron_nas` model loads.

A layer is two pre-norm residual sub-blocks, x += attn(norm(x)); x += ffn(norm(x)),
each of which may be absent: exactly what vLLM's DeciLMDecoderLayer computes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

KINDS = ("attention", "ffn")
# Config keys copied through unchanged between a parent's config.json and its children's.
PASSTHROUGH = ("bos_token_id", "eos_token_id", "pad_token_id", "dtype")  # dtype: vLLM serves a child as its parent


@dataclass(frozen=True)
class BlockConfig:
    """One layer's shape: its attention and its FFN, either of which may be a no-op."""

    n_heads_in_group: int = 1  # query heads per KV head: n_kv_heads = n_heads // n_heads_in_group
    attn_no_op: bool = False
    intermediate_size: int = 0  # FFN width
    ffn_no_op: bool = False

    def to_json(self) -> dict[str, Any]:
        """DeciLM's block_configs entry. No `ffn_mult` key: vLLM prefers it when present and
        rounds it to a multiple of 256, too coarse for ponder's tiny models."""
        return {"attention": {"no_op": self.attn_no_op,
                              "n_heads_in_group": None if self.attn_no_op else self.n_heads_in_group},
                "ffn": {"no_op": self.ffn_no_op,
                        "intermediate_size": None if self.ffn_no_op else self.intermediate_size}}

    @classmethod
    def from_json(cls, d: dict[str, Any], hidden_size: int) -> BlockConfig:
        attn, ffn = d["attention"], d["ffn"]
        if attn.get("replace_with_linear") or ffn.get("replace_with_linear"):
            raise ValueError("linear replacement blocks are not supported (vLLM's DeciLM cannot load them)")
        size = ffn.get("intermediate_size")
        if size is None and ffn.get("ffn_mult") is not None:  # vLLM's _ffn_mult_to_intermediate_size
            size = -(-int(2 * ffn["ffn_mult"] * hidden_size / 3) // 256) * 256
        return cls(n_heads_in_group=attn.get("n_heads_in_group") or 1, attn_no_op=bool(attn.get("no_op")),
                   intermediate_size=size or 0, ffn_no_op=bool(ffn.get("no_op")))

    def part(self, kind: str) -> dict[str, Any]:
        """The fields of one sub-block (attention or ffn)."""
        if kind == "attention":
            return {"n_heads_in_group": self.n_heads_in_group, "attn_no_op": self.attn_no_op}
        return {"intermediate_size": self.intermediate_size, "ffn_no_op": self.ffn_no_op}

    def no_op(self, kind: str) -> bool:
        return self.attn_no_op if kind == "attention" else self.ffn_no_op


@dataclass(frozen=True)
class HeteroConfig:
    """The shape every layer shares, plus one BlockConfig per layer."""

    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    head_dim: int
    intermediate_size: int  # the parent's FFN width (a block's own width is in its BlockConfig)
    blocks: tuple[BlockConfig, ...]
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # PASSTHROUGH keys

    @property
    def num_hidden_layers(self) -> int:
        return len(self.blocks)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> HeteroConfig:
        """A Llama or DeciLM config.json. Only what both ponder and vLLM's DeciLM compute is accepted."""
        rope = cfg.get("rope_parameters") or {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
            raise ValueError(f"only default RoPE is supported, got {rope}")
        if cfg.get("hidden_act", "silu") != "silu" or cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("only bias-free SiLU Llama blocks are supported")
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        if "block_configs" in cfg:
            blocks = tuple(BlockConfig.from_json(b, hidden) for b in cfg["block_configs"])
        else:
            group = heads // cfg.get("num_key_value_heads", heads)
            blocks = (BlockConfig(n_heads_in_group=group, intermediate_size=cfg["intermediate_size"]),) \
                * cfg["num_hidden_layers"]
        return cls(vocab_size=cfg["vocab_size"], hidden_size=hidden, num_attention_heads=heads,
                   head_dim=cfg.get("head_dim") or hidden // heads,
                   intermediate_size=cfg.get("intermediate_size") or max(b.intermediate_size for b in blocks),
                   blocks=blocks, rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=rope["rope_theta"],
                   max_position_embeddings=cfg.get("max_position_embeddings", 1024),
                   tie_word_embeddings=cfg.get("tie_word_embeddings", False),  # transformers' default
                   extra={k: cfg[k] for k in PASSTHROUGH if k in cfg}
                   | ({"dtype": cfg["torch_dtype"]} if "torch_dtype" in cfg and "dtype" not in cfg else {}))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the checkpoint is stored (and, by vLLM's "auto", served) in."""
        return getattr(torch, str(self.extra.get("dtype", "float32")).removeprefix("torch."))

    def to_decilm_json(self) -> dict[str, Any]:
        """config.json of a DeciLM checkpoint; the AutoConfig class file sits beside it (see export)."""
        return {
            "architectures": ["DeciLMForCausalLM"],
            "model_type": "nemotron-nas",
            "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"},
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,  # per layer: block_configs
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "dtype": "float32",
            **self.extra,
            "block_configs": [b.to_json() for b in self.blocks],
        }


def sub_block_params(cfg: HeteroConfig, block: BlockConfig, kind: str) -> int:
    """Parameters of one sub-block, its norm included; 0 for a no-op."""
    h, hd, nh = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads
    if block.no_op(kind):
        return 0
    if kind == "attention":
        n_kv = nh // block.n_heads_in_group
        return h + 2 * h * nh * hd + 2 * h * n_kv * hd  # norm, q + o, k + v
    return h + 3 * h * block.intermediate_size  # norm, gate + up + down


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    """Causal self-attention with n_kv_heads <= n_heads (GQA: consecutive query heads share a KV head)."""

    def __init__(self, hidden: int, n_heads: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"{n_heads} heads cannot share {n_kv_heads} KV heads evenly")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, nh, T, hd]
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, nkv, T, hd]
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = (r.unsqueeze(1) for r in rope)  # [B, 1, T, hd]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


Part = tuple[RMSNorm, nn.Module]  # (pre-norm, attention or MLP)


class Layer(nn.Module):
    """One decoder layer. A sub-block alone (the other a no-op) is what BLD trains and scores."""

    def __init__(self, block: BlockConfig, attn: Part | None, ffn: Part | None):
        super().__init__()
        if (attn is None) != block.attn_no_op or (ffn is None) != block.ffn_no_op:
            raise ValueError("the modules given do not match the block config")
        self.block = block
        if attn is not None:
            self.input_layernorm, self.self_attn = attn
        if ffn is not None:
            self.post_attention_layernorm, self.mlp = ffn

    @classmethod
    def new(cls, cfg: HeteroConfig, block: BlockConfig) -> Layer:
        h = cfg.hidden_size
        attn = None if block.attn_no_op else (
            RMSNorm(h, cfg.rms_norm_eps),
            Attention(h, cfg.num_attention_heads, cfg.num_attention_heads // block.n_heads_in_group, cfg.head_dim))
        ffn = None if block.ffn_no_op else (RMSNorm(h, cfg.rms_norm_eps), MLP(h, block.intermediate_size))
        return cls(block, attn, ffn)

    def part(self, kind: str) -> Part | None:
        if self.block.no_op(kind):
            return None
        return (self.input_layernorm, self.self_attn) if kind == "attention" else \
            (self.post_attention_layernorm, self.mlp)

    def with_part(self, kind: str, donor: Layer) -> Layer:
        """This layer with `kind` taken from `donor` (modules shared, not copied)."""
        block = replace(self.block, **donor.block.part(kind))
        parts = {k: donor.part(k) if k == kind else self.part(k) for k in KINDS}
        return Layer(block, parts["attention"], parts["ffn"])

    def delta(self, kind: str, x: torch.Tensor, rope=None, mask=None) -> torch.Tensor:
        """What the sub-block adds to the residual stream x ([B, T, H])."""
        if kind == "attention":
            return self.self_attn(self.input_layernorm(x), rope, mask)
        return self.mlp(self.post_attention_layernorm(x))

    def forward(self, x: torch.Tensor, rope, mask, trace: dict | None = None, index: int = 0) -> torch.Tensor:
        for kind in KINDS:
            if not self.block.no_op(kind):
                d = self.delta(kind, x, rope, mask)
                if trace is not None:
                    trace[index, kind] = (x, d)
                x = x + d
        return x


@dataclass
class ForwardOut:
    logits: torch.Tensor | None  # [B, T, V]; None when the LM head was skipped
    hidden: list[torch.Tensor]  # the residual stream after each layer, [B, T, H] each
    rope: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None  # the attention mask the layers saw ([B, 1, T, T] bool), None: causal


class HeteroLlama(nn.Module):
    """Embedding, heterogeneous layers, final norm, (tied) LM head."""

    def __init__(self, cfg: HeteroConfig, layers: list[Layer] | None = None):
        super().__init__()
        if layers is not None:
            cfg = replace(cfg, blocks=tuple(layer.block for layer in layers))
        self.cfg = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(layers if layers is not None else [Layer.new(cfg, b) for b in cfg.blocks])
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def config(self) -> HeteroConfig:
        """The config of the layers as they are now (sub-blocks may have been swapped)."""
        return replace(self.cfg, blocks=tuple(layer.block for layer in self.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None, trace: dict | None = None,
                head: bool = True) -> ForwardOut:
        """ids [B, T]; mask [B, T] (1 = token, 0 = left padding) or None (no padding, or right
        padding, which causal attention never sees). `trace` collects {(layer, kind): (input,
        delta)} of every sub-block. head=False skips the LM head (logits None): BLD and the
        channel ranking read only the layers, and a 49k-token vocabulary's head is a fifth of
        a 135M model's compute."""
        b, t = ids.shape
        if mask is None:
            positions = torch.arange(t, device=ids.device).expand(b, t)
            attn_mask = None
        else:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
            # A padded query row may see only itself: a row of all False would give NaN.
            attn_mask = (causal & mask.bool()[:, None, :]) | torch.eye(t, dtype=torch.bool, device=ids.device)
            attn_mask = attn_mask[:, None]
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        rope = (emb.cos().to(self.lm_head.weight.dtype), emb.sin().to(self.lm_head.weight.dtype))
        x = self.model.embed_tokens(ids)
        hidden = []
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, attn_mask, trace, i)
            hidden.append(x)
        logits = self.lm_head(self.model.norm(x)) if head else None
        return ForwardOut(logits=logits, hidden=hidden, rope=rope, mask=attn_mask)

    def forward_from(self, start: int, x: torch.Tensor, rope, mask) -> torch.Tensor:
        """Logits from the residual stream x entering layer `start` ([B, T, H]; rope and mask as
        forward() made them): the layers below are not run again."""
        for layer in self.layers[start:]:
            x = layer(x, rope, mask)
        return self.lm_head(self.model.norm(x))


def state_dict_to_save(model: HeteroLlama, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Hugging Face names, in `dtype` (None: as they are); a tied LM head is left out (vLLM and
    transformers re-tie it)."""
    sd = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_weights(model: HeteroLlama, path: Path, dtype: torch.dtype | None = None) -> None:
    save_file(state_dict_to_save(model, dtype), str(path), metadata={"format": "pt"})


def load_weights(model: HeteroLlama, *files: Path) -> HeteroLlama:
    """Load safetensors files saved by save_weights (or Hugging Face) into `model`, strictly."""
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    if model.cfg.tie_word_embeddings:
        sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    model.load_state_dict(sd, strict=True)
    return model


def load(folder: str | Path, dtype: torch.dtype = torch.float32) -> HeteroLlama:
    """A Llama or DeciLM checkpoint folder (config.json + *.safetensors) as a HeteroLlama."""
    folder = Path(folder)
    cfg = HeteroConfig.from_hf(json.loads((folder / "config.json").read_text()))
    model = load_weights(HeteroLlama(cfg), *sorted(folder.glob("*.safetensors")))
    return model.to(dtype).eval()
