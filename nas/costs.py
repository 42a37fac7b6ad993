"""Puzzle step 4: what each variant costs, measured on vLLM (the target), not counted.

    ponder nas costs --run runs/nas --batch-size 64

vLLM serves a whole model, so a sub-block is timed inside probe models built
for it: a stem (layer 0: the parent's attention, no FFN) followed by K layers
that each hold only that sub-block. With T the time of a probe and of the stem
alone (K empty layers),

    t(variant) = (T(probe) - T(stem)) / K,    overhead = T(stem) - t(attention.parent)

for both the prefill (batch_size prompts of prompt_len tokens, one step) and a
decode step (batch_size sequences, averaged over decode_tokens steps). The
overhead is what every model pays: embedding, LM head, sampling, scheduling.
A model's predicted time is overhead + the sum of its sub-blocks'; the parent
itself is measured too, and printed beside its prediction as a check.

Each probe runs in its own process (`python -m ponder.nas.costs`), one vLLM
engine each, with random weights (time does not depend on their values), and
is cached in run/costs/<probe>.json. The same code measures on a GPU.
Memory is counted, not timed: parameters plus the KV cache of batch_size
sequences of prompt_len + decode_tokens tokens, in the dtype vLLM ran.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ponder import flags
from ponder.nas.decilm import BlockConfig, HeteroConfig, HeteroLlama, save_weights, sub_block_params
from ponder.nas.folders import copy_tokenizer, write_config
from ponder.nas.space import Space


@dataclass
class CostConfig:
    run: str = field(metadata={"help": "the NAS run folder (after `ponder nas space`)"})
    batch_size: int = field(default=64, metadata={
        "help": "sequences per decode step (and prompts per prefill): the serving batch the child is made for; "
                "choose one where the parent is compute-bound"})
    prompt_len: int = field(default=128, metadata={"help": "prompt tokens per sequence"})
    decode_tokens: int = field(default=64, metadata={"help": "decode steps averaged per measurement"})
    probe_layers: int = field(default=0, metadata={"help": "K, the layers of a probe (0: the parent's layer count)"})
    repeats: int = field(default=3, metadata={"help": "measurements per probe (the median is kept)"})
    kv_cache_gib: int = field(default=1, metadata={"help": "VLLM_CPU_KVCACHE_SPACE on the CPU build"})
    dtype: str = field(default="bfloat16", metadata={
        "help": "the dtype vLLM computes in: the served checkpoint's (ponder-small: bfloat16)"})
    timeout: float = field(default=900, metadata={"help": "seconds one probe may take, engine start included"})


def probe_blocks(parent: HeteroConfig, kind: str | None, block: BlockConfig | None, k: int) -> tuple[BlockConfig, ...]:
    """The stem, then k layers of `block`'s `kind` sub-block alone (k empty layers when kind is None)."""
    stem = replace(parent.blocks[0], ffn_no_op=True)
    empty = BlockConfig(attn_no_op=True, ffn_no_op=True)
    layer = empty if kind is None else block
    return (stem,) + (layer,) * k


def write_probe(folder: Path, parent_dir: str, cfg: HeteroConfig) -> None:
    """A servable DeciLM folder with random weights and the parent's tokenizer."""
    if (folder / "model.safetensors").exists():
        return
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(0)
    save_weights(HeteroLlama(cfg), tmp / "model.safetensors")
    write_config(tmp, cfg)
    copy_tokenizer(parent_dir, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def open_llm(folder: str, max_num_seqs: int, max_model_len: int, kv_cache_gib: int = 1, seed: int = 0,
             **engine_args: Any):
    """An offline vllm.LLM set up for timing (call in a fresh process: it starts an engine). On CPU:
    no chunked prefill, and a step budget that holds a whole batch's prefill."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    from vllm import LLM

    return LLM(model=folder, trust_remote_code=True, enforce_eager=True, seed=seed, max_model_len=max_model_len,
               max_num_seqs=max_num_seqs, max_num_batched_tokens=max(max_num_seqs * max_model_len, 4096),
               enable_chunked_prefill=False, enable_prefix_caching=False,
               gpu_memory_utilization=0.3 if on_cpu else 0.9, **engine_args)


def measure(folder: str, batch_size: int, prompt_len: int, decode_tokens: int, repeats: int,
            kv_cache_gib: int = 1, seed: int = 0, **engine_args: Any) -> dict[str, Any]:
    """Prefill and decode-step time of one model on vLLM."""
    llm = open_llm(folder, batch_size, prompt_len + decode_tokens + 1, kv_cache_gib, seed, **engine_args)
    return time_steps(llm, batch_size, prompt_len, decode_tokens, repeats, seed)


def time_steps(llm, batch_size: int, prompt_len: int, decode_tokens: int, repeats: int,
               seed: int = 0) -> dict[str, Any]:
    """Median time of a prefill of batch_size random prompts, and of one decode step of the batch
    ((time of 1 + decode_tokens tokens - time of 1 token) / decode_tokens), with ignore_eos."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.platforms import current_platform

    vocab = llm.llm_engine.model_config.get_vocab_size()
    rng = random.Random(seed)

    def prompts() -> list[TokensPrompt]:  # fresh ones each time: nothing to share
        return [TokensPrompt(prompt_token_ids=[rng.randrange(8, vocab) for _ in range(prompt_len)])
                for _ in range(batch_size)]

    def timed(n: int) -> float:
        params = SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0)
        t = time.perf_counter()
        llm.generate(prompts(), params, use_tqdm=False)
        return time.perf_counter() - t

    timed(8)  # warm-up
    pre = [timed(1) for _ in range(repeats)]
    full = [timed(1 + decode_tokens) for _ in range(repeats)]
    prefill = statistics.median(pre)
    return {"prefill_s": prefill, "decode_step_s": (statistics.median(full) - prefill) / decode_tokens,
            "prefill_runs": pre, "full_runs": full, "dtype": str(llm.llm_engine.model_config.dtype),
            "device": current_platform.device_name, "batch_size": batch_size, "prompt_len": prompt_len,
            "decode_tokens": decode_tokens}


def measure_in_subprocess(folder: Path, out: Path, settings: dict[str, Any], timeout: float) -> dict[str, Any]:
    """measure() in a fresh interpreter; the result is cached in `out` (written atomically)."""
    if out.exists():
        return json.loads(out.read_text())
    cmd = [sys.executable, "-m", "ponder.nas.costs", "--probe", str(folder), "--out", str(out),
           "--settings", json.dumps(settings)]
    subprocess.run(cmd, check=True, timeout=timeout)
    return json.loads(out.read_text())


def dtype_bytes(dtype: str) -> int:
    return 4 if "float32" in dtype else 2


def costs(cfg: CostConfig) -> dict[str, Any]:
    space = Space.read(cfg.run)
    parent = space.parent().cfg
    k = cfg.probe_layers or parent.num_hidden_layers
    folder = space.run / "costs"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"batch_size": cfg.batch_size, "prompt_len": cfg.prompt_len, "decode_tokens": cfg.decode_tokens,
                "repeats": cfg.repeats, "kv_cache_gib": cfg.kv_cache_gib, "dtype": cfg.dtype}
    tag = f"b{cfg.batch_size}-p{cfg.prompt_len}-d{cfg.decode_tokens}-k{k}-{cfg.dtype}"
    types = {v.type: v for v in space.variants if v.layer == 1 or parent.num_hidden_layers == 1}
    probes: dict[str, tuple[BlockConfig, ...]] = {"stem": probe_blocks(parent, None, None, k), "parent": parent.blocks}
    probes |= {t: probe_blocks(parent, v.kind, v.block, k) for t, v in types.items() if not v.no_op}
    measured = {}
    for i, (name, blocks) in enumerate(probes.items()):
        print(f"[{i + 1}/{len(probes)}] probe {name}", flush=True)
        probe_dir = folder / "probes" / (name if name == "parent" else f"{name}-k{k}")
        write_probe(probe_dir, space.cfg.parent, replace(parent, blocks=blocks))
        measured[name] = measure_in_subprocess(probe_dir, folder / f"{name}-{tag}.json", settings, cfg.timeout)
    nbytes = dtype_bytes(measured["stem"]["dtype"])
    tokens = cfg.batch_size * (cfg.prompt_len + cfg.decode_tokens)
    table = {}
    for t, v in types.items():
        n_kv = 0 if v.no_op or v.kind != "attention" else parent.num_attention_heads // v.block.n_heads_in_group
        kv = 2 * n_kv * parent.head_dim * nbytes
        params = sub_block_params(parent, v.block, v.kind)
        row = {"params": params, "kv_bytes_per_token": kv, "memory_bytes": params * nbytes + tokens * kv}
        for key in ("prefill_s", "decode_step_s"):
            # Noise can make a tiny block's difference negative; a block never saves time by existing.
            row[key] = 0.0 if v.no_op else max(0.0, (measured[t][key] - measured["stem"][key]) / k)
        table[t] = row
    times = ("prefill_s", "decode_step_s")
    embeddings = parent.vocab_size * parent.hidden_size * (1 if parent.tie_word_embeddings else 2)
    fixed = {key: measured["stem"][key] - table["attention.parent"][key] for key in times}
    fixed["memory_bytes"] = (embeddings + parent.hidden_size) * nbytes
    n = parent.num_hidden_layers
    predicted = {key: fixed[key] + n * (table["attention.parent"][key] + table["ffn.parent"][key]) for key in times}
    record = {"settings": settings | {"probe_layers": k}, "device": measured["stem"]["device"],
              "dtype": measured["stem"]["dtype"], "types": table, "fixed": fixed,
              "parent": {"measured": {key: measured["parent"][key] for key in predicted}, "predicted": predicted},
              "probes": measured}
    tmp = folder / "costs.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, space.run / "costs.json")
    print_table(record)
    return record


def read_costs(run: str | Path) -> dict[str, Any]:
    path = Path(run) / "costs.json"
    if not path.exists():
        raise SystemExit(f"ponder nas: {path} is missing; run `ponder nas costs --run {run}` first")
    return json.loads(path.read_text())


def print_table(record: dict[str, Any]) -> None:
    s = record["settings"]
    print(f"on {record['device']} ({record['dtype']}), batch {s['batch_size']}, prompt {s['prompt_len']}:")
    print(f"{'sub-block':<22}{'prefill ms':>12}{'decode ms':>12}{'params':>10}{'KV B/tok':>10}")
    for t, row in record["types"].items():
        print(f"{t:<22}{row['prefill_s'] * 1e3:>12.3f}{row['decode_step_s'] * 1e3:>12.3f}"
              f"{row['params']:>10}{row['kv_bytes_per_token']:>10}")
    f, p = record["fixed"], record["parent"]
    print(f"{'overhead':<22}{f['prefill_s'] * 1e3:>12.3f}{f['decode_step_s'] * 1e3:>12.3f}")
    for what in ("measured", "predicted"):
        print(f"{'parent ' + what:<22}{p[what]['prefill_s'] * 1e3:>12.3f}{p[what]['decode_step_s'] * 1e3:>12.3f}")


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(CostConfig, argv, "ponder nas costs", __doc__)
    print(f"config: {json.dumps(asdict(cfg))}")
    costs(cfg)


def probe_main() -> None:
    """`python -m ponder.nas.costs --probe DIR --out FILE --settings JSON`: one measurement."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", required=True)
    args = ap.parse_args()
    result = measure(args.probe, **json.loads(args.settings))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    probe_main()
