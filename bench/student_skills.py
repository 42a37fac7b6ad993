"""What a RevThink student base can do before fine-tuning: single equations and reading a question.

    python bench/student_skills.py --model runs/revthink/student-base [--n 200]

Greedy, in-process (transformers), on fresh draws: `equations` completes "a op b =" after the
arithmetic drill's prompt (the share of true equations), `numbers` lists the numbers of held-out
test questions (exact match). A base that cannot do these cannot learn the task from a few
thousand solved examples, RevThink or not.
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ponder.tasks import arith


def complete(model, tok, user: str, prefix: str = "", max_new_tokens: int = 32) -> str:
    chat = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    ids = tok(chat + prefix, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def skills(path: str, n: int) -> dict[str, float]:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rng = random.Random(0)
    right = 0
    for _ in range(n):
        left = arith.arithmetic_drill(rng, lines=1).split("=")[0] + "="
        line = left + complete(model, tok, arith.ARITHMETIC_PROMPT, left, 8).split("\n")[0]
        right += bool(arith.EQUATION_RE.fullmatch(line)) and arith.equations_hold(line)
    problems = arith.dataset("test", n)
    read = sum(complete(model, tok, arith.NUMBERS_TEMPLATE.format(text=p.question())).strip()
               == ", ".join(map(str, p.quantities)) for p in problems)
    return {"equations": right / n, "numbers": read / n, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(json.dumps({"model": args.model, **skills(args.model, args.n)}))


if __name__ == "__main__":
    main()
