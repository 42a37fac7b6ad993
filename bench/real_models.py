"""The strategies on the model a user brings: accuracy against greedy, and how often the formats were read.

    python bench/real_models.py --model models/SmolLM2-135M-Instruct --data facts --out bench/results/real_smollm2
    python bench/real_models.py --model models/ponder-small --data arith --out bench/results/real_ponder_small

One `ponder serve` on the model (its own task: `math` for a third-party model,
`arith` for ponder's own, from its ponder.json), then, through the official
openai SDK on the same --limit questions: greedy `direct`, and
self_consistency, tournament and reverse_verify at N=--n and --temperature.
Per strategy: accuracy with its 95% Wilson interval, the paired 95% interval
of its difference to greedy (Newcombe, method 10), completion tokens per
question, the share of the tournament's judge calls whose verdict was read
(written in the task's format, or read from the log-probabilities of its two
verdicts), the share of candidates whose answer was extracted, and the
requests that failed. Writes <out>.json and <out>.png, prints the markdown table; a rerun with the
same settings keeps the rows already in <out>.json (--rerun names rows to measure again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ponder.tasks.eval import EvalConfig, evaluate
from ponder.tasks.stats import diff_interval
from ponder.testing import PonderServer

STRATEGIES = ("self_consistency", "reverse_verify", "tournament")  # the slowest last


def reads(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Verdicts and answers read over the rows' `ponder.info`, and requests that failed."""
    infos = [r["info"][0] for r in rows if r.get("info")]
    verdicts = {k: sum((i.get("verdicts") or {}).get(k, 0) for i in infos)
                for k in ("written", "constrained", "unread")}
    unextracted = sum(i.get("unextracted", 0) for i in infos)
    calls = sum(verdicts.values())
    return {"verdicts": verdicts, "verdicts_read": (calls - verdicts["unread"]) / calls if calls else None,
            "answers_extracted": 1 - unextracted / (n * len(infos)) if infos else None,
            "errors": sum(1 for r in rows if "error" in r)}


def measure(a: argparse.Namespace, done: dict[str, dict[str, Any]],
            save: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Greedy and each strategy, in that order; a row in `done` (an earlier run's, same settings) is kept.
    `save` gets the rows so far after each one measured (a stopped run keeps them)."""
    server = PonderServer(models=[a.model], timeout=600)
    try:
        base = dict(base_url=server.base_url, data=a.data, limit=a.limit, max_tokens=a.max_tokens, seed=a.seed,
                    concurrency=a.concurrency, instruction=not a.no_instruction)
        runs = [("greedy", EvalConfig(**base, strategy="direct", temperature=0.0))]
        runs += [(s, EvalConfig(**base, strategy=s, params={"n": a.n, **json.loads(a.params.get(s, "{}"))},
                                temperature=a.temperature)) for s in STRATEGIES]
        out = []
        for label, cfg in runs:
            if label in done and label not in a.rerun:
                out.append(done[label])
                continue
            rec = asyncio.run(evaluate(cfg))
            row = {"label": label, "params": cfg.params, "task": cfg.formats().name, "accuracy": rec["accuracy"],
                   "ci95": rec["ci95"], "correct": [int(r["ok"][0]) for r in rec["rows"]],
                   "tokens": rec["completion_tokens_per_problem"], "wall_s": rec["wall_s"],
                   **reads(rec["rows"], cfg.params.get("n", 1))}
            print(f"{label}: accuracy {row['accuracy']:.3f}, verdicts read {row['verdicts_read']}, "
                  f"answers extracted {row['answers_extracted']}, {row['wall_s']}s", flush=True)
            out.append(row)
            save(out)
        return out
    finally:
        server.stop()


def table(rows: list[dict[str, Any]]) -> str:
    greedy = rows[0]
    out = ["| strategy | accuracy [95% CI] | vs greedy [paired 95% CI] | completion tokens / question | "
           "verdicts read (written + from log-probs) | answers extracted | errors |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        vs = "-"
        if r is not greedy:
            dlo, dhi = diff_interval(r, greedy)
            vs = f"{r['accuracy'] - greedy['accuracy']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        v = r["verdicts"]
        read = (f"{r['verdicts_read']:.2f} ({v['written']} + {v['constrained']} of "
                f"{sum(v.values())})" if r["verdicts_read"] is not None else "-")
        answers = f"{r['answers_extracted']:.2f}" if r["answers_extracted"] is not None else "-"
        name = r["label"] if r is greedy else f"{r['label']} N={r['params']['n']}"
        out.append(f"| {name} | {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {vs} | {r['tokens']:.0f} | {read} | "
                   f"{answers} | {r['errors']} |")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    xs = range(len(rows))
    err = [[r["accuracy"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["accuracy"] for r in rows]]
    ax.bar(xs, [r["accuracy"] for r in rows], yerr=err, capsize=4, color=["0.6"] + ["C0"] * (len(rows) - 1))
    ax.axhline(rows[0]["accuracy"], color="k", ls="--", lw=1)
    ax.set_xticks(list(xs), [r["label"] for r in rows])
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--data", default="facts", choices=("facts", "arith"))
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-instruction", action="store_true", help="do not append the task's instruction")
    ap.add_argument("--param", action="append", default=[], metavar="STRATEGY=JSON",
                    help='extra parameters of one strategy, e.g. tournament={"judge_max_tokens": 128}')
    ap.add_argument("--out", required=True, help="path prefix of the .json and .png written")
    ap.add_argument("--rerun", default="", help="comma-separated rows to measure again although <out>.json "
                    "has them (rows of an earlier run with the same settings are kept, the others measured)")
    a = ap.parse_args()
    a.params = dict(p.split("=", 1) for p in a.param)
    a.rerun = set(filter(None, a.rerun.split(",")))
    out = Path(a.out)
    settings = {k: v for k, v in vars(a).items() if k != "rerun"}
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    done = {r["label"]: r for r in old.get("rows", [])} if old.get("args") == settings else {}
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict[str, Any]]) -> None:
        out.with_suffix(".json").write_text(json.dumps({"args": settings, "rows": rows}, indent=1) + "\n")

    rows = measure(a, done, save)
    plot(rows, f"{Path(a.model).name}, {a.data} ({rows[0]['task']} task), N={a.n}, T={a.temperature}, "
               f"{a.limit} questions", out.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    main()
