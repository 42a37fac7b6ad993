"""One-operation arithmetic facts for any chat model: "What is 7 + 8?", "What is the product of 3 and 7?".

Small third-party chat models get these partly right (SmolLM2-135M-Instruct:
about 0.6 of one-digit sums and 0.5 of one-digit products greedily, while 8
samples at T=0.7 hold the right answer for 0.9 of them), so a strategy has room
to help or to hurt: the built-in arithmetic task is far beyond such a model
(0.01), and plain two-digit sums already fall to 0.18. Every (a, b) of one-digit
numbers in each of several phrasings, in a fixed shuffled order; nothing trains
on them, so there are no splits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PHRASINGS = {
    "+": ("What is {a} + {b}?", "What is {a} plus {b}?", "What is the sum of {a} and {b}?",
          "Add {a} and {b}. What do you get?"),
    "*": ("What is {a} times {b}?", "What is {a} * {b}?", "What is the product of {a} and {b}?",
          "Multiply {a} by {b}. What do you get?"),
}


@dataclass(frozen=True)
class Fact:
    question: str
    answer: int


def dataset(n: int | None = None, seed: int = 0) -> list[Fact]:
    """The first n of all 648 facts (2 operations x 4 phrasings x 81 pairs), in a seeded order."""
    facts = [Fact(text.format(a=a, b=b), a + b if op == "+" else a * b)
             for op, texts in PHRASINGS.items() for text in texts for a in range(1, 10) for b in range(1, 10)]
    random.Random(seed).shuffle(facts)
    return facts[:n]
