"""`ponder import`: a Hugging Face model folder from a GGUF file, through transformers' GGUF loader.

    ponder import path/to/model.gguf --out models/my-model [--dtype bfloat16]

The weights are dequantized into plain safetensors (vLLM serves the folder like
any other), with the tokenizer and chat template the GGUF carries. Works for
every architecture transformers reads from GGUF (Llama, Qwen2, Mistral, Gemma,
Phi-3, ...). The folder gets no ponder.json, so ponder serves it with the
model-agnostic `math` task unless told otherwise (--task).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

DTYPES = ("bfloat16", "float16", "float32")


def import_gguf(gguf: str | Path, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Write `out` (config.json, model.safetensors, tokenizer, chat template) from a GGUF file;
    atomically: a folder appears only when it is whole."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise SystemExit(f"ponder import: {gguf} is not a file")
    if out.exists():
        raise SystemExit(f"ponder import: {out} exists; remove it or choose another --out")
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype),
                                                 quantization_config=GgufConfig(dequantize=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ponder import", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="the .gguf file")
    ap.add_argument("--out", required=True, help="the model folder to write (must not exist)")
    ap.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                    help="weight dtype of the folder (bf16: what ponder serves on CPU and GPU alike)")
    a = ap.parse_args(argv)
    out = import_gguf(a.gguf, a.out, a.dtype)
    print(f"wrote {out}: serve it with `ponder serve --model {out}`")
