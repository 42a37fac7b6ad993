"""Reading answers (through the request's task) and voting: shared by the strategies."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from ponder.strategies.base import Context, Task
from ponder.strategies.params import ParamError, findall

ANSWER_PATTERN_HELP = "regex whose first group is the answer (default: the task's extraction)"


async def extract_answers(ctx: Context, task: Task, texts: Sequence[str], pattern: str | None = None,
                          count: bool = True) -> list[str | None]:
    """Each text's answer: the first group of a request's `answer_pattern` (last match), else the
    task's extraction. Runs in a worker thread: user patterns never run on the event loop.
    Counts extracted and unextracted answers on the context (count=False: auxiliary texts)."""

    def one(text: str) -> str | None:
        found = findall(pattern, text) if pattern is not None else None
        if not found:
            return task.extract(text)
        last = (found[-1] if isinstance(found[-1], str) else found[-1][0]).strip()
        return (task.extract(last) or last) if last else None  # normalised as the task does, where it can

    answers = await asyncio.to_thread(lambda: [one(t) for t in texts])
    if count:
        missing = answers.count(None)
        ctx.count("answers", "unextracted", missing)
        ctx.count("answers", "extracted", len(answers) - missing)
    return answers


def needs_answers(strategy: str, task: Task) -> None:
    if not task.has_answers:
        raise ParamError("task", f"the task {task.name!r} has no extractable answers, which {strategy} votes on; "
                         "use the tournament (it judges whole replies) or another task")


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
