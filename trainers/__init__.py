"""Offline trainers: from-scratch pretraining of tiny models, cDPO's contrastive models and its token-weighted DPO.

    ponder train pretrain --out models/ponder-small
    ponder train cdpo-contrast --base models/ponder-small
    ponder train cdpo --base models/ponder-small --pos models/ponder-small-pos --neg models/ponder-small-neg \
        --out runs/cdpo
    ponder train revthink-data --teacher-base-url URL --teacher-model NAME --out runs/revthink
    ponder train revthink --data runs/revthink --student PATH --out runs/revthink-student
"""

from __future__ import annotations

import sys

COMMANDS = {"pretrain": "ponder.trainers.pretrain:main", "cdpo-contrast": "ponder.trainers.cdpo:main",
            "cdpo": "ponder.trainers.dpo:main", "revthink-data": "ponder.trainers.revthink:main_data",
            "revthink": "ponder.trainers.revthink:main"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: ponder train {{{','.join(COMMANDS)}}} [options]")
    import importlib

    module, _, function = COMMANDS[argv[0]].partition(":")
    getattr(importlib.import_module(module), function)(argv[1:])
