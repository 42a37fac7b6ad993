"""Offline trainers: from-scratch pretraining of tiny models, cDPO's contrastive models and its token-weighted DPO.

    ponder train pretrain --out models/ponder-tiny
    ponder train cdpo-contrast --base models/ponder-tiny
    ponder train cdpo --base models/ponder-tiny --pos models/ponder-tiny-pos --neg models/ponder-tiny-neg \
        --out runs/cdpo
"""

from __future__ import annotations

import sys

COMMANDS = {"pretrain": "ponder.trainers.pretrain", "cdpo-contrast": "ponder.trainers.cdpo",
            "cdpo": "ponder.trainers.dpo"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: ponder train {{{','.join(COMMANDS)}}} [options]")
    import importlib

    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
