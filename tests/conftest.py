"""Shared test helpers: the committed model and a `ponder serve` subprocess."""

from __future__ import annotations

from pathlib import Path

from ponder.models import DEFAULT_MODEL
from ponder.testing import PonderServer, free_port  # noqa: F401 (the tests' helpers)

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path(DEFAULT_MODEL)
NAME = MODEL.name  # the id the default model is served under


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


