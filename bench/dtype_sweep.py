"""Decode-step and prefill time of one model on vLLM vs batch size, in a stated dtype; and the
CPU's matmul rate in fp32 vs bf16 (why bf16 serving is compute-bound on a CPU without a bf16 unit).

    python bench/dtype_sweep.py --model models/ponder-small --dtype float32 --batches 1,16,64,256

Each batch: costs.time_steps (prompt 128 random tokens, 32 decode steps, one repeat).
"""

from __future__ import annotations

import argparse
import time

import torch

from ponder.nas import costs


def matmul_gflops(dtype: torch.dtype, n: int = 200) -> float:
    a, w = torch.randn(512, 256, dtype=dtype), torch.randn(256, 768, dtype=dtype)
    for _ in range(3):
        a @ w
    t = time.perf_counter()
    for _ in range(n):
        a @ w
    return 2 * 512 * 256 * 768 * n / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/ponder-small")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", default="1,16,64,256")
    args = ap.parse_args()
    for dt in (torch.float32, torch.bfloat16):
        print(f"matmul 512x256 @ 256x768, {torch.get_num_threads()} threads, {dt}: {matmul_gflops(dt):.1f} GFLOP/s")
    batches = [int(b) for b in args.batches.split(",")]
    llm = costs.open_llm(args.model, max_num_seqs=max(batches), max_model_len=256, dtype=args.dtype)
    for b in batches:
        t = costs.time_steps(llm, b, 128, 32, 1)
        print(f"{args.dtype} b={b}: prefill {t['prefill_s']:.4f} s, decode step {t['decode_step_s'] * 1e3:.1f} ms "
              f"({b / t['decode_step_s']:.0f} tok/s)", flush=True)


if __name__ == "__main__":
    main()
