"""Tasks: each declares its formats (tasks/formats.py); generators of problems and the eval harness.

A request's task is, in order: the request's `strategy.task`, the task its
model declares in a `ponder.json` beside its weights ({"task": "arith"}), the
server's `--task`, else `math`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ponder.tasks.formats import ARITH, CHOICE, FREE, MATH, Task

__all__ = ["ARITH", "CHOICE", "DEFAULT", "FREE", "MATH", "TASKS", "Task", "declared", "get"]

TASKS: dict[str, Task] = {t.name: t for t in (ARITH, MATH, CHOICE, FREE)}
DEFAULT = "math"
MODEL_FILE = "ponder.json"  # beside a model's weights: {"task": NAME}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]


def declared(folder: str | Path) -> str | None:
    """The task a model folder declares in its ponder.json, if it has one (checked when the server starts)."""
    path = Path(folder, MODEL_FILE)
    if not path.is_file():
        return None
    name = json.loads(path.read_text()).get("task")
    if name is not None:
        get(name)
    return name
