"""Shared test helpers: the committed model and a `ponder serve` subprocess."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ponder.models import DEFAULT_MODEL
from ponder.testing import PonderServer, free_port  # noqa: F401 (the tests' helpers)

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path(DEFAULT_MODEL)
NAME = MODEL.name  # the id the default model is served under
# A request that runs for many seconds on any machine: five judge rounds over 32 candidates of 256 tokens
# (ignore_eos: none stops early). Tests that act while a request runs use it, so it cannot end first.
SLOW = {"max_tokens": 256, "ignore_eos": True, "temperature": 1.0,
        "strategy": {"name": "tournament", "n": 32, "k": 4, "judge_same_answer": True}}


def dies_at_call(fn, n: int):
    """fn, except that its n-th call raises KeyboardInterrupt: a training run killed mid-way."""
    calls = 0

    def wrapper(*a, **k):
        nonlocal calls
        calls += 1
        if calls == n:
            raise KeyboardInterrupt
        return fn(*a, **k)

    return wrapper


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for a condition the code under test makes true: bounded, so a bug fails rather than hangs,
    and generous, so a loaded 2-core machine cannot fail it by chance."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)
