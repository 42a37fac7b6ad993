"""`ponder eval` and `ponder eval sweep`: the command line over the eval harness and the sweep."""

from __future__ import annotations

from ponder.tasks import eval as harness
from ponder.tasks import sweep


def main(argv: list[str] | None = None) -> None:
    argv = list(argv or [])
    if argv[:1] == ["sweep"]:
        sweep.main(argv[1:])
    else:
        harness.main(argv)
