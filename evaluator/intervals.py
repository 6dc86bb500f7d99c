"""How sure an accuracy is: the 95% Wilson score interval of a proportion. Every run's strict and
flexible accuracy carries one (summary.json, the tables), so a difference of 1-2 points on 1,319
prompts is not read as real.

    python -c "from evaluator.intervals import wilson_interval; print(wilson_interval(1029, 1319))"
"""
from __future__ import annotations


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (z = the normal 97.5% quantile): a difference of
    1-2 points on 1,319 prompts lies inside it, so it is not read as real. n=0 -> (0, 1); 0/n
    starts at exactly 0 and n/n ends at exactly 1."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)
