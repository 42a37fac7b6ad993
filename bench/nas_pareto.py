"""Puzzle's Pareto front, measured through vLLM: parent vs MIP children vs uniform baselines.

    python bench/nas_pareto.py --run runs/nas --out bench/results/nas_pareto

Needs a run folder through `ponder nas mip`. For the parent, the MIP child of
each throughput target (the one `ponder nas pick` chose by measured held-out KL,
else the MIP's first architecture), and the uniform baseline of
the same target, all distilled the same way (BLD, then GKD with --gkd-steps),
plus each MIP child with BLD only (what GKD adds):
  - greedy accuracy on --problems held-out test problems, through vLLM;
  - decode throughput through vLLM at --batch-size sequences, as a ratio to the
    parent's measured in the same run. The parent is measured first and last;
    the gap between its two numbers is this machine's noise in that run;
  - the parent's decode step time at each of --step-batches, which shows
    whether compute or vLLM's per-step overhead dominates at the chosen batch.
Each model runs in its own process (one vLLM engine each) and is cached under
run/bench/, so a rerun only measures what is missing.

Writes <out>.json, <out>.md (the table), <out>.png (accuracy vs measured
speedup), <out>-layers.png (the chosen child, per layer) and <out>-steps.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ponder.nas import costs, evaluate, gkd, mip
from ponder.nas.export import export
from ponder.nas.space import Space
from ponder.tasks import arith
from ponder.tasks.stats import wilson


@dataclass
class BenchConfig:
    run: str = field(metadata={"help": "a NAS run folder after `ponder nas mip`"})
    out: str = field(default="bench/results/nas_pareto", metadata={"help": "output path prefix"})
    problems: int = field(default=500, metadata={"help": "held-out test problems for greedy accuracy"})
    batch_size: int = field(default=64, metadata={"help": "decode batch of the throughput measurement"})
    prompt_len: int = field(default=128, metadata={"help": "prompt tokens per sequence when timing"})
    decode_tokens: int = field(default=64, metadata={"help": "decode steps averaged when timing"})
    repeats: int = field(default=3, metadata={"help": "timings per model (median kept)"})
    dtype: str = field(default="bfloat16", metadata={"help": "the dtype vLLM computes in, for every model"})
    step_batches: str = field(default="1,8,32,64,128", metadata={"help": "batch sizes of the parent's step sweep"})
    max_new_tokens: int = field(default=256, metadata={"help": "reply limit of the accuracy check"})
    gkd_steps: int = field(default=300, metadata={"help": "GKD steps, the same for every child"})
    gkd_batch_size: int = field(default=16, metadata={"help": "GKD examples per step"})
    threads: int = field(default=1, metadata={"help": "torch threads of GKD (not of vLLM)"})
    alternatives: bool = field(default=False, metadata={"help": "also measure the MIP's alternative architectures"})
    chosen: str = field(default="", metadata={
        "help": "the child to picture per layer (default: the fastest MIP child keeping >= 95% of the accuracy)"})
    timeout: float = field(default=3600, metadata={"help": "seconds one model's measurement may take"})

    def batches(self) -> list[int]:
        return [int(b) for b in self.step_batches.split(",") if b]


def worker(folder: str, cfg: BenchConfig, sweep: bool) -> dict:
    """One model in this process: accuracy, throughput and (parent) the step sweep."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    seqs = max([cfg.batch_size, *cfg.batches()]) if sweep else cfg.batch_size
    llm = costs.open_llm(folder, max_num_seqs=seqs, max_model_len=max(cfg.prompt_len + cfg.decode_tokens + 1, 512),
                          dtype=cfg.dtype)
    tok = llm.get_tokenizer()
    problems = arith.dataset("test", cfg.problems, seed=0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=evaluate.prompt_ids(tok, p.question())) for p in problems],
                        SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens), use_tqdm=False)
    right = sum(arith.is_correct(o.outputs[0].text, p.answer) for o, p in zip(outs, problems))
    timing = costs.time_steps(llm, cfg.batch_size, cfg.prompt_len, cfg.decode_tokens, cfg.repeats)
    out = {"right": right, "n": len(problems), "accuracy": right / len(problems), "timing": timing,
           "decode_tok_s": cfg.batch_size / timing["decode_step_s"]}
    if sweep:
        out["sweep"] = {str(b): costs.time_steps(llm, b, cfg.prompt_len, cfg.decode_tokens, 1)["decode_step_s"]
                        for b in cfg.batches()}
    return out


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
    models = []
    for c in picked:
        gkd.train(gkd.GkdConfig(run=cfg.run, child=c["name"], steps=cfg.gkd_steps, batch_size=cfg.gkd_batch_size,
                                warmup=max(1, min(20, cfg.gkd_steps // 10)), threads=cfg.threads))
        stages = ("bld", "gkd") if c["kind"] == "mip" else ("gkd",)
        for stage in stages:
            folder = Path(cfg.run) / "bench" / "models" / f"{c['name']}-{stage}"
            if not (folder / "config.json").exists():
                export(gkd.build_child(space, c["name"], stage), folder, space.cfg.parent, {"child": c, "stage": stage})
            models.append({"label": f"{c['name']}-{stage}", "child": c, "stage": stage, "folder": folder})
    return models


def table(cfg: BenchConfig, parent: list[dict], rows: list[dict]) -> tuple[str, dict]:
    base_tps = sum(p["decode_tok_s"] for p in parent) / len(parent)
    base_acc = parent[0]["accuracy"]
    first = parent[0]["timing"]
    lines = [f"Device: {first['device']} ({first['dtype']}); decode batch {cfg.batch_size}, prompt {cfg.prompt_len}; "
             f"accuracy: greedy on {parent[0]['n']} test problems. Parent measured first and last: "
             f"{parent[0]['decode_tok_s']:.0f} and {parent[-1]['decode_tok_s']:.0f} tok/s.", "",
             "| model | stage | predicted x | measured x | decode tok/s | accuracy [95% CI] | retention |",
             "|---|---|---|---|---|---|---|"]
    summary = {"parent": {"decode_tok_s": base_tps, "accuracy": base_acc}, "models": []}
    lo, hi = wilson(parent[0]["right"], parent[0]["n"])
    lines.append(f"| parent | - | 1.00 | 1.00 | {base_tps:.0f} | {base_acc:.3f} [{lo:.3f}, {hi:.3f}] | 1.000 |")
    for r in rows:
        m, c = r["measured"], r["child"]
        lo, hi = wilson(m["right"], m["n"])
        speed, keep = m["decode_tok_s"] / base_tps, m["accuracy"] / max(base_acc, 1e-9)
        summary["models"].append({"label": r["label"], "kind": c["kind"], "stage": r["stage"], "target": c["target"],
                                  "blocks": c["blocks"], "predicted_speedup": c["predicted"]["decode_speedup"],
                                  "speedup": speed, "accuracy": m["accuracy"], "retention": keep,
                                  "decode_tok_s": m["decode_tok_s"]})
        lines.append(f"| {r['label']} | {r['stage']} | {c['predicted']['decode_speedup']:.2f} | {speed:.2f} | "
                     f"{m['decode_tok_s']:.0f} | {m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {keep:.3f} |")
    sweep = parent[0].get("sweep", {})
    if sweep:
        lines += ["", "Parent decode step vs batch size: " + ", ".join(
            f"b={b}: {s * 1e3:.2f} ms ({int(b) / s:.0f} tok/s)" for b, s in sweep.items())]
    return "\n".join(lines) + "\n", summary


def chosen_child(cfg: BenchConfig, summary: dict) -> dict | None:
    gkd_mip = [m for m in summary["models"] if m["kind"] == "mip" and m["stage"] == "gkd"]
    if cfg.chosen:
        return next((m for m in summary["models"] if m["label"] in (cfg.chosen, f"{cfg.chosen}-gkd")), None)
    keeping = [m for m in gkd_mip if m["retention"] >= 0.95]
    if keeping:
        return max(keeping, key=lambda m: m["speedup"])
    return max(gkd_mip, key=lambda m: m["retention"], default=None)


def plots(cfg: BenchConfig, summary: dict, sweep: dict, space: Space) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([1.0], [summary["parent"]["accuracy"]], marker="*", s=200, c="k", label="parent")
    styles = {("mip", "gkd"): ("o", "C0", "Puzzle (MIP) + GKD"), ("mip", "bld"): ("o", "none", "Puzzle, BLD only"),
              ("uniform", "gkd"): ("s", "C1", "uniform + GKD")}
    for (kind, stage), (marker, color, label) in styles.items():
        ms = [m for m in summary["models"] if m["kind"] == kind and m["stage"] == stage]
        if ms:
            ax.scatter([m["speedup"] for m in ms], [m["accuracy"] for m in ms], marker=marker, s=60,
                       facecolors=color, edgecolors="C0" if kind == "mip" else "C1", label=label)
            for m in ms:
                ax.annotate(f"x{m['target']:.2f}", (m["speedup"], m["accuracy"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"measured decode speedup vs parent (vLLM, batch {cfg.batch_size})")
    ax.set_ylabel("greedy accuracy (test)")
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
        ax.set_title(f"{chosen['label']}: x{chosen['speedup']:.2f} decode, {chosen['retention']:.1%} of accuracy")
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
    rows = [m | {"measured": measure(m["label"], m["folder"], cfg)} for m in models]
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
        print(f"chosen: {chosen['label']}: x{chosen['speedup']:.2f} measured decode throughput, "
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
