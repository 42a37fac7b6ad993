"""Sweep pretraining recipes side by side and score each with Hugging Face generate.

    python bench/pretrain_sweep.py --device cuda --out runs/sweep \
        '{"name": "a", "preset": "tiny", "steps": 2600}' '{"name": "b", ...}'

Used to choose ponder-tiny's recipe: each recipe is the CPU recipe (same steps
and batch), trained on whatever device is at hand, then measured on held-out
test problems: greedy forward accuracy, pass@16 and maj@8 at temperature 1,
judge accuracy in both orders, backward accuracy. The served model's numbers
come from `ponder eval` through vLLM, not from here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from collections import Counter
from pathlib import Path

import torch

from ponder.tasks import ARITH, arith
from ponder.trainers.pretrain import PretrainConfig, train
from ponder.trainers.toolbox import native_bf16


@torch.no_grad()
def generate(model, tok, prompts: list[str], n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 160, batch: int = 256, prefixes: list[str] | None = None) -> list[str]:
    """Completions for chat prompts (n per prompt, prompt-major order), each reply started with its prefix."""
    tok.padding_side = "left"
    prefixes = prefixes or [""] * len(prompts)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                     add_generation_prompt=True) + prefix
             for p, prefix in zip(prompts, prefixes) for _ in range(n)]
    out: list[str] = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=native_bf16(model.device.type)):
            gen = model.generate(**enc, max_new_tokens=max_new_tokens,
                                 do_sample=temperature > 0, temperature=temperature or None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def score(model_dir: Path, device: str, n_problems: int) -> dict[str, float]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).to(device).eval()
    test = arith.dataset("test", n_problems)
    rng = random.Random(0)
    res: dict[str, float] = {}
    fwd = generate(model, tok, [arith.forward_prompt(p.question()) for p in test])
    res["greedy"] = sum(ARITH.correct(t, p.answer) for t, p in zip(fwd, test)) / len(test)
    prompts = [arith.forward_prompt(p.question()) for p in test[:200]]
    samples = generate(model, tok, prompts, n=16, temperature=1.0)
    per = [samples[16 * i : 16 * i + 16] for i in range(200)]
    res["pass@16"] = sum(any(ARITH.correct(t, p.answer) for t in s) for s, p in zip(per, test)) / 200
    for temp in (1.0, 0.7):
        if temp != 1.0:
            samples = generate(model, tok, prompts, n=8, temperature=temp)
            per = [samples[8 * i : 8 * i + 8] for i in range(200)]
        res[f"sample_acc_t{temp}"] = sum(ARITH.correct(t, p.answer) for s, p in zip(per, test)
                                         for t in s[:8]) / 1600
        maj = [Counter(a for t in s[:8] if (a := ARITH.extract(t))).most_common(1) for s in per]
        res[f"maj@8_t{temp}"] = sum(bool(m) and int(m[0][0]) == p.answer for m, p in zip(maj, test)) / 200
    for order in (1, 2):
        prompts = []
        for p in test:
            right, wrong = p.forward_solution(), p.wrong_solution(rng)
            pair = (right, wrong) if order == 1 else (wrong, right)
            prompts.append(arith.judge_prompt(p.question(), *pair))
        verdicts = generate(model, tok, prompts, max_new_tokens=200)
        res[f"judge_right_is_{order}"] = sum(
            ARITH.read_verdict(v) == order for v in verdicts) / len(test)
    masked = [rng.randrange(len(p.quantities)) for p in test]
    back = generate(model, tok, [arith.backward_prompt(p.backward_question(m)) for p, m in zip(test, masked)])
    res["backward"] = sum(ARITH.correct(t, p.quantities[m]) for t, p, m in zip(back, test, masked)) / len(test)
    bq = generate(model, tok, [arith.backward_question_prompt(p.question(), p.answer) for p in test[:200]])
    res["backward_question_valid"] = sum("x" in q.split() and q.endswith("What is x?") for q in bq) / 200
    return res


def run(spec: dict, device: str, out: Path, n_problems: int) -> dict:
    torch.set_num_threads(2)
    name = spec.pop("name")
    t0 = time.time()
    cfg = PretrainConfig(out=str(out / name), device=device, **spec)
    train(cfg)
    record = json.loads((out / name / "train_record.json").read_text())
    res = {"name": name, **spec, "train_s": round(time.time() - t0), "loss": round(record["loss_last_50"], 4)}
    res.update({k: round(v, 3) for k, v in score(out / name, device, n_problems).items()})
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", help="JSON objects: name + PretrainConfig fields")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--parallel", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    specs = [json.loads(s) for s in args.specs]
    with mp.get_context("spawn").Pool(args.parallel) as pool:
        results = pool.starmap(run, [(s, args.device, out, args.problems) for s in specs])
    (out / "sweep.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
