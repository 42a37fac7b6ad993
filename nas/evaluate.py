"""How close a model stays to its parent: KL on held-out text, and greedy task accuracy.

Pure PyTorch on HeteroLlama, no engine: scoring, GKD's validation and the
bench's BLD-vs-GKD comparison all use it. Accuracy through vLLM is the
bench's job (bench/nas_pareto.py); the two agree because the child's forward
matches vLLM's (tests/integration/test_nas_vllm.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ponder.nas.data import Batch
from ponder.nas.decilm import HeteroLlama
from ponder.tasks import arith


def kl_per_token(ref_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || model) at every position: [B, T, V] log-probs and logits -> [B, T]."""
    return (ref_logp.exp() * (ref_logp - F.log_softmax(logits.float(), dim=-1))).sum(-1)


@torch.no_grad()
def reference(parent: HeteroLlama, batches: list[Batch]) -> list[torch.Tensor]:
    """The parent's log-probs on each batch ([B, T, V] each), computed once and reused."""
    return [F.log_softmax(parent(b.ids).logits.float(), dim=-1) for b in batches]


@dataclass(frozen=True)
class LayerInputs:
    """The parent's residual stream entering each of its layers on one batch, kept so that a model
    differing from the parent only from layer i on is run from layer i (replace-one-block scoring:
    on average half the layers)."""

    inputs: list[torch.Tensor]  # per layer, [B, T, H]
    rope: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None


@torch.no_grad()
def layer_inputs(parent: HeteroLlama, batches: list[Batch]) -> list[LayerInputs]:
    out = []
    for b in batches:
        run = parent(b.ids, head=False)
        out.append(LayerInputs([parent.model.embed_tokens(b.ids), *run.hidden[:-1]], run.rope, run.mask))
    return out


@torch.no_grad()
def mean_kl(model: HeteroLlama, batches: list[Batch], ref: list[torch.Tensor],
            start: int = 0, states: list[LayerInputs] | None = None) -> float:
    """Mean KL(parent || model) per reply token over the batches. With `states` (the parent's
    layer inputs), the model is run from layer `start` on: it must equal the parent below it."""
    total, count = 0.0, 0.0
    for i, (b, ref_logp) in enumerate(zip(batches, ref)):
        m = b.reply_mask()
        if states is None:
            logits = model(b.ids).logits
        else:
            s = states[i]
            logits = model.forward_from(start, s.inputs[start], s.rope, s.mask)
        total += float((kl_per_token(ref_logp, logits) * m).sum())
        count += float(m.sum())
    return total / max(count, 1.0)


def prompt_ids(tok, question: str) -> list[int]:
    """The forward-format prompt exactly as served (chat template with generation prompt)."""
    text = tok.apply_chat_template([{"role": "user", "content": arith.forward_prompt(question)}],
                                   tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


@torch.no_grad()
def greedy(model: HeteroLlama, prompts: list[list[int]], max_new_tokens: int, stop_id: int,
           pad_id: int) -> list[list[int]]:
    """Greedy continuations of left-padded prompts (no KV cache: tiny models, short replies)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for _ in range(max_new_tokens):
        nxt = model(ids, mask).logits[:, -1].argmax(-1)
        for i in (~done).nonzero().flatten().tolist():
            out[i].append(int(nxt[i]))
        done |= nxt == stop_id
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return out


def accuracy(model: HeteroLlama, tok, problems: list[arith.Problem], max_new_tokens: int = 96,
             batch_size: int = 32) -> float:
    """Greedy accuracy on forward-format problems; a reply ends at the tokenizer's end-of-turn token
    (ponder's <|end|>, SmolLM2's <|im_end|>)."""
    stop = tok.eos_token_id
    right = 0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        outs = greedy(model, [prompt_ids(tok, p.question()) for p in chunk], max_new_tokens, stop, tok.pad_token_id)
        right += sum(arith.is_correct(tok.decode(o, skip_special_tokens=True), p.answer) for o, p in zip(outs, chunk))
    return right / max(1, len(problems))
