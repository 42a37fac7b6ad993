"""Puzzle's Pareto front, measured through vLLM: parent vs MIP children vs uniform baselines.

    python bench/nas_pareto.py --run runs/nas --out bench/results/nas_pareto

Needs a run folder through `ponder nas mip`. For the parent, the MIP child of
each throughput target (the one `ponder nas pick` chose by measured held-out KL,
else the MIP's first architecture), and the uniform baseline of
the same target, all distilled the same way (BLD, then GKD with --gkd-steps),
plus each MIP child with BLD only (what GKD adds):
  - greedy accuracy through vLLM on --problems questions of --data: the
    built-in task's test problems (arith), or one-operation facts (facts, for a
    third-party chat model such as SmolLM2), with the paired 95% interval of
    its difference to the parent's;
  - greedy agreement with the parent on the run's held-out prompts (the share
    of the parent's greedy reply a child reproduces before it first departs
    from it), and the held-out KL(parent || child) GKD measured;
  - decode throughput through vLLM at --batch-size sequences, as a ratio to the
    parent's measured in the same run. The parent is measured first and last;
    the gap between its two numbers is this machine's noise in that run;
  - with --serve-rounds R, closed-loop throughput where a client meets it:
    `ponder serve` of the parent and of the child side by side, --batch-size
    chat requests at once (the held-out open prompts of nas/prompts.txt, greedy,
    exactly --decode-tokens each: ignore_eos, so a child that stops early does no less work), R rounds
    each in ABBA order; the ratio child / parent;
  - the parent's decode step time at each of --step-batches, which shows
    whether compute or vLLM's per-step overhead dominates at the chosen batch.
Each model runs in its own process (one vLLM engine each) and is cached under
run/bench/, so a rerun only measures what is missing.

Writes <out>.json, <out>.md (the table), <out>.png (accuracy vs measured
speedup), <out>-layers.png (the chosen child, per layer) and <out>-steps.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serve_overhead import commands, start
from serve_overhead import measure as abba

from ponder import tasks
from ponder.nas import costs, data, evaluate, generate, gkd, mip
from ponder.nas.export import export
from ponder.nas.space import Space
from ponder.tasks import arith, facts
from ponder.tasks.stats import diff_interval, wilson
from ponder.testing import free_port


@dataclass
class BenchConfig:
    run: str = field(metadata={"help": "a NAS run folder after `ponder nas mip`"})
    out: str = field(default="bench/results/nas_pareto", metadata={"help": "output path prefix"})
    problems: int = field(default=500, metadata={"help": "questions for greedy accuracy"})
    data: str = field(default="arith", metadata={
        "help": "accuracy questions: 'arith' (the built-in task's test split) or 'facts' (one-operation facts, "
                "graded by the math task: any chat model)"})
    agreement: int = field(default=82, metadata={
        "help": "held-out prompts of the run's stored data for greedy agreement with the parent (0: none)"})
    serve_rounds: int = field(default=0, metadata={
        "help": "rounds each of closed-loop load through `ponder serve`, parent vs child, ABBA (0: off)"})
    batch_size: int = field(default=64, metadata={"help": "decode batch of the throughput measurement"})
    prompt_len: int = field(default=128, metadata={"help": "prompt tokens per sequence when timing"})
    decode_tokens: int = field(default=64, metadata={"help": "decode steps averaged when timing"})
    repeats: int = field(default=3, metadata={"help": "timings per model (median kept)"})
    dtype: str = field(default="bfloat16", metadata={"help": "the dtype vLLM computes in, for every model"})
    step_batches: str = field(default="1,8,32,64,128", metadata={"help": "batch sizes of the parent's step sweep"})
    max_new_tokens: int = field(default=256, metadata={"help": "reply limit of the accuracy check"})
    gkd_steps: int = field(default=300, metadata={"help": "GKD steps, the same for every child"})
    gkd_batch_size: int = field(default=16, metadata={"help": "GKD examples per step"})
    gkd_warmup: int = field(default=20, metadata={"help": "GKD warm-up steps"})
    gkd_max_len: int = field(default=0, metadata={"help": "GKD rows cropped to this many tokens (0: whole rows)"})
    threads: int = field(default=1, metadata={"help": "torch threads of GKD (not of vLLM)"})
    alternatives: bool = field(default=False, metadata={"help": "also measure the MIP's alternative architectures"})
    children: str = field(default="", metadata={
        "help": "only these children, comma-separated (x1.50,uniform-x1.50); default: every pick and uniform baseline"})
    chosen: str = field(default="", metadata={
        "help": "the child to picture per layer (default: the fastest MIP child keeping >= 95% of the accuracy)"})
    timeout: float = field(default=3600, metadata={"help": "seconds one model's measurement may take"})

    def batches(self) -> list[int]:
        return [int(b) for b in self.step_batches.split(",") if b]


def questions(cfg: BenchConfig, tok) -> list[tuple[list[int], object, object]]:
    """(prompt ids, gold answer, grader) for the accuracy check: the chat template, as served."""
    if cfg.data == "facts":
        math = tasks.get("math")
        return [(generate.render(tok, f.question), f.answer, math.correct) for f in facts.dataset(cfg.problems)]
    return [(evaluate.prompt_ids(tok, p.question()), p.answer, arith.is_correct)
            for p in arith.dataset("test", cfg.problems, seed=0)]


def heldout_prompts(cfg: BenchConfig) -> list[list[int]]:
    """The run's stored held-out prompts (ids up to the reply), for greedy agreement."""
    path = data.data_dir(cfg.run) / "heldout.jsonl"
    if not cfg.agreement or not path.exists():
        return []
    return [r["ids"][: r["prompt_len"]] for r in data.read_rows(path)[: cfg.agreement]]


def worker(folder: str, cfg: BenchConfig, sweep: bool) -> dict:
    """One model in this process: accuracy, greedy replies to held-out prompts, throughput and
    (parent) the step sweep."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    seqs = max([cfg.batch_size, *cfg.batches()]) if sweep else cfg.batch_size
    held = heldout_prompts(cfg)
    longest = max([cfg.prompt_len + cfg.decode_tokens + 1, 512, *(len(p) + cfg.max_new_tokens for p in held)])
    llm = costs.open_llm(folder, max_num_seqs=seqs, max_model_len=longest, dtype=cfg.dtype)
    tok = llm.get_tokenizer()
    greedy = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens)
    items = questions(cfg, tok)
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _, _ in items], greedy, use_tqdm=False)
    correct = [int(grade(o.outputs[0].text, gold)) for o, (_, gold, grade) in zip(outs, items)]
    replies = llm.generate([TokensPrompt(prompt_token_ids=p) for p in held], greedy, use_tqdm=False) if held else []
    timing = costs.time_steps(llm, cfg.batch_size, cfg.prompt_len, cfg.decode_tokens, cfg.repeats)
    right = sum(correct)
    out = {"right": right, "n": len(items), "accuracy": right / len(items), "ci95": wilson(right, len(items)),
           "correct": correct, "greedy_ids": [list(r.outputs[0].token_ids) for r in replies],
           "timing": timing, "decode_tok_s": cfg.batch_size / timing["decode_step_s"]}
    if sweep:
        out["sweep"] = {str(b): costs.time_steps(llm, b, cfg.prompt_len, cfg.decode_tokens, 1)["decode_step_s"]
                        for b in cfg.batches()}
    return out


def agreement(parent: list[list[int]], child: list[list[int]]) -> float | None:
    """Mean share of the parent's greedy reply the child reproduces before it first departs from it."""
    shares = []
    for p, c in zip(parent, child):
        same = next((i for i, (a, b) in enumerate(zip(p, c)) if a != b), min(len(p), len(c)))
        shares.append(same / len(p) if p else 1.0)
    return sum(shares) / len(shares) if shares else None


def served(label: str, parent: Path, child: Path, cfg: BenchConfig) -> dict:
    """Closed-loop throughput of `ponder serve` on the parent and on the child, side by side (ABBA),
    cached in run/bench/serve-<dtype>/<label>.json."""
    cache = Path(cfg.run) / "bench" / f"serve-{cfg.dtype}" / f"{label}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    held = generate.open_prompts(generate.PROMPTS_FILE)[9::10]  # the prompts `ponder nas data` held out
    prompts = [held[i % len(held)] for i in range(cfg.batch_size)]
    procs, urls = [], {}
    try:
        for name, folder in (("parent", parent), ("child", child)):
            port = free_port()
            procs.append(start(commands(str(folder), port)["ponder"], port))
            urls[name] = f"http://127.0.0.1:{port}/v1"
        models = {"parent": parent.name, "child": child.name}
        result = asyncio.run(abba(urls, models, prompts, cfg.serve_rounds, cfg.decode_tokens, ignore_eos=True))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
    result["ratio"] = result["child"]["tok_s"] / result["parent"]["tok_s"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1) + "\n")
    return result


def measure(label: str, folder: Path, cfg: BenchConfig, sweep: bool = False) -> dict:
    """worker() in a fresh process, cached in run/bench/results-<dtype>/<label>.json."""
    cache = Path(cfg.run) / "bench" / f"results-{cfg.dtype}" / f"{label}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    cache.parent.mkdir(parents=True, exist_ok=True)
    print(f"measuring {label} ({folder})", flush=True)
    cmd = [sys.executable, __file__, "--worker", str(folder), "--worker-out", str(cache),
           "--worker-config", json.dumps(asdict(cfg))] + (["--sweep"] if sweep else [])
    subprocess.run(cmd, check=True, timeout=cfg.timeout)
    return json.loads(cache.read_text())


def prepare(cfg: BenchConfig) -> list[dict]:
    """The models to measure: GKD (and for MIP children BLD-only) exports of each child."""
    space = Space.read(cfg.run)
    plan = mip.read_plan(cfg.run)
    chosen = set(plan.get("picked", {}).values())  # `ponder nas pick`: each target's lowest measured KL
    picked = [c | {"kind": "mip"} for c in plan["children"]
              if cfg.alternatives or (c["name"] in chosen if chosen else not c.get("alternative"))]
    picked += [c | {"kind": "uniform"} for c in plan["uniform"]]
    if cfg.children:
        picked = [c for c in picked if c["name"] in cfg.children.split(",")]
    models = []
    for c in picked:
        gkd.train(gkd.GkdConfig(run=cfg.run, child=c["name"], steps=cfg.gkd_steps, batch_size=cfg.gkd_batch_size,
                                warmup=cfg.gkd_warmup, max_len=cfg.gkd_max_len, threads=cfg.threads))
        stages = ("bld", "gkd") if c["kind"] == "mip" else ("gkd",)
        for stage in stages:
            folder = Path(cfg.run) / "bench" / "models" / f"{c['name']}-{stage}"
            if not (folder / "config.json").exists():
                export(gkd.build_child(space, c["name"], stage), folder, space.cfg.parent, {"child": c, "stage": stage})
            models.append({"label": f"{c['name']}-{stage}", "child": c, "stage": stage, "folder": folder})
    return models


def table(cfg: BenchConfig, parent: list[dict], rows: list[dict]) -> tuple[str, dict]:
    base_tps = sum(p["decode_tok_s"] for p in parent) / len(parent)
    base, first = parent[0], parent[0]["timing"]
    lines = [f"Device: {first['device']} ({first['dtype']}); decode batch {cfg.batch_size}, prompt {cfg.prompt_len}; "
             f"accuracy: greedy on {base['n']} {cfg.data} questions. Parent measured first and last: "
             f"{base['decode_tok_s']:.0f} and {parent[-1]['decode_tok_s']:.0f} tok/s.", "",
             "| model | stage | predicted x | vLLM step x | served x | accuracy [95% CI] | − parent [paired 95%] "
             "| retention | agreement | held-out KL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {"parent": {"decode_tok_s": base_tps, "accuracy": base["accuracy"]}, "models": []}
    lo, hi = base["ci95"]
    lines.append(f"| parent | - | 1.00 | 1.00 | 1.00 | {base['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | - | 1.000 | 1.000 "
                 "| 0 |")
    for r in rows:
        m, c = r["measured"], r["child"]
        lo, hi = m["ci95"]
        dlo, dhi = diff_interval(m, base)
        speed, keep = m["decode_tok_s"] / base_tps, m["accuracy"] / max(base["accuracy"], 1e-9)
        agree = agreement(base["greedy_ids"], m["greedy_ids"])
        served_x = r["served"]["ratio"] if r.get("served") else None
        summary["models"].append({"label": r["label"], "kind": c["kind"], "stage": r["stage"], "target": c["target"],
                                  "blocks": c["blocks"], "predicted_speedup": c["predicted"]["decode_speedup"],
                                  "speedup": speed, "served_speedup": served_x, "accuracy": m["accuracy"],
                                  "accuracy_diff_ci95": [dlo, dhi], "retention": keep, "agreement": agree,
                                  "kl": r["kl"], "decode_tok_s": m["decode_tok_s"]})
        lines.append(f"| {r['label']} | {r['stage']} | {c['predicted']['decode_speedup']:.2f} | {speed:.2f} | "
                     f"{_num(served_x, '.2f')} | {m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{m['accuracy'] - base['accuracy']:+.3f} [{dlo:+.3f}, {dhi:+.3f}] | {keep:.3f} | "
                     f"{_num(agree, '.3f')} | {_num(r['kl'], '.4f')} |")
    sweep = base.get("sweep", {})
    if sweep:
        lines += ["", "Parent decode step vs batch size: " + ", ".join(
            f"b={b}: {s * 1e3:.2f} ms ({int(b) / s:.0f} tok/s)" for b, s in sweep.items())]
    return "\n".join(lines) + "\n", summary


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def kl_of(cfg: BenchConfig, child: str, stage: str) -> float | None:
    """Held-out KL(parent || child) as GKD measured it: before GKD (BLD's blocks) or after."""
    path = gkd.child_dir(cfg.run, child) / "gkd" / "record.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["kl_before" if stage == "bld" else "kl_after"]


def chosen_child(cfg: BenchConfig, summary: dict) -> dict | None:
    gkd_mip = [m for m in summary["models"] if m["kind"] == "mip" and m["stage"] == "gkd"]
    if cfg.chosen:
        return next((m for m in summary["models"] if m["label"] in (cfg.chosen, f"{cfg.chosen}-gkd")), None)
    keeping = [m for m in gkd_mip if m["retention"] >= 0.95]
    if keeping:
        return max(keeping, key=lambda m: m["served_speedup"] or m["speedup"])
    return max(gkd_mip, key=lambda m: m["retention"], default=None)


def plots(cfg: BenchConfig, summary: dict, sweep: dict, space: Space) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def speed(m: dict) -> float:  # where a client meets it when measured so, else vLLM's decode step
        return m["served_speedup"] if cfg.serve_rounds else m["speedup"]

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([1.0], [summary["parent"]["accuracy"]], marker="*", s=200, c="k", label="parent")
    styles = {("mip", "gkd"): ("o", "C0", "Puzzle (MIP) + GKD"), ("mip", "bld"): ("o", "none", "Puzzle, BLD only"),
              ("uniform", "gkd"): ("s", "C1", "uniform + GKD")}
    for (kind, stage), (marker, color, label) in styles.items():
        ms = [m for m in summary["models"] if m["kind"] == kind and m["stage"] == stage]
        if ms:
            ax.scatter([speed(m) for m in ms], [m["accuracy"] for m in ms], marker=marker, s=60,
                       facecolors=color, edgecolors="C0" if kind == "mip" else "C1", label=label)
            for m in ms:
                ax.annotate(f"x{m['target']:.2f}", (speed(m), m["accuracy"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
    where = "ponder serve, closed loop" if cfg.serve_rounds else "vLLM decode step"
    ax.set_xlabel(f"measured throughput vs parent ({where}, {cfg.batch_size} sequences)")
    ax.set_ylabel(f"greedy accuracy ({cfg.data})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{cfg.out}.png", dpi=120)
    plt.close(fig)

    chosen = chosen_child(cfg, summary)
    if chosen:
        parent = space.parent().cfg
        variants = space.by_key()
        layers = range(len(chosen["blocks"]))
        blocks = [{k: variants[f"{i}.{k}.{b[k]}"].block for k in b} for i, b in enumerate(chosen["blocks"])]
        kv = [0.0 if b["attention"].attn_no_op else 1 / b["attention"].n_heads_in_group for b in blocks]
        ff = [0.0 if b["ffn"].ffn_no_op else b["ffn"].intermediate_size / parent.intermediate_size for b in blocks]
        fig, ax = plt.subplots(figsize=(max(5, len(kv) * 0.8), 4))
        ax.bar([i - 0.2 for i in layers], kv, width=0.4,
               label=f"attention: KV heads kept (of {parent.num_attention_heads})")
        ax.bar([i + 0.2 for i in layers], ff, width=0.4, label=f"FFN width kept (of {parent.intermediate_size})")
        ax.set_xticks(list(layers))
        ax.set_xlabel("layer")
        ax.set_ylabel("fraction of the parent's kept (0: no-op)")
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{chosen['label']}: x{speed(chosen):.2f}, {chosen['retention']:.1%} of accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{cfg.out}-layers.png", dpi=120)
        plt.close(fig)

    if sweep:
        bs = sorted(int(b) for b in sweep)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(bs, [sweep[str(b)] * 1e3 for b in bs], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("decode batch (sequences)")
        ax.set_ylabel("parent decode step (ms)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(f"{cfg.out}-steps.png", dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from transformers import HfArgumentParser

    (cfg,) = HfArgumentParser(BenchConfig).parse_args_into_dataclasses(argv)
    print(f"config: {json.dumps(asdict(cfg))}", flush=True)
    space = Space.read(cfg.run)
    models = prepare(cfg)
    parent_first = measure("parent-first", Path(space.cfg.parent), cfg, sweep=True)
    rows = [m | {"measured": measure(m["label"], m["folder"], cfg), "kl": kl_of(cfg, m["child"]["name"], m["stage"]),
                 "served": served(m["label"], Path(space.cfg.parent), m["folder"], cfg) if cfg.serve_rounds else None}
            for m in models]
    parent_last = measure("parent-last", Path(space.cfg.parent), cfg)
    text, summary = table(cfg, [parent_first, parent_last], rows)
    print(text)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{cfg.out}.md").write_text(text)
    chosen = chosen_child(cfg, summary)
    summary |= {"config": asdict(cfg), "chosen": chosen, "parent_runs": [parent_first, parent_last]}
    Path(f"{cfg.out}.json").write_text(json.dumps(summary, indent=1) + "\n")
    plots(cfg, summary, parent_first.get("sweep", {}), space)
    if chosen:
        print(f"chosen: {chosen['label']}: x{chosen['speedup']:.2f} vLLM decode step, "
              f"x{_num(chosen['served_speedup'], '.2f')} through ponder serve, "
              f"{chosen['retention']:.1%} of the parent's accuracy; blocks {chosen['blocks']}")


def worker_main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--worker-out", required=True)
    ap.add_argument("--worker-config", required=True)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    result = worker(args.worker, BenchConfig(**json.loads(args.worker_config)), args.sweep)
    out = Path(args.worker_out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker_main()
    else:
        main()
