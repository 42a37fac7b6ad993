"""Answer extraction and voting: pure functions shared by the strategies."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence

from ponder.strategies.params import findall

# "Answer: 42" (ponder's tasks, and a common convention); otherwise the last number.
ANSWER_PATTERN = r"Answer:\s*(-?\d[\d,]*(?:\.\d+)?)"
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str, pattern: str = ANSWER_PATTERN) -> str | None:
    """The last match of `pattern` (its first group), else the last number, normalised."""
    found = findall(pattern, text)
    if not found:
        found = NUMBER_RE.findall(text)
    if not found:
        return None
    answer = found[-1] if isinstance(found[-1], str) else found[-1][0]
    return normalize(answer)


async def extract_answers(texts: Sequence[str], pattern: str = ANSWER_PATTERN) -> list[str | None]:
    """extract_answer over many texts in a worker thread: user patterns never run on the event loop."""
    return await asyncio.to_thread(lambda: [extract_answer(t, pattern) for t in texts])


def normalize(answer: str) -> str:
    """"1,000" and "1000.0" vote together with "1000"."""
    a = answer.strip().replace(",", "")
    try:
        x = float(a)
    except ValueError:
        return a
    return str(int(x)) if x == int(x) else repr(x)


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> tuple[str | None, dict[str, float]]:
    """Weighted majority over non-empty answers; ties go to the answer seen first."""
    tally: Counter[str] = Counter()
    for i, a in enumerate(answers):
        if a is not None:
            tally[a] += 1.0 if weights is None else weights[i]
    if not tally:
        return None, {}
    best = max(tally.values())
    winner = next(a for a in answers if a is not None and tally[a] == best)
    return winner, dict(tally)
