"""cDPO, stage 2: token-weighted DPO on the policy's own preference pairs (Lin et al. 2024).

    ponder train cdpo --base models/ponder-small --pos models/ponder-small-pos \
        --neg models/ponder-small-neg --out runs/cdpo [--loss cdpo|dpo|sft]

1. Pairs from the base model's own samples on training problems (stage 1's
   sampler, `cdpo.sample`, through vLLM; cached as JSONL and shared by every
   loss): chosen = a correct trajectory, rejected = an incorrect one for the
   same question.
2. Each rejected token's weight w_t = 1 - s_t, where s_t is the contrastive
   estimate of the positive and negative models: the very scorer of the
   critical_tokens strategy (`ponder.engine.logprobs.contrastive_scores` on vLLM
   prompt log-probs), so training and serving call a token critical alike.
3. Losses on identical pairs and steps, against a frozen reference model:
   cdpo, dpo (the same code with every w_t = 1: TRL's DPOTrainer would bring
   its own batching, padding and schedule, so the comparison would no longer
   hold everything but the loss fixed) and sft (on the chosen answers).
4. LoRA on every projection (paper: r=16) or a full fine-tune (`lora_rank 0`);
   the result is merged and saved as a full model that `ponder serve --model`
   serves. Atomic checkpoints every `ckpt_every` steps; a rerun resumes.

Where the paper and its official code disagree, this follows the paper:
gamma = 1 and one log-sigmoid of the summed (weighted) rewards, not the code's
gamma = 0.1 with a log-sigmoid per position.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ponder import flags
from ponder.trainers.cdpo import ContrastConfig, sample
from ponder.trainers.toolbox import IGNORE, Loop, save_atomic, save_model

LOSSES = ("cdpo", "dpo", "sft")


@dataclass
class DPOConfig(Loop):
    base: str = field(metadata={"help": "the policy's starting model (and the frozen reference)"})
    pos: str = field(metadata={"help": "positive contrastive model (stage 1)"})
    neg: str = field(metadata={"help": "negative contrastive model (stage 1)"})
    out: str = field(metadata={"help": "output folder: the merged model, plus checkpoint/ while training"})
    loss: str = field(default="cdpo", metadata={"help": f"one of {LOSSES}"})
    gamma: float = field(default=1.0, metadata={"help": "reward scale (paper: 1; its code: 0.1)"})
    beta: float = field(default=1.0, metadata={"help": "contrast strength of s_t (paper: 1)"})
    pairs: str = field(default="", metadata={"help": "JSONL of pairs with weights (default: <out>/../pairs.jsonl); "
                                                     "made once, reused by every loss"})
    problems: int = field(default=2000, metadata={"help": "training problems to sample for pairs"})
    samples: int = field(default=4, metadata={"help": "trajectories per problem"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank on all projections (paper: 16); 0 = full"})
    lr: float = field(default=4e-5, metadata={"help": "learning rate (paper: 4e-5)"})
    epochs: int = field(default=3, metadata={"help": "passes over the pairs (paper: 3)"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    micro_batch: int = field(default=8, metadata={"help": "pairs per forward pass"})
    ckpt_every: int = field(default=50, metadata={"help": "steps between atomic checkpoints"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}")
        if self.epochs < 1 or self.batch_size < 1 or self.micro_batch < 1 or self.lora_rank < 0:
            raise ValueError("epochs, batch_size, micro_batch >= 1; lora_rank >= 0")

    def pairs_path(self) -> Path:
        return Path(self.pairs) if self.pairs else Path(self.out).parent / "pairs.jsonl"


def preference_loss(policy_chosen: torch.Tensor, ref_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                    ref_rejected: torch.Tensor, weights: torch.Tensor, loss_type: str,
                    gamma: float) -> torch.Tensor:
    """Mean loss over a batch of pairs; inputs are per-token log-probs [pairs, tokens], 0 on padding.

    cdpo: -log sigmoid(gamma * sum_t log(pi/pi_ref)(chosen_t) - gamma * sum_t w_t log(pi/pi_ref)(rejected_t)),
          cDPO's loss (Lin et al. 2024, eq. for L_cDPO, as the paper writes it) with w_t = 1 - s_t.
    dpo:  the same with every w_t = 1: DPO (Rafailov et al. 2023, eq. 7), gamma in the role of beta.
    sft:  -sum_t log pi(chosen_t), averaged over pairs: supervised fine-tuning on the chosen answers.
    """
    if loss_type == "sft":
        return -policy_chosen.sum(-1).mean()
    if loss_type == "dpo":
        weights = torch.ones_like(weights)
    chosen = gamma * (policy_chosen - ref_chosen).sum(-1)
    rejected = gamma * (weights * (policy_rejected - ref_rejected)).sum(-1)
    return -F.logsigmoid(chosen - rejected).mean()


def token_logps(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log pi(y_t) at every labelled position (completion tokens), 0 elsewhere; [batch, width - 1]."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != IGNORE
    lp = torch.gather(logits.log_softmax(-1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return lp * keep


def collate(rows: list[tuple[list[int], int, list[float]]], pad_id: int, device: str):
    """(ids, prompt length, per-completion-token weights) -> padded ids, mask, labels, weights [b, width - 1]."""
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    weights = torch.zeros((len(rows), width - 1))
    for i, (row, n_prompt, w) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
        mask[i, : len(row)] = 1
        weights[i, n_prompt - 1 : len(row) - 1] = torch.tensor(w)
    return ids.to(device), mask.to(device), labels.to(device), weights.to(device)


async def make_pairs(cfg: DPOConfig) -> list[dict]:
    """Chosen/rejected pairs from the base model's samples, with the rejected tokens' weights."""
    from ponder.engine.logprobs import contrastive_scores
    from ponder.engine.protocol import render_chat
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine
    from ponder.tasks import arith

    trajectories = await sample(ContrastConfig(base=cfg.base, problems=cfg.problems, samples=cfg.samples,
                                               seed=cfg.seed))
    by_question: dict[str, list[dict]] = {}
    for t in trajectories:
        by_question.setdefault(t["question"], []).append(t)
    pairs = []
    for q, ts in by_question.items():
        good, bad = [t for t in ts if t["correct"]], [t for t in ts if not t["correct"]]
        if good and bad:
            pairs.append({"question": q, "chosen": good[0]["token_ids"], "rejected": bad[0]["token_ids"],
                          "rejected_text": bad[0]["text"]})
    pos, neg = VllmEngine(VllmConfig(model=cfg.pos)), VllmEngine(VllmConfig(model=cfg.neg))
    try:
        async def weigh(i: int, pair: dict) -> None:
            prompt = render_chat(pos.tokenizer, [{"role": "user", "content": arith.forward_prompt(pair["question"])}])
            lp_pos, lp_neg = await asyncio.gather(pos.score(prompt, pair["rejected"], f"w+{i}", top_logprobs=20),
                                                  neg.score(prompt, pair["rejected"], f"w-{i}", top_logprobs=20))
            pair["prompt"] = prompt
            pair["weights"] = [1.0 - s for s in contrastive_scores(lp_pos, lp_neg, cfg.beta)]

        from tqdm.asyncio import tqdm as atqdm

        await atqdm.gather(*(weigh(i, p) for i, p in enumerate(pairs)), desc="token weights")
    finally:
        await asyncio.gather(pos.aclose(), neg.aclose())
    return pairs


def load_pairs(cfg: DPOConfig) -> list[dict]:
    path = cfg.pairs_path()
    if not path.exists():
        pairs = asyncio.run(make_pairs(cfg))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        tmp.rename(path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def policy_and_reference(cfg: DPOConfig, base: str):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    ref = LlamaForCausalLM.from_pretrained(cfg.base, dtype=torch.float32).to(cfg.device).eval().requires_grad_(False)
    policy = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    if cfg.lora_rank:
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        policy = get_peft_model(policy, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                                                   task_type="CAUSAL_LM", target_modules=targets))
    return policy.to(cfg.device), ref


def train(cfg: DPOConfig, pairs: list[dict] | None = None) -> dict:
    """Train on the pairs (loaded or made if not given); returns the training record."""
    from transformers import AutoTokenizer

    pairs = pairs if pairs is not None else load_pairs(cfg)
    tok = AutoTokenizer.from_pretrained(cfg.base)
    out, ckpt = Path(cfg.out), Path(cfg.out) / "checkpoint"
    policy, ref = policy_and_reference(cfg, cfg.base)
    state = torch.load(ckpt / "state.pt", weights_only=False) if (ckpt / "state.pt").exists() else None
    if state:
        policy.load_state_dict(state["model"])
    trainable = [p for p in policy.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    if state:
        opt.load_state_dict(state["optimizer"])
    steps = [(e, i) for e in range(cfg.epochs) for i in range(0, len(pairs), cfg.batch_size)]
    log: list[dict] = state["log"] if state else []
    t0 = time.time() - (state["seconds"] if state else 0.0)
    policy.train()
    for step in tqdm(range(len(log), len(steps)), initial=len(log), total=len(steps), desc=f"train {cfg.loss}"):
        epoch, start = steps[step]
        order = list(range(len(pairs)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)  # the same pairs in the same order for every loss
        batch = [pairs[j] for j in order[start : start + cfg.batch_size]]
        opt.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "margin": 0.0}
        for k in range(0, len(batch), cfg.micro_batch):
            part = batch[k : k + cfg.micro_batch]
            chosen = collate([(p["prompt"] + p["chosen"], len(p["prompt"]), [1.0] * len(p["chosen"])) for p in part],
                             tok.pad_token_id, cfg.device)
            rejected = collate([(p["prompt"] + p["rejected"], len(p["prompt"]), p["weights"]) for p in part],
                               tok.pad_token_id, cfg.device)
            with cfg.autocast():
                pc, pr = token_logps(policy, *chosen[:3]), token_logps(policy, *rejected[:3])
                with torch.no_grad():
                    rc, rr = token_logps(ref, *chosen[:3]), token_logps(ref, *rejected[:3])
            loss = preference_loss(pc, rc, pr, rr, rejected[3], cfg.loss, cfg.gamma) * len(part) / len(batch)
            loss.backward()
            totals["loss"] += loss.item()
            totals["margin"] += ((pc - rc).sum(-1) - (pr - rr).sum(-1)).sum().item() / len(batch)
        opt.step()
        log.append(totals)
        if (step + 1) % cfg.ckpt_every == 0 and step + 1 < len(steps):
            save_atomic(ckpt, lambda d: torch.save({"model": policy.state_dict(), "optimizer": opt.state_dict(),
                                                    "log": log, "seconds": time.time() - t0}, d / "state.pt"))
    changed = sum(int(not torch.equal(p.detach(), b)) for p, b in zip(trainable, before))
    merged = policy.merge_and_unload() if cfg.lora_rank else policy
    record = {"config": asdict(cfg), "pairs": len(pairs), "steps": len(steps),
              "train_seconds": round(time.time() - t0, 1),
              "loss_first": log[0]["loss"], "loss_last_10": sum(r["loss"] for r in log[-10:]) / len(log[-10:]),
              "margin_first": log[0]["margin"], "margin_last_10": sum(r["margin"] for r in log[-10:]) / len(log[-10:]),
              "tensors_changed": changed, "tensors_trained": len(trainable)}
    save_model(out, merged, tok, record)
    return record


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(DPOConfig, argv, "ponder train cdpo", __doc__)
    print(json.dumps(train(cfg), indent=2))


if __name__ == "__main__":
    main()
