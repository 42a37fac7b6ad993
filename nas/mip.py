"""Puzzle step 5: pick one variant per sub-block by mixed-integer programming.

    ponder nas mip --run runs/nas --speedups 1.25,1.5,2.0 --alternatives 1

With x[o] = 1 when option o (a variant in its slot, a slot being one layer's
attention or FFN) is chosen, scipy's HiGHS solves (Puzzle, arXiv:2411.19146, step 5):

    minimise    sum_o score[o] x[o]                        (summed replace-one-block KL)
    subject to  sum_{o in slot} x[o] = 1                   for every slot
                sum_o cost_k[o] x[o] <= budget_k           decode time, prefill time, memory
                sum_{o in S} x[o] <= |slots| - min_diff    for every earlier solution S (alternatives)

A throughput target s (decode tokens/s >= s times the parent's, at the batch
size the costs were measured at) is a decode-time budget: the parent's
predicted step time / s, less the overhead every model pays. Uniform baselines
(the same attention and FFN variant in every layer) are chosen per target for
the bench: the best-scoring uniform architecture that meets it.

Writes run/mip.json.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ponder import flags
from ponder.nas.costs import read_costs
from ponder.nas.decilm import KINDS
from ponder.nas.score import read_scores
from ponder.nas.space import Space

COSTS = ("decode_step_s", "prefill_s", "memory_bytes")


@dataclass(frozen=True)
class Option:
    slot: str  # "3.ffn"
    name: str  # "ffn50"
    score: float  # predicted damage; an architecture's is the sum of its options'
    cost: dict[str, float]  # each of COSTS


Choice = dict[str, str]  # slot -> variant name


def total(options: Sequence[Option], choice: Choice) -> tuple[float, dict[str, float]]:
    """Summed score and costs of a choice."""
    chosen = [o for o in options if choice.get(o.slot) == o.name]
    return sum(o.score for o in chosen), {k: sum(o.cost.get(k, 0.0) for o in chosen) for k in COSTS}


def differs(choice: Choice, other: Choice) -> int:
    return sum(choice[s] != other.get(s) for s in choice)


def solve(options: Sequence[Option], budgets: dict[str, float], exclude: Sequence[Choice] = (),
          min_diff: int = 1) -> Choice | None:
    """The best choice within the budgets that differs from each of `exclude` in >= min_diff slots,
    or None when there is none."""
    slots = sorted({o.slot for o in options})
    rows, lo, hi = [], [], []
    for s in slots:
        rows.append([1.0 if o.slot == s else 0.0 for o in options])
        lo.append(1.0)
        hi.append(1.0)
    for prev in exclude:
        rows.append([1.0 if prev.get(o.slot) == o.name else 0.0 for o in options])
        lo.append(-np.inf)
        hi.append(len(slots) - min_diff)
    # Costs in seconds are ~1e-4: each budget row is scaled to O(1) so that HiGHS's absolute
    # feasibility tolerance (1e-7) cannot let a choice over the budget through.
    scale = {k: max(abs(b), *(abs(o.cost[k]) for o in options), 1e-300) for k, b in budgets.items()}
    slack = dict.fromkeys(budgets, 0.0)
    top = max((abs(o.score) for o in options), default=1.0) or 1.0
    for _ in range(5):
        cost_rows = [[o.cost[k] / scale[k] for o in options] for k in budgets]
        res = milp(c=np.array([o.score / top for o in options]), integrality=np.ones(len(options)),
                   bounds=Bounds(0, 1), options={"mip_rel_gap": 1e-9},
                   constraints=LinearConstraint(np.array(rows + cost_rows), lo + [-np.inf] * len(budgets),
                                                hi + [(b - slack[k]) / scale[k] for k, b in budgets.items()]))
        if res.status != 0 or res.x is None:
            return None
        choice = {o.slot: o.name for o, x in zip(options, res.x) if x > 0.5}
        over = {k: c - budgets[k] for k, c in total(options, choice)[1].items() if k in budgets and c > budgets[k]}
        if not over:
            return choice
        for k, excess in over.items():  # still within the tolerance: tighten that budget and solve again
            slack[k] += excess + 1e-9 * scale[k]
    return None


def brute_force(options: Sequence[Option], budgets: dict[str, float], exclude: Sequence[Choice] = (),
                min_diff: int = 1) -> Choice | None:
    """The same problem by enumeration (for tests on small tables)."""
    by_slot: dict[str, list[Option]] = {}
    for o in options:
        by_slot.setdefault(o.slot, []).append(o)
    best, best_score = None, np.inf
    for combo in itertools.product(*by_slot.values()):
        choice = {o.slot: o.name for o in combo}
        score, cost = total(options, choice)
        if all(cost[k] <= b + 1e-9 for k, b in budgets.items()) and \
                all(differs(choice, prev) >= min_diff for prev in exclude) and score < best_score:
            best, best_score = choice, score
    return best


@dataclass
class MipConfig:
    run: str = field(metadata={"help": "the NAS run folder (after `ponder nas score` and `ponder nas costs`)"})
    speedups: str = field(default="1.25,1.5,2.0", metadata={
        "help": "decode-throughput targets as multiples of the parent's, comma-separated"})
    max_prefill_ratio: float = field(default=0.0, metadata={
        "help": "latency target: prefill time at most this times the parent's (0: none)"})
    max_memory_ratio: float = field(default=0.0, metadata={
        "help": "memory target: parameters + KV cache at most this times the parent's (0: none)"})
    alternatives: int = field(default=1, metadata={"help": "extra architectures per target (diversity constraint)"})
    min_diff: int = field(default=2, metadata={"help": "sub-blocks in which an alternative differs from earlier ones"})

    def targets(self) -> list[float]:
        out = [float(s) for s in self.speedups.split(",") if s]
        if any(s <= 0 for s in out):
            raise ValueError("speedups must be positive")
        return out

    def __post_init__(self) -> None:
        self.targets()


def options_of(space: Space, scores: dict, costs: dict) -> list[Option]:
    missing = [v.key for v in space.variants if v.key not in scores["kl"]]
    if missing:
        raise SystemExit(f"ponder nas: no score for {missing[:5]}...; rerun `ponder nas score`")
    return [Option(slot=f"{v.layer}.{v.kind}", name=v.name, score=max(0.0, scores["kl"][v.key]),
                   cost={k: costs["types"][v.type][k] for k in COSTS}) for v in space.variants]


def parent_choice(space: Space) -> Choice:
    return {f"{v.layer}.{v.kind}": "parent" for v in space.variants}


def layers_of(choice: Choice, n_layers: int) -> list[dict[str, str]]:
    """slot -> name, as per-layer {"attention": name, "ffn": name} (mip.json's and export's form)."""
    return [{k: choice[f"{i}.{k}"] for k in KINDS} for i in range(n_layers)]


def describe(name: str, target: float, choice: Choice, options: Sequence[Option], parent: dict[str, float],
             fixed: dict[str, float], n_layers: int) -> dict:
    score, cost = total(options, choice)
    ratio = {k: (fixed[k] + cost[k]) / (fixed[k] + parent[k]) for k in COSTS}
    return {"name": name, "target": target, "blocks": layers_of(choice, n_layers), "score": score,
            "predicted": {"decode_speedup": 1 / ratio["decode_step_s"], "prefill_ratio": ratio["prefill_s"],
                          "memory_ratio": ratio["memory_bytes"]}}


def uniform_choices(space: Space) -> list[Choice]:
    """The same attention and FFN variant in every layer (layer 0 keeps its attention when the choice is a no-op)."""
    names = {k: sorted({v.name for v in space.variants if v.kind == k}) for k in KINDS}
    n = 1 + max(v.layer for v in space.variants)
    valid = {v.key for v in space.variants}
    out = []
    for a, f in itertools.product(names["attention"], names["ffn"]):
        out.append({f"{i}.attention": a if f"{i}.attention.{a}" in valid else "parent" for i in range(n)}
                   | {f"{i}.ffn": f for i in range(n)})
    return out


def plan(cfg: MipConfig) -> dict:
    space = Space.read(cfg.run)
    scores, costs = read_scores(cfg.run), read_costs(cfg.run)
    options = options_of(space, scores, costs)
    n_layers = 1 + max(v.layer for v in space.variants)
    fixed = costs["fixed"]
    _, parent = total(options, parent_choice(space))
    children, uniform, infeasible = [], [], []
    for s in cfg.targets():
        # A model's cost is fixed + its sub-blocks'; a ratio to the parent's bounds the sub-blocks' sum.
        ratios = {"decode_step_s": 1 / s, "prefill_s": cfg.max_prefill_ratio, "memory_bytes": cfg.max_memory_ratio}
        budgets = {k: r * (fixed[k] + parent[k]) - fixed[k] for k, r in ratios.items() if r}
        found: list[Choice] = []
        for alt in range(1 + cfg.alternatives):
            choice = solve(options, budgets, exclude=found, min_diff=cfg.min_diff)
            if choice is None:
                infeasible.append({"target": s, "alternative": alt})
                break
            found.append(choice)
            name = f"x{s:.2f}" + (f"-alt{alt}" if alt else "")
            children.append(describe(name, s, choice, options, parent, fixed, n_layers) | {"alternative": alt})
        fits = [c for c in uniform_choices(space)
                if all(total(options, c)[1][k] <= b + 1e-12 for k, b in budgets.items())]
        if fits:
            best = min(fits, key=lambda c: total(options, c)[0])
            uniform.append(describe(f"uniform-x{s:.2f}", s, best, options, parent, fixed, n_layers))
    record = {"settings": asdict(cfg), "children": children, "uniform": uniform, "infeasible": infeasible}
    write_plan(space.run, record)
    print_plan(record)
    return record


def print_plan(record: dict) -> None:
    short = {"parent": "P", "noop": "-"}
    for c in record["children"] + record["uniform"]:
        layers = " ".join(f"{short.get(b['attention'], b['attention'])}/{short.get(b['ffn'], b['ffn'])}"
                          for b in c["blocks"])
        p = c["predicted"]
        print(f"{c['name']:<18} KL {c['score']:.4f}  x{p['decode_speedup']:.2f} decode  "
              f"prefill {p['prefill_ratio']:.2f}  memory {p['memory_ratio']:.2f}  | {layers}")
    for miss in record["infeasible"]:
        print(f"no architecture meets x{miss['target']} (alternative {miss['alternative']})")


def write_plan(run: str | os.PathLike, record: dict) -> None:
    tmp = os.path.join(run, "mip.json.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, os.path.join(run, "mip.json"))


def read_plan(run: str) -> dict:
    path = os.path.join(run, "mip.json")
    if not os.path.exists(path):
        raise SystemExit(f"ponder nas: {path} is missing; run `ponder nas mip --run {run}` first")
    with open(path) as f:
        return json.load(f)


def find(run: str, name: str) -> dict:
    """A child of mip.json (MIP or uniform) by name."""
    plan_ = read_plan(run)
    for c in plan_["children"] + plan_["uniform"]:
        if c["name"] == name:
            return c
    raise SystemExit(f"ponder nas: no child {name!r} in {run}/mip.json; "
                     f"choose from {[c['name'] for c in plan_['children'] + plan_['uniform']]}")


def main(argv: list[str] | None = None) -> None:
    cfg = flags.parse(MipConfig, argv, "ponder nas mip", __doc__)
    print(f"config: {json.dumps(asdict(cfg))}")
    plan(cfg)
