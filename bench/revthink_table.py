"""RevThink against SFT on the same teacher data: six students, greedy, through `ponder serve` (issue 11).

    python bench/revthink_table.py --data bench/data/revthink-teacher --base models/revthink-student-base \
        --run runs/revthink [--teacher models/ponder-small] [--limit 500] [--dtype float32]

Trains (each skipped once its folder holds a model; each resumable) SFT on the
forward reasoning and RevThink on all three objectives, on 10% and on 100% of
kept.jsonl, all from the same base student with the same settings, into
<run>/sft-10, sft-100, revthink-10, revthink-100, plus sft-100-x3: SFT for
three times the epochs, as many steps as revthink-100 (equal compute), and
revthink-100-x3: RevThink for those epochs too. Then one `ponder serve`
serves the base, the six students and the teacher, and `ponder eval` (the
official openai SDK) runs each greedily on the same --limit held-out test
problems; the teacher runs with the strategy that wrote the data, at the
temperature it wrote it. Per model: accuracy with its 95% Wilson interval,
the paired 95% interval of its difference to SFT at 100% (Newcombe, method
10), and the training cost. Writes <out>/revthink.json and revthink.png and
prints the markdown table, with the teacher data's yield and token cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from ponder.models import DEFAULT_MODEL
from ponder.tasks.eval import EvalConfig, evaluate
from ponder.tasks.stats import diff_interval
from ponder.testing import PonderServer
from ponder.trainers import revthink

ROOT = Path(__file__).resolve().parents[1]

# name: (objectives, share of the data, epochs as a multiple of --epochs). RevThink has three examples
# per item, so sft-100-x3 is the SFT baseline at RevThink's number of steps (equal compute).
# revthink-100-x3 is RevThink at sft-100-x3's epochs: the equal-epoch comparison at a less undertrained point.
STUDENTS = {"sft-10": ("forward", 0.1, 1), "sft-100": ("forward", 1.0, 1), "sft-100-x3": ("forward", 1.0, 3),
            "revthink-10": ("all", 0.1, 1), "revthink-100": ("all", 1.0, 1), "revthink-100-x3": ("all", 1.0, 3)}


def train_students(args: argparse.Namespace) -> None:
    for name, (objectives, fraction, times) in STUDENTS.items():
        out = Path(args.run, name)
        if (out / "train_record.json").exists():
            continue
        revthink.train(revthink.StudentConfig(
            data=args.data, student=args.base, out=str(out), objectives=objectives, fraction=fraction,
            lr=args.lr, epochs=times * args.epochs, batch_size=args.batch_size, micro_batch=args.micro_batch,
            bf16=args.bf16, seed=args.seed))


def measure(args: argparse.Namespace, data: dict) -> list[dict]:
    folders = {"base": args.base, **{name: str(Path(args.run, name)) for name in STUDENTS}}
    server = PonderServer("--engine-arg", f"dtype={args.dtype}", models=[args.teacher, *folders.values()],
                          timeout=900)
    try:
        runs = [(name, Path(folder).name, "direct", {}, 0.0) for name, folder in folders.items()]
        strategy = data["config"]["teacher_strategy"]
        spec = json.loads(strategy) if strategy.startswith("{") else {"name": strategy or "direct"}
        name = spec.pop("name")
        runs.append((f"teacher ({name} n={spec.get('n', 1)})", Path(args.teacher).name, name, spec,
                     data["config"]["temperature"]))
        rows = []
        for label, model, strategy, params, temperature in runs:
            rec = asyncio.run(evaluate(EvalConfig(base_url=server.base_url, model_name=model, limit=args.limit,
                                                  strategy=strategy, params=params, temperature=temperature)))
            record = Path(args.run, label, "train_record.json")
            rows.append({"model": label, "accuracy": rec["accuracy"], "ci95": rec["ci95"],
                         "correct": [int(r["ok"][0]) for r in rec["rows"]],
                         "tokens_per_answer": rec["completion_tokens_per_problem"],
                         "train": json.loads(record.read_text()) if record.exists() else None})
        return rows
    finally:
        server.stop()


def table(rows: list[dict]) -> str:
    ref = next(r for r in rows if r["model"] == "sft-100")
    out = ["| model | accuracy [95% CI] | vs sft-100 [paired 95% CI] | tokens / answer | training |",
           "|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        dlo, dhi = diff_interval(r, ref)
        vs = "-" if r is ref else f"{r['accuracy'] - ref['accuracy']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        t = r["train"]
        cost = "-" if t is None else (f"{t['items']} items, {t['examples']} examples, {t['steps']} steps, "
                                      f"{t['train_seconds']:.0f} s")
        out.append(f"| {r['model']} | {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {vs} | "
                   f"{r['tokens_per_answer']:.1f} | {cost} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"].replace(" (", "\n(") for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["ci95"][0] for a, r in zip(acc, rows)], [r["ci95"][1] - a for a, r in zip(acc, rows)]]
    colors = {"base": "grey", "sft": "tab:blue", "revthink": "tab:green", "teacher": "black"}
    fig, ax = plt.subplots(figsize=(11, 4))
    bars = ax.bar(names, acc, yerr=err, capsize=6, color=[colors[n.split("-")[0].split()[0]] for n in names])
    ax.bar_label(bars, labels=[f"{a:.3f}" for a in acc], padding=3, fontsize=8)
    for bar, name in zip(bars, names):
        if name.endswith("-10"):
            bar.set_alpha(0.5)
    ax.set(ylabel="greedy accuracy (95% CI)", ylim=(0, 1),
           title=f"RevThink vs SFT on the same teacher data, {len(rows[0]['correct'])} test problems")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "bench" / "data" / "revthink-teacher"),
                    help="the teacher data (revthink-data's folder); the default is committed")
    ap.add_argument("--base", default=str(ROOT / "models" / "revthink-student-base"))
    ap.add_argument("--run", default=str(ROOT / "runs" / "revthink"))
    ap.add_argument("--teacher", default=DEFAULT_MODEL)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--dtype", default="float32", help="what vLLM serves every model in (fp32: this CPU has no "
                                                       "bf16 unit; the teacher data was written in fp32)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast; default: where the CPU has bf16 units")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    data = json.loads(Path(args.data, "record.json").read_text())
    train_students(args)
    rows = measure(args, data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "revthink.json").write_text(json.dumps({"args": vars(args), "data": data, "rows": rows}, indent=1))
    plot(rows, out / "revthink.png")
    tokens = data["teacher_tokens"]
    print(f"teacher data: {data['kept']} kept of {data['asked']} asked (yield {data['yield']:.3f}); "
          f"{tokens['prompt_tokens']} prompt + {tokens['completion_tokens']} completion tokens "
          f"({tokens['completion_tokens'] / data['asked']:.0f} completion tokens per question, "
          f"{tokens['completion_tokens'] / max(1, data['kept']):.0f} per kept item)")
    print(table(rows))


if __name__ == "__main__":
    main()
