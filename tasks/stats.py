"""Intervals for accuracies and their differences: what every eval, sweep and bench table reports."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def diff_interval(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """95% interval of accuracy(a) - accuracy(b), by Newcombe's square-and-add of the two Wilson intervals.

    When both records carry their per-problem outcomes ("correct") on the same problems, the
    interval is the paired one (Newcombe 1998, Statistics in Medicine 17:2635, method 10): the
    two runs' positive correlation over problems (phi of the 2x2 table, shrunk by n/2 as the paper
    does) narrows it. Otherwise the runs are treated as independent (the same paper's 17:873,
    method 10), which is wider: "above it" is then a conservative claim. Written out here because
    neither scipy nor statsmodels has the paired form.
    """
    (pa, (la, ua)), (pb, (lb, ub)) = (a["accuracy"], a["ci95"]), (b["accuracy"], b["ci95"])
    phi = 0.0
    xa, xb = a.get("correct"), b.get("correct")
    if xa is not None and xb is not None and len(xa) == len(xb):
        n, table = len(xa), Counter(zip(xa, xb))
        both, only_a, only_b, neither = table[1, 1], table[1, 0], table[0, 1], table[0, 0]
        margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
        cross = both * neither - only_a * only_b
        shrunk = cross - n / 2 if cross > n / 2 else min(cross, 0)
        phi = shrunk / math.sqrt(margins) if margins else 0.0
    d = pa - pb
    return (d - math.sqrt((pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2),
            d + math.sqrt((pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
