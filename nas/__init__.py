"""Puzzle NAS (Bercovich et al. 2024, arXiv:2411.19146): a faster heterogeneous child of a trained parent.

Each step is a command over one run folder, cached on disk and resumable:

    ponder nas data   --parent PARENT --run runs/nas               # 0. the parent's replies (any chat model)
    ponder nas space  --parent models/ponder-small --run runs/nas   # 1. the menu per layer, parent-initialised
    ponder nas bld    --run runs/nas                               # 2. blockwise local distillation
    ponder nas score  --run runs/nas                               # 3. replace-one-block KL (+ accuracy)
    ponder nas costs  --run runs/nas --batch-size 64               # 4. prefill/decode time per variant on vLLM
    ponder nas mip    --run runs/nas --speedups 1.25,1.5,2.0       # 5. one variant per sub-block (HiGHS)
    ponder nas pick   --run runs/nas                               # 5b. each target's child by measured KL
    ponder nas gkd    --run runs/nas --child x1.50                 # 6. global distillation of a child
    ponder nas export --run runs/nas --child x1.50 --out models/ponder-small-puzzle   # 7. DeciLM checkpoint
"""

from __future__ import annotations

import sys

COMMANDS = {
    "data": "ponder.nas.generate",
    "space": "ponder.nas.space",
    "bld": "ponder.nas.bld",
    "score": "ponder.nas.score",
    "costs": "ponder.nas.costs",
    "mip": "ponder.nas.mip",
    "pick": "ponder.nas.pick",
    "gkd": "ponder.nas.gkd",
    "export": "ponder.nas.export",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        sys.exit(f"usage: ponder nas {{{','.join(COMMANDS)}}} [options]")
    import importlib

    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
