"""AdamW+DDP vs DeMo: data-parallel pretraining of the default model on 2 gloo ranks x 1 thread.

    python bench/demo_bench.py --out runs/demo_bench            # the comparison: hours on 2 cores
    python bench/demo_bench.py --out /tmp/demo_smoke --preset micro --steps 5 --warmup 1 \\
        --problems 8 --val-batches 1 --no-compile                # a smoke run

Each run is `torchrun --standalone --nproc-per-node 2 -m ponder.trainers.pretrain --threads 1` with
the default recipe (same steps, same batches, so the same tokens) and one optimizer: AdamW with DDP's
gradient all-reduce, DeMo at each --topks and --demo-betas, or (--signum-lrs) Signum, the sign of
DDP-synced momentum: DeMo's step with nothing compressed. Then, on the exported model:
validation loss (the training mix on held-out problems), greedy accuracy on --problems test problems
(HF generate), the bytes each rank sent per step, wall time, and the training loss after each tenth
of the run. Writes results.json and loss_curves.png under --out; a finished run is not trained
again, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ponder.tasks import ARITH, arith
from ponder.trainers.pretrain import PretrainConfig, make_batch
from ponder.trainers.toolbox import count_targets

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_sweep import generate  # noqa: E402  (bench/ is not a package)


def train(name: str, out: Path, args: argparse.Namespace, extra: list[str]) -> float:
    """One torchrun job; returns its wall seconds (0 when the model was already there)."""
    if (out / name / "train_record.json").exists():
        return 0.0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "ponder.trainers.pretrain", "--out", str(out / name), "--threads", "1",
           "--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch-size", str(args.batch_size),
           "--compile", str(args.compile), "--metrics", str(out / f"{name}.metrics.jsonl"), *extra]
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.time() - t0


@torch.no_grad()
def val_loss(model, tok, cfg: PretrainConfig, n_batches: int) -> float:
    """Mean loss per target token over n_batches steps' worth of validation problems, in the training mix."""
    stream = arith.problems("val", seed=cfg.seed, cfg=cfg.task())
    total = n = 0.0
    for step in range(n_batches):
        for ids, mask, labels in make_batch(step, cfg, tok, stream):
            k = count_targets([(ids, mask, labels)])
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * k
            n += k
    return total / n


def evaluate(model_dir: Path, args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    cfg = PretrainConfig(**json.loads((model_dir / "train_record.json").read_text())["config"])
    test = arith.dataset("test", args.problems)
    texts = generate(model, tok, [arith.forward_prompt(p.question()) for p in test], batch=64)
    return {"val_loss": val_loss(model, tok, cfg, args.val_batches),
            "greedy": sum(ARITH.correct(t, p.answer) for t, p in zip(texts, test)) / len(test)}


def curve(path: Path) -> list[dict]:
    rows = {}
    for line in path.read_text().splitlines():  # a resumed run logs its last steps twice: keep the latest
        row = json.loads(line)
        rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def smoothed(rows: list[dict], w: int = 50) -> list[float]:
    """Each step's training loss as the mean of the last w steps up to it."""
    losses = [x["loss"] for x in rows]
    return [sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1]) for i in range(len(losses))]


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_bytes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        rows = curve(out / f"{r['name']}.metrics.jsonl")
        w = min(50, len(rows))
        smooth = smoothed(rows, w)
        sent, mb = 0.0, []
        for x in rows:
            sent += x["bytes_sent"] / 1e6
            mb.append(sent)
        label = f"{r['name']} ({r['bytes_per_step'] / 1e3:,.0f} kB/step)"
        by_step.plot([x["step"] for x in rows], smooth, label=label)
        by_bytes.plot(mb, smooth, label=label)
    by_step.set(xlabel="step", ylabel=f"train loss ({w}-step mean)", yscale="log", title="loss per step")
    by_bytes.set(xlabel="MB sent per rank (cumulative)", xscale="log", yscale="log", title="loss per byte sent")
    by_step.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = PretrainConfig(out="")
    ap.add_argument("--out", default="runs/demo_bench")
    ap.add_argument("--preset", default=defaults.preset)
    ap.add_argument("--steps", type=int, default=defaults.steps)
    ap.add_argument("--warmup", type=int, default=defaults.warmup)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size, help="examples per step (all ranks)")
    ap.add_argument("--topks", default="128,32", help="DeMo runs: DCT coefficients sent per chunk")
    ap.add_argument("--demo-lr", type=float, default=defaults.lr,
                    help="DeMo's peak lr (AdamW keeps the default); off-default runs are named _betaB, _lrL, _floorF")
    ap.add_argument("--demo-min-lr-ratio", type=float, default=defaults.min_lr_ratio,
                    help="DeMo's cosine floor as a fraction of its lr (1 holds the lr after warm-up)")
    ap.add_argument("--demo-betas", default=str(defaults.demo_beta),
                    help="DeMo runs: momentum decays, each with each top-k")
    ap.add_argument("--signum-lrs", default="",
                    help="also Signum (DDP all-reduce, sign of the momentum: DeMo's step with nothing compressed) "
                         "at each of these lrs")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--problems", type=int, default=300, help="test problems for greedy accuracy")
    ap.add_argument("--val-batches", type=int, default=16, help="validation steps' worth of examples")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    args = ap.parse_args()
    torch.set_num_threads(args.nproc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {"adamw": ["--optimizer", "adamw"]}
    for k in args.topks.split(","):
        for beta in args.demo_betas.split(","):
            settings = [("beta", float(beta), defaults.demo_beta), ("lr", args.demo_lr, defaults.lr),
                        ("floor", args.demo_min_lr_ratio, defaults.min_lr_ratio)]
            name = f"demo_k{k}" + "".join(f"_{tag}{v:g}" for tag, v, default in settings if v != default)
            runs[name] = ["--optimizer", "demo", "--demo-topk", k, "--demo-beta", beta, "--lr", str(args.demo_lr),
                          "--min-lr-ratio", str(args.demo_min_lr_ratio)]
    for lr in filter(None, args.signum_lrs.split(",")):
        runs[f"signum_lr{float(lr):g}"] = ["--optimizer", "signum", "--lr", lr]
    results = []
    for name, extra in runs.items():
        wall = train(name, out, args, extra)
        record = json.loads((out / name / "train_record.json").read_text())
        res = {"name": name, "wall_s": round(wall, 1), "train_s": record["train_seconds"],
               "bytes_per_step": record["bytes_sent_per_step"], "train_loss_last_50": record["loss_last_50"],
               **evaluate(out / name, args)}
        # the 50-step mean after each tenth of the run: where along the way the optimizers part
        smooth = smoothed(curve(out / f"{name}.metrics.jsonl"))
        ends = sorted({max(1, i * len(smooth) // 10) for i in range(1, 11)})
        res["train_loss_by_step"] = {s: round(smooth[s - 1], 4) for s in ends}
        print(json.dumps(res), flush=True)
        results.append(res)
    base = results[0]
    for r in results:
        r["val_loss_vs_adamw"] = r["val_loss"] / base["val_loss"] - 1
        r["bytes_ratio_adamw_over_this"] = base["bytes_per_step"] / max(1.0, r["bytes_per_step"])
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out)
    print("demo_bench: " + "; ".join(
        f"{r['name']} val loss {r['val_loss']:.4f} ({r['val_loss_vs_adamw']:+.1%}), greedy {r['greedy']:.3f}, "
        f"{r['bytes_per_step'] / 1e3:,.1f} kB/step/rank ({r['bytes_ratio_adamw_over_this']:.0f}x fewer), "
        f"train {r['train_s']:.0f}s" for r in results))
    for r in results[1:]:
        by_step, adamw = r["train_loss_by_step"], base["train_loss_by_step"]
        print(f"{r['name']} train loss vs adamw, 50-step means after step: "
              + ", ".join(f"{s} {by_step[s] / adamw[s] - 1:+.1%}" for s in by_step))


if __name__ == "__main__":
    main()
