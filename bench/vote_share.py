"""critical_tokens' `vote_share`, replayed on recorded requests (issue 31).

    ponder eval --base-url URL --strategy critical_tokens --param n=8 --param vote_share=1.0 \\
        --temperature 0.7 --split test --skip 500 --limit 500 --out runs/ct_test.json
    python bench/vote_share.py runs/ct_test.json [more records]

A record made with vote_share 1.0 (the judge decides whenever the answers differ) keeps, per
problem, the pool's votes and the judge's pick. For each share s, the most common answer stands
where it holds at least s of the trajectories, and the judge's pick elsewhere: the same samples and
verdicts replayed, so the rows differ only in the rule. Prints accuracy, the paired 95% interval of
its difference to s = 1.0, and how often the judge still runs.
"""

from __future__ import annotations

import argparse
import json

from ponder.tasks import stats
from ponder.tasks.answers import normalize
from ponder.tasks.eval import EvalConfig, items

SHARES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)


def summary(right: list[bool]) -> dict:
    k = sum(right)
    return {"accuracy": k / len(right), "ci95": stats.wilson(k, len(right)), "correct": [int(r) for r in right]}


def replay(rec: dict, share: float) -> tuple[list[bool], int]:
    """Per problem, whether the rule's answer is right; and how many problems still go to the judge."""
    gold = [normalize(str(it.check)) for it in items(EvalConfig(**rec["config"]))]
    right, judged = [], 0
    for row, want in zip(rec["rows"], gold):
        info = row["info"][0]  # the one choice's
        votes = info["votes"]
        top = max(votes, key=votes.get) if votes else None  # first most common, as strategies.answers.vote
        if len(votes) > 1 and votes[top] < share * (sum(votes.values()) + info["unextracted"]):
            judged += 1
            right.append(info["answer"] == want)
        else:
            right.append(top == want)
    return right, judged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+")
    for path in ap.parse_args().records:
        rec = json.load(open(path))
        base, _ = replay(rec, 1.0)
        assert sum(base) == sum(row["ok"][0] for row in rec["rows"]), "the record was not made with vote_share 1.0"
        cfg = rec["config"]
        print(f"{path}: split {cfg['split']}, problems {cfg['skip']}..{cfg['skip'] + cfg['limit'] - 1}")
        print("| vote_share | accuracy | - judge always [paired 95%] | judged |\n|---|---|---|---|")
        for share in SHARES:
            right, judged = replay(rec, share)
            row, ref = summary(right), summary(base)
            lo, hi = stats.diff_interval(row, ref)
            d = row["accuracy"] - ref["accuracy"]
            print(f"| {share} | {row['accuracy']:.3f} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] | {judged / len(right):.2f} |")


if __name__ == "__main__":
    main()
