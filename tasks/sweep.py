"""`ponder eval sweep`: strategies x N on one task, with plots.

    ponder eval sweep --base-url http://localhost:8000/v1 --limit 500 \
        --strategies direct,self_consistency,tournament --ns 1,2,4,8,16 --out bench/results

Greedy `direct` runs once (N=1, temperature 0) as the baseline; every other
strategy runs at each N with `--temperature`. Writes sweep.json, accuracy_vs_n.png
and accuracy_vs_tokens.png (95% intervals as error bars). A rerun into the same --out keeps the
points already there and runs only the missing ones; use a fresh folder for other settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ponder import strategies
from ponder.strategies.tournament import Params, failure_bound
from ponder.tasks.eval import EvalConfig, add_common, common, evaluate, parse_params, summary
from ponder.tasks.stats import diff_interval


def plot(records: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["label"], []).append(r)
    for x_key, name, xlabel in (("n", "accuracy_vs_n.png", "N (candidates)"),
                                ("completion_tokens_per_problem", "accuracy_vs_tokens.png",
                                 "completion tokens per problem")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label, rs in by.items():
            rs = sorted(rs, key=lambda r: r[x_key])
            xs = [r[x_key] for r in rs]
            ys = [r["accuracy"] for r in rs]
            err = [[r["accuracy"] - r["ci95"][0] for r in rs], [r["ci95"][1] - r["accuracy"] for r in rs]]
            if label == "greedy":
                ax.axhline(ys[0], color="k", ls="--", lw=1, label=f"greedy ({ys[0]:.3f})")
                continue
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ponder eval sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(ap)
    ap.add_argument("--strategies", default="self_consistency,tournament,reverse_verify,critical_tokens")
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--param", action="append", default=[],
                    help="STRATEGY.KEY=VALUE, a fixed parameter of one strategy (e.g. tournament.k=2)")
    ap.add_argument("--ks", default="", help="also run the tournament at N=--k-at-n with each of these K")
    ap.add_argument("--k-at-n", type=int, default=8)
    ap.add_argument("--pairs", action="store_true", help="measure p_gen and p_comp (eval --format pairs) and "
                    "put the paper's failure bound beside every tournament row")
    a = ap.parse_args(argv)
    out = Path(a.out or "runs/sweep")
    out.mkdir(parents=True, exist_ok=True)
    fixed: dict[str, dict[str, Any]] = {}
    for key, value in parse_params(a.param).items():
        name, _, param = key.partition(".")
        if not param or name not in strategies.STRATEGIES:
            ap.error(f"--param {key}=...: expected STRATEGY.KEY with a strategy of {sorted(strategies.STRATEGIES)}")
        fixed.setdefault(name, {})[param] = value
    shared = common(a)
    grid = [("greedy", EvalConfig(**shared, strategy="direct", temperature=0.0), 1)]
    for name in a.strategies.split(","):
        for n in map(int, a.ns.split(",")):
            params = {"n": n, **fixed.get(name, {})}
            grid.append((name, EvalConfig(**shared, strategy=name, params=params, temperature=a.temperature), n))
    for k in filter(None, a.ks.split(",")):
        params = {**fixed.get("tournament", {}), "n": a.k_at_n, "k": int(k)}
        grid.append((f"tournament K={k}", EvalConfig(**shared, strategy="tournament", params=params,
                                                     temperature=a.temperature), a.k_at_n))
    if a.pairs:
        grid.append(("pairs", EvalConfig(**shared, format="pairs", n=8, temperature=a.temperature), 8))
    # Resumable and cumulative: a point already in sweep.json with the same config is kept, not
    # re-run, and the points of earlier sweeps into the same folder stay in it.
    path = out / "sweep.json"
    records = json.loads(path.read_text()) if path.exists() else []
    ran = []  # this sweep's points, in grid order
    for label, cfg, n in grid:
        config = json.loads(json.dumps(asdict(cfg)))
        rec = next((r for r in records if r["label"] == label and r.get("config") == config), None)
        if rec is None:
            rec = asyncio.run(evaluate(cfg))
            if "rows" in rec:  # per-problem outcomes, for the paired interval against greedy
                rec["correct"] = [int(row["ok"][0]) for row in rec.pop("rows")]
            rec = {"label": label, "n": n, **rec}
            records.append(rec)
            path.write_text(json.dumps(records, indent=1) + "\n")
        print(summary(rec), flush=True)
        ran.append(rec)
    greedy = ran[0]
    for r in records:
        if r is not greedy and r["label"] != "pairs":
            r["vs_greedy"] = [r["accuracy"] - greedy["accuracy"], *diff_interval(r, greedy)]
            print(f"{r['label']} N={r['n']}: {r['accuracy']:.3f} - greedy {greedy['accuracy']:.3f} = "
                  f"{r['vs_greedy'][0]:+.3f} [{r['vs_greedy'][1]:+.3f}, {r['vs_greedy'][2]:+.3f}]")
    path.write_text(json.dumps(records, indent=1) + "\n")
    pairs = next((r for r in records if r["label"] == "pairs"), None)
    if pairs:
        for r in records:
            if r["label"].startswith("tournament"):
                params = Params(**r["config"]["params"])
                r["failure"] = 1 - r["accuracy"]
                r["failure_bound"] = failure_bound(pairs["p_gen"], pairs[f"p_comp_{params.judge}"], r["n"],
                                                   2 * params.per_order)  # calls per pair, both orders
                print(f"{r['label']} N={r['n']}: failure {r['failure']:.3f}, bound {r['failure_bound']:.3f}")
        path.write_text(json.dumps(records, indent=1) + "\n")
    plot([r for r in records if r["label"] != "pairs"], out)
    print(f"wrote {out}/sweep.json, accuracy_vs_n.png, accuracy_vs_tokens.png")
