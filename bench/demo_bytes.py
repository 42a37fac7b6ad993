"""What one rank sends per step, DeMo at each top-k against AdamW+DDP, from the model's shapes alone.

    python bench/demo_bytes.py [--preset small] [--topks 128,192,224] [--chunk 64]

DeMo's all-gather carries, per chunk of each parameter, min(k, chunk) values (fp32) and their indices
(trainers/demo.py `index_dtype`); DDP's all-reduce, every fp32 gradient. No training: this is how to
pick the largest top-k under a byte budget before a run, and demo_bench's measured bytes are the same.
"""

import argparse

from transformers import LlamaForCausalLM

from ponder.trainers.demo import ChunkedDCT, index_dtype
from ponder.trainers.pretrain import ModelPreset, PretrainConfig
from ponder.trainers.tokenizer import build_tokenizer


def main() -> None:
    defaults = PretrainConfig(out="")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=defaults.preset)
    ap.add_argument("--topks", default="128,192,224")
    ap.add_argument("--chunk", type=int, default=defaults.demo_chunk)
    args = ap.parse_args()
    tok = build_tokenizer(defaults.vocab_size, seed=defaults.seed)
    params = list(LlamaForCausalLM(ModelPreset.from_name(args.preset).llama_config(tok)).parameters())
    adamw = 4 * sum(p.numel() for p in params)
    dcts = [ChunkedDCT(p.shape, args.chunk, p.device, p.dtype) for p in params]
    for k in map(int, args.topks.split(",")):
        demo = sum(p.numel() // d.chunk_numel * min(k, d.chunk_numel) * (4 + index_dtype(d.chunk_numel).itemsize)
                   for p, d in zip(params, dcts))
        print(f"top-k {k}: {demo / 1000:,.1f} kB/step/rank, {adamw / demo:.1f}x fewer than AdamW+DDP's "
              f"{adamw / 1000:,.1f} kB")


if __name__ == "__main__":
    main()
