"""cDPO stage 2 against its baselines on the same pairs: greedy accuracy through `ponder serve` (issue 12).

    python bench/cdpo_table.py --run runs/cdpo [--base models/ponder-small] [--limit 500]

Expects <run>/sft, <run>/dpo and <run>/cdpo from `ponder train cdpo --loss ...`
(the same pairs and steps). One `ponder serve` serves the base and the three,
and `ponder eval` (the official openai SDK, greedy) runs each on the same
--limit held-out test problems. Per model: accuracy with its 95% Wilson
interval, the paired 95% interval of its difference to the base (Newcombe,
method 10, as `ponder eval sweep` reports), completion tokens per answer and
the training cost from train_record.json. Writes bench/results/cdpo.json and
cdpo.png, and prints the markdown table.
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

ROOT = Path(__file__).resolve().parents[1]

LOSSES = ("sft", "dpo", "cdpo")


def measure(base: str, run: Path, limit: int) -> list[dict]:
    folders = [base] + [str(run / loss) for loss in LOSSES]
    server = PonderServer(models=folders, timeout=600)
    try:
        rows = []
        for folder in folders:
            rec = asyncio.run(evaluate(EvalConfig(base_url=server.base_url, model_name=Path(folder).name,
                                                  limit=limit)))
            record = Path(folder, "train_record.json")
            train = json.loads(record.read_text()) if folder != base and record.exists() else {}
            rows.append({"model": folder, "accuracy": rec["accuracy"], "ci95": rec["ci95"],
                         "correct": [int(r["ok"][0]) for r in rec["rows"]],
                         "tokens_per_answer": rec["completion_tokens_per_problem"],
                         "train_seconds": train.get("train_seconds"), "steps": train.get("steps"),
                         "pairs": train.get("pairs")})
        return rows
    finally:
        server.stop()


def table(rows: list[dict]) -> str:
    out = ["| model | accuracy [95% CI] | vs base [paired 95% CI] | tokens / answer | training |",
           "|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        d = r["accuracy"] - rows[0]["accuracy"]
        dlo, dhi = diff_interval(r, rows[0])
        vs = "-" if r is rows[0] else f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        cost = "-" if r["steps"] is None else f"{r['steps']} steps, {r['pairs']} pairs, {r['train_seconds']:.0f} s"
        out.append(f"| {Path(r['model']).name} | {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {vs} | "
                   f"{r['tokens_per_answer']:.1f} | {cost} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r["model"]).name for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["ci95"][0] for a, r in zip(acc, rows)], [r["ci95"][1] - a for a, r in zip(acc, rows)]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, acc, yerr=err, capsize=6, color=["grey", "tab:blue", "tab:orange", "tab:green"][: len(rows)])
    ax.set(ylabel="greedy accuracy (95% CI)", title=f"cDPO vs DPO vs SFT, {len(rows[0]['correct'])} test problems",
           ylim=(min(r["ci95"][0] for r in rows) - 0.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "cdpo"))
    ap.add_argument("--base", default=DEFAULT_MODEL)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    rows = measure(args.base, Path(args.run), args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cdpo.json").write_text(json.dumps({"run": args.run, "rows": rows}, indent=1))
    plot(rows, out / "cdpo.png")
    print(table(rows))


if __name__ == "__main__":
    main()
