"""Puzzle step 5b: pick each target's architecture by its measured held-out KL.

    ponder nas pick --run runs/nas

The MIP minimises the *sum* of replace-one-block scores, as if blocks damaged
the model independently. They do not: on ponder-small the x2.00 child's summed
score was 0.009 and its measured KL 0.027, and the MIP's children fell below
the uniform baselines (bench/RESULTS.md). So every architecture of mip.json
(each target's MIP child and its alternatives, and the uniform baseline) is
assembled from BLD's blocks and its KL(parent || child) per reply token is
measured on the held-out text `ponder nas score` used; each target's pick is
the MIP architecture with the lowest measured KL (`ponder nas mip
--alternatives K` makes K more to choose from). The uniform baseline is
measured beside it, so the comparison the pick is for is printed, not assumed.

Writes "measured_kl" into each architecture of mip.json and "picked" (target
-> name), after every architecture (atomically); a rerun measures only what is
missing, and a new `ponder nas mip` starts afresh.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from ponder import flags
from ponder.nas import evaluate, mip
from ponder.nas.bld import assemble, trained
from ponder.nas.score import read_scores
from ponder.nas.space import Space


@dataclass
class PickConfig:
    run: str = field(metadata={"help": "the NAS run folder (after `ponder nas mip`)"})
    threads: int = field(default=1, metadata={"help": "torch threads"})


def picks(plan: dict) -> dict[str, str]:
    """Per target, the MIP architecture with the lowest measured KL (of those measured)."""
    out: dict[str, tuple[float, str]] = {}
    for c in plan["children"]:
        if "measured_kl" in c:
            key = f"{c['target']:.2f}"
            out[key] = min(out.get(key, (float("inf"), "")), (c["measured_kl"], c["name"]))
    return {t: name for t, (_, name) in out.items()}


def pick(cfg: PickConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    space = Space.read(cfg.run)
    plan = mip.read_plan(cfg.run)
    held = read_scores(cfg.run)["settings"]  # the held-out text the scores were taken on
    parent = space.parent()
    variants = trained(space)
    batches = space.text(held["mix"], held["max_len"]).heldout(held["examples"], held["batch_size"])
    ref = evaluate.reference(parent, batches)
    todo = [c for c in plan["children"] + plan["uniform"] if "measured_kl" not in c]
    for c in tqdm(todo, desc="measured KL"):
        c["measured_kl"] = evaluate.mean_kl(assemble(parent, c["blocks"], variants), batches, ref)
        plan["picked"] = picks(plan)
        mip.write_plan(cfg.run, plan)
    plan["picked"] = picks(plan)
    mip.write_plan(cfg.run, plan)
    print(f"{'architecture':<18}{'target':>8}{'summed score':>14}{'measured KL':>13}")
    for c in plan["children"] + plan["uniform"]:
        mark = "  <- picked" if plan["picked"].get(f"{c['target']:.2f}") == c["name"] else ""
        print(f"{c['name']:<18}{c['target']:>8.2f}{c['score']:>14.4f}{c['measured_kl']:>13.4f}{mark}")
    return plan


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(PickConfig, argv, "ponder nas pick", __doc__)
    print(f"config: {json.dumps(asdict(cfg))}")
    pick(cfg)
