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
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ponder.tasks import arith

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_sweep import generate  # noqa: E402  (bench/ is not a package)


@torch.no_grad()
def skills(path: str, n: int) -> dict[str, float]:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rng = random.Random(0)
    lefts = [arith.arithmetic_drill(rng, lines=1).split("=")[0] + "=" for _ in range(n)]
    lines = [left + out.split("\n")[0] for left, out in
             zip(lefts, generate(model, tok, [arith.ARITHMETIC_PROMPT] * n, max_new_tokens=8, prefixes=lefts))]
    right = sum(bool(arith.EQUATION_RE.fullmatch(line)) and arith.equations_hold(line) for line in lines)
    problems = arith.dataset("test", n)
    outs = generate(model, tok, [arith.NUMBERS_TEMPLATE.format(text=p.question()) for p in problems],
                    max_new_tokens=32)
    read = sum(out.strip() == ", ".join(map(str, p.quantities)) for out, p in zip(outs, problems))
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
