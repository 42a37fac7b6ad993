"""Puzzle's distillation text without a dataset download: the parent's own replies.

    ponder nas data --run runs/nas --parent models/SmolLM2-135M-Instruct

The parent answers prompts ponder can make itself, through vLLM in its own
dtype (what will be served), sampled at --temperature:
  - open:  the varied instructions of nas/prompts.txt, written for this purpose
           (explanations, lists, stories, code, advice, word problems, ...);
  - arith: the built-in task's word problems (tasks/arith.py);
  - ops:   one-operation questions ("What is 7 + 8?").
Each prompt is rendered with the parent's chat template exactly as served, and
a row is stored as token ids: the prompt, then the reply (its end-of-turn token
included when the parent stopped). Held out are prompts training never sees:
every --heldout-every-th open prompt, the task's val-split problems and their
own one-operation questions. Puzzle's blocks then learn what the parent does
on text of its own distribution (arXiv:2411.19146 distils on the parent's
domain; its GKD/KL scores are taken on held-out text).

Generation goes in chunks, each written atomically to run/data/parts/, so a
killed run resumes where it stopped; then run/data/train.jsonl and
heldout.jsonl, and last run/data/record.json (the step is done when it exists).
"""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ponder import flags
from ponder.nas import data
from ponder.tasks import arith

PROMPTS_FILE = Path(__file__).with_name("prompts.txt")
SOURCES = ("open", "arith", "ops")
OP_TEMPLATES = ("What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "How much is {a} {op} {b}?",
                "Compute {a} {op} {b} and explain briefly.")


@dataclass
class DataConfig:
    run: str = field(metadata={"help": "the NAS run folder: the data goes to run/data"})
    parent: str = field(metadata={"help": "the parent model folder (Hugging Face Llama or DeciLM, chat template)"})
    prompts: str = field(default=str(PROMPTS_FILE), metadata={"help": "open prompts, one a line (# comments)"})
    open_samples: int = field(default=2, metadata={"help": "replies per open training prompt (held-out ones: 1)"})
    heldout_every: int = field(default=10, metadata={"help": "every n-th open prompt is held out"})
    arith_train: int = field(default=200, metadata={"help": "task word problems (train split) for training"})
    arith_heldout: int = field(default=24, metadata={"help": "task word problems (val split) held out"})
    ops_train: int = field(default=150, metadata={"help": "one-operation questions for training"})
    ops_heldout: int = field(default=16, metadata={"help": "one-operation questions held out"})
    max_tokens: int = field(default=256, metadata={"help": "reply length limit (tokens)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the parent's replies"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the parent's replies"})
    dtype: str = field(default="auto", metadata={"help": "vLLM's dtype; auto: the parent's own (bf16 for SmolLM2)"})
    chunk: int = field(default=128, metadata={"help": "prompts per generated part (the unit of resuming)"})
    max_num_seqs: int = field(default=64, metadata={"help": "vLLM's concurrent sequences"})
    kv_cache_gib: int = field(default=1, metadata={"help": "VLLM_CPU_KVCACHE_SPACE on the CPU build"})
    threads: int = field(default=1, metadata={"help": "CPU threads of vLLM's model runner (OMP_NUM_THREADS)"})
    seed: int = field(default=0, metadata={"help": "seeds the questions and the sampling"})

    def __post_init__(self) -> None:
        if self.heldout_every < 2:
            raise ValueError("heldout_every must be at least 2")
        if self.open_samples < 1 or self.max_tokens < 1 or self.chunk < 1:
            raise ValueError("open_samples, max_tokens and chunk must be positive")


@dataclass(frozen=True)
class Prompt:
    split: str  # "train" | "heldout"
    source: str  # one of SOURCES
    text: str  # the user's message
    sample: int = 0  # which reply to this prompt (open prompts get several)


def open_prompts(path: str | Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def op_question(rng: random.Random) -> str:
    """A one-operation question over small numbers; divisions come out whole."""
    op = rng.choice(arith.OPS)
    if op == "/":
        b = rng.randint(2, 12)
        a = b * rng.randint(2, 12)
    elif op == "*":
        a, b = rng.randint(2, 15), rng.randint(2, 12)
    else:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
    return rng.choice(OP_TEMPLATES).format(a=a, op=op, b=b)


def op_questions(n_train: int, n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Distinct one-operation questions; none held out is also trained on."""
    rng = random.Random(f"nas-ops-{seed}")
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(100 * (n_train + n_heldout)):
        if len(out) == n_train + n_heldout:
            break
        q = op_question(rng)
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out[:n_train], out[n_train:]


def plan(cfg: DataConfig) -> list[Prompt]:
    """Every prompt to answer, in a fixed order (the parts are chunks of it)."""
    out = []
    for i, text in enumerate(open_prompts(cfg.prompts)):
        if i % cfg.heldout_every == cfg.heldout_every - 1:
            out.append(Prompt("heldout", "open", text))
        else:
            out += [Prompt("train", "open", text, s) for s in range(cfg.open_samples)]
    for split, name, n in (("train", "train", cfg.arith_train), ("heldout", "val", cfg.arith_heldout)):
        out += [Prompt(split, "arith", arith.forward_prompt(p.question())) for p in arith.dataset(name, n, cfg.seed)]
    train, held = op_questions(cfg.ops_train, cfg.ops_heldout, cfg.seed)
    out += [Prompt("train", "ops", q) for q in train] + [Prompt("heldout", "ops", q) for q in held]
    return out


def render(tok, text: str) -> list[int]:
    """The prompt's token ids exactly as served: the parent's chat template with its generation prompt."""
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    return tok.encode(rendered, add_special_tokens=False)


def request_seed(cfg: DataConfig, p: Prompt) -> int:
    """A stable per-prompt seed: a resumed or repeated run samples the same replies."""
    return zlib.crc32(f"{cfg.seed}|{p.split}|{p.source}|{p.sample}|{p.text}".encode())


def generate_part(llm, tok, cfg: DataConfig, prompts: list[Prompt]) -> list[dict]:
    """The parent's replies to `prompts` as rows."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ids = [render(tok, p.text) for p in prompts]
    params = [SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                             seed=request_seed(cfg, p)) for p in prompts]
    outs = llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
    rows = []
    for p, x, o in zip(prompts, ids, outs):
        reply = list(o.outputs[0].token_ids)
        rows.append({"ids": x + reply, "prompt_len": len(x), "split": p.split, "source": p.source,
                     "finish": o.outputs[0].finish_reason})
    return rows


def open_engine(cfg: DataConfig, max_model_len: int):
    """vLLM on the parent. On CPU, all of it in this one process with --threads OMP threads, not
    pinned: vLLM's default (an engine-core process and a worker process, both busy-polling, the
    worker pinned to a core of its choosing) keeps more than one core busy, and ponder's long
    steps share the machine."""
    from vllm.platforms import current_platform

    from ponder.nas.costs import open_llm

    engine_args = {}
    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
        engine_args["distributed_executor_backend"] = "uni"
        import torch

        torch.set_num_threads(cfg.threads)  # torch is already loaded: the variable alone comes too late
    return open_llm(cfg.parent, max_num_seqs=cfg.max_num_seqs, max_model_len=max_model_len,
                    kv_cache_gib=cfg.kv_cache_gib, seed=cfg.seed, dtype=cfg.dtype, **engine_args)


def build(cfg: DataConfig) -> Path:
    from transformers import AutoTokenizer

    out = data.data_dir(cfg.run)
    record_path = out / "record.json"
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("run", "chunk", "max_num_seqs", "kv_cache_gib",
                                                                   "threads")}
    settings["prompts_crc32"] = zlib.crc32(Path(cfg.prompts).read_bytes())  # the file, not just its name
    if record_path.exists():
        done_with = json.loads(record_path.read_text())["config"]
        if done_with != settings:
            raise SystemExit(f"ponder nas: {out} was generated with other settings ({done_with}); use a new --run")
        print(f"{out} is done")
        return out
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    # The parts written so far belong to these settings, and to this chunking (part i = chunk i).
    part_settings = settings | {"chunk": cfg.chunk}
    settings_path = out / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != part_settings:
        raise SystemExit(f"ponder nas: {parts} holds parts of other settings; remove {out} to start again")
    settings_path.write_text(json.dumps(part_settings, indent=1) + "\n")
    tok = AutoTokenizer.from_pretrained(cfg.parent)
    prompts = plan(cfg)
    chunks = [prompts[i : i + cfg.chunk] for i in range(0, len(prompts), cfg.chunk)]
    todo = [i for i in range(len(chunks)) if not (parts / f"{i:04d}.jsonl").exists()]
    counts = {s: sum(p.split == s for p in prompts) for s in data.SPLITS}
    print(f"{len(prompts)} prompts ({counts}), {len(chunks)} parts, {len(todo)} to generate")
    seconds = 0.0
    if todo:
        longest = max(len(render(tok, p.text)) for p in prompts)
        llm = open_engine(cfg, longest + cfg.max_tokens + 1)
        bar = tqdm(todo, desc="parent replies", mininterval=10)
        for i in bar:
            t0 = time.time()
            rows = generate_part(llm, tok, cfg, chunks[i])
            seconds += time.time() - t0
            data.write_rows(parts / f"{i:04d}.jsonl", rows)
            made = sum(len(r["ids"]) - r["prompt_len"] for r in rows)
            bar.set_postfix(tok_s=f"{made / (time.time() - t0):.0f}")
            print(f"part {i}: {len(rows)} replies, {made} tokens in {time.time() - t0:.0f} s", flush=True)
    rows = [r for i in range(len(chunks)) for r in data.read_rows(parts / f"{i:04d}.jsonl")]
    stats = {}
    for split in data.SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        data.write_rows(out / f"{split}.jsonl", chosen)
        stats[split] = {"rows": len(chosen), "tokens": sum(len(r["ids"]) for r in chosen),
                        "reply_tokens": sum(len(r["ids"]) - r["prompt_len"] for r in chosen),
                        "cut_at_max_tokens": sum(r["finish"] == "length" for r in chosen),
                        "by_source": {s: sum(r["source"] == s for r in chosen) for s in SOURCES}}
    record = {"config": settings, "stats": stats, "generation_seconds_this_session": round(seconds, 1)}
    tmp = out / "record.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, record_path)
    print(json.dumps(stats, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(DataConfig, argv, "ponder nas data", __doc__)
    print(f"config: {json.dumps(asdict(cfg))}")
    build(cfg)
