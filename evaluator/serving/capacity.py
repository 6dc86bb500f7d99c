"""Capacity at SLO: the highest request rate (open loop, Poisson arrivals) a layout holds while the
chosen percentile of TTFT and of TPOT stays within the SLOs. Bracket, then bisect: start at a
rate, double while it holds (or halve while it does not) until one rate holds and a higher one does
not, then try the geometric middle of that bracket until it is narrower than the tolerance or the
level budget is spent. Each probe is one load level, the unit of resume: the search is a pure
function of the probes so far, so a resumed run replays it from the levels on disk and runs only
the probes it had not finished. (SGLang's auto-benchmark bisects QPS the same way; AIPerf fits an
isotonic curve with a bootstrap interval: our bracket is the honest interval of a bisection.)

A failed or timed-out request counts as missing the SLO (infinitely late), so a layout that
drops requests cannot look fast.

    python -c "from evaluator.serving.capacity import next_rate; print(next_rate([], 1.0, 8, 0.1))"
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from evaluator.serving.records import RequestResult

INF = float("inf")


@dataclass(frozen=True)
class Probe:
    rate: float                        # requests/s offered
    passed: bool
    ttft_ms: float                     # the chosen percentile over all requests (a failed one: inf)
    tpot_ms: float
    output_tokens_per_s: float
    requests: int


def round_rate(rate: float) -> float:
    """Three significant digits: level labels stay readable and a resumed search finds its levels."""
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"a probe rate must be a positive number (got {rate})")
    digits = 2 - math.floor(math.log10(rate))
    return round(rate, digits)


def rank_percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile: the smallest value that at least q% of the values do not
    exceed, so "p90 <= SLO" means "at least 90% of requests met it" (interpolating towards a
    failed request's infinity would fail a probe that 90% of its requests passed)."""
    xs = sorted(values)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]


def judge(results: Sequence[RequestResult], rate: float, duration_s: float, q: float,
          slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> Probe:
    """Whether the q-th percentile of TTFT and of TPOT meets the SLOs at this probe."""
    if not results:
        raise ValueError("a probe needs results")
    ttft = [r.ttft_s * 1000 if r.ok and r.ttft_s is not None else INF for r in results]
    # a one-token answer has no decode phase: its TPOT cannot miss (as level_stats' goodput says)
    tpot = [(r.tpot_s or 0.0) * 1000 if r.ok else INF for r in results]
    t1, t2 = rank_percentile(ttft, q), rank_percentile(tpot, q)
    passed = (slo_ttft_ms is None or t1 <= slo_ttft_ms) and (slo_tpot_ms is None or t2 <= slo_tpot_ms)
    tokens = sum(r.completion_tokens for r in results if r.ok)
    return Probe(rate, passed, t1, t2, tokens / duration_s if duration_s > 0 else 0.0, len(results))


def bracket(probes: Sequence[Probe]) -> tuple[float | None, float | None]:
    """(highest rate that held, lowest rate above it that did not); None where not found yet. A
    failing probe below a passing one (noise) does not narrow the bracket from above."""
    passes = [p.rate for p in probes if p.passed]
    lo = max(passes) if passes else None
    above = [p.rate for p in probes if not p.passed and (lo is None or p.rate > lo)]
    return lo, (min(above) if above else None)


def next_rate(probes: Sequence[Probe], start: float, budget: int, tolerance: float) -> float | None:
    """The next rate to probe, or None when the search is done (bracket narrow enough, budget
    spent, or the next rate would repeat one already probed)."""
    if not probes:
        return round_rate(start)
    if len(probes) >= budget:
        return None
    lo, hi = bracket(probes)
    if hi is None:
        rate = round_rate(lo * 2)                     # everything held so far: go up
    elif lo is None:
        rate = round_rate(hi / 2)                     # nothing held yet: go down
    else:
        if hi / lo <= 1 + tolerance:
            return None
        rate = round_rate(math.sqrt(lo * hi))
    if any(abs(p.rate - rate) <= 1e-12 for p in probes):
        return None
    return rate


@dataclass(frozen=True)
class Capacity:
    rate: float | None                 # highest rate that held (None: not even the lowest probed)
    lowest_failed: float | None        # the bracket's top (None: every probe held)
    probes: tuple[Probe, ...]
    converged: bool                    # the bracket is within the tolerance

    @property
    def bracket_text(self) -> str:
        lo = f"{self.rate:g}" if self.rate is not None else "below the lowest probe"
        hi = f"{self.lowest_failed:g}" if self.lowest_failed is not None else "not reached"
        return f"{lo}–{hi}"


def capacity(probes: Sequence[Probe], tolerance: float) -> Capacity:
    lo, hi = bracket(probes)
    return Capacity(lo, hi, tuple(probes), lo is not None and hi is not None and hi / lo <= 1 + tolerance)
