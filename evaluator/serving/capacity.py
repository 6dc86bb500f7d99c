"""Capacity at SLO: the highest request rate (open loop, Poisson arrivals) a layout holds while the
chosen percentile of TTFT and of TPOT stays within the SLOs, with an interval.

Each probe is a load level of fresh requests, judged over its steady-state window. Its percentile
comes with a bootstrap confidence interval (scipy.stats.bootstrap, the requests resampled): the
probe *held* when the whole interval is within the SLO, *missed* when the whole interval is beyond
it, and is *unsure* otherwise; an unsure probe is run again at the same rate with fresh requests
(its samples pooled) up to --capacity-repeats times, then decided by its point estimate. The
search brackets (double while the rate holds, halve while it does not) and then bisects
(geometric middle) until the bracket is within the tolerance or the probe budget is spent.

The capacity itself comes with an interval too: over every probe, the SLO ratio (percentile ÷
SLO, the worse of TTFT and TPOT) is fitted as a non-decreasing function of the rate (isotonic
regression, scipy.optimize.isotonic_regression), its crossing of 1 interpolated in log rate; the
requests of each probe are resampled and the fit repeated, and the interval is the spread of those
crossings (AIPerf fits an isotonic curve with a bootstrap interval the same way). A failed or
timed-out request counts as infinitely late (the same percentile rule as the tables:
evaluator.serving.metrics), so a layout that drops requests cannot look fast.

    python -c "from evaluator.serving.capacity import next_rate; print(next_rate([], 1.0, 8, 0.1))"
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from evaluator.serving.metrics import PERCENTILE_METHOD, latencies_ms, percentile
from evaluator.serving.records import RequestResult

INF = float("inf")
BOOTSTRAP_RESAMPLES = 1000
RATIO_CAP = 10.0            # an SLO ratio above this (a saturated probe) counts as this in the fit
SENTINEL_MS = 1e15          # stands for inf inside the bootstrap (numpy interpolates inf into nan)


@dataclass(frozen=True)
class Probe:
    rate: float                        # requests/s offered
    passed: bool                       # held (at confidence, or by its point estimate when unsure)
    ttft_ms: float | None              # the chosen percentile over the probe's window requests (a failed one: inf)
    tpot_ms: float | None
    output_tokens_per_s: float
    requests: int
    verdict: str = "held"              # held | missed | unsure (decided by the point estimate after repeats)
    ttft_ms_ci: tuple[float, float] | None = None     # the percentile's bootstrap interval
    tpot_ms_ci: tuple[float, float] | None = None
    runs: int = 1                      # levels pooled at this rate (1 + repeats)
    failed: int = 0                    # failed or timed-out requests among `requests`
    # rate x output tokens per sent request (a failed one: none): what the server delivers while it
    # keeps up with this rate. output_tokens_per_s is what streamed inside the window, which falls
    # short of it when requests outlive a level that never reached its plateau.
    sustained_tokens_per_s: float | None = None
    # every pooled level settled (as many requests finished as were sent inside its window); False:
    # the in-flight count was still rising when arrivals ended, so a longer level could judge otherwise
    settled: bool | None = None


def round_rate(rate: float) -> float:
    """Three significant digits: level labels stay readable and a resumed search finds its levels."""
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"a probe rate must be a positive number (got {rate})")
    digits = 2 - math.floor(math.log10(rate))
    return round(rate, digits)


def percentile_ci(values_ms: Sequence[float], q: float, confidence: float, seed: int = 0) -> tuple[float, float]:
    """The bootstrap (percentile method) interval of the q-th percentile at `confidence`, inf
    values (failed requests) included; (v, v) for one value or identical values."""
    x = np.asarray(values_ms, dtype=float)
    if len(x) < 2 or np.all(x == x[0]):
        v = float(x[0]) if len(x) else INF
        return v, v
    from scipy.stats import bootstrap
    finite = np.where(np.isinf(x), SENTINEL_MS, x)
    res = bootstrap((finite,), lambda s, axis: np.percentile(s, q, axis=axis, method=PERCENTILE_METHOD),
                    confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                    vectorized=True, rng=np.random.default_rng(seed))
    lo, hi = (float(v) for v in (res.confidence_interval.low, res.confidence_interval.high))
    return (INF if lo >= SENTINEL_MS else lo), (INF if hi >= SENTINEL_MS else hi)


def _verdict(ci: tuple[float, float] | None, slo: float | None) -> str:
    if slo is None or ci is None:
        return "held"
    if ci[1] <= slo:
        return "held"
    if ci[0] > slo:
        return "missed"
    return "unsure"


def judge(runs: Sequence[Sequence[RequestResult]], rate: float, duration_s: float, q: float,
          slo_ttft_ms: float | None, slo_tpot_ms: float | None, confidence: float = 0.9,
          output_tokens_per_s: float | None = None) -> Probe:
    """Whether the q-th percentile of TTFT and of TPOT meets the SLOs at this rate, at `confidence`,
    over the window requests of every run at this rate (pooled)."""
    results = [r for run in runs for r in run]
    if not results:
        raise ValueError("a probe needs results")
    ttft, tpot = latencies_ms(results, "ttft"), latencies_ms(results, "tpot")
    t1, t2 = percentile(ttft, q), percentile(tpot, q)
    seed = int(rate * 1000) % (2**31)
    c1 = percentile_ci(ttft, q, confidence, seed) if slo_ttft_ms is not None else None
    c2 = percentile_ci(tpot, q, confidence, seed + 1) if slo_tpot_ms is not None and tpot else None
    verdicts = {_verdict(c1, slo_ttft_ms), _verdict(c2, slo_tpot_ms)}
    verdict = "missed" if "missed" in verdicts else "unsure" if "unsure" in verdicts else "held"
    point = ((slo_ttft_ms is None or (t1 is not None and t1 <= slo_ttft_ms))
             and (slo_tpot_ms is None or t2 is None or t2 <= slo_tpot_ms))
    tokens = sum(r.completion_tokens for r in results if r.ok)
    if output_tokens_per_s is None:
        output_tokens_per_s = tokens / duration_s if duration_s > 0 else 0.0
    sustained = rate * tokens / len(results)
    return Probe(rate, verdict == "held" or (verdict == "unsure" and point), t1, t2, output_tokens_per_s,
                 len(results), verdict, c1, c2, len(runs), sum(not r.ok for r in results), sustained)


def bracket(probes: Sequence[Probe]) -> tuple[float | None, float | None]:
    """(highest rate that held, lowest rate above it that did not); None where not found yet. A
    failing probe below a passing one (noise) does not narrow the bracket from above."""
    passes = [p.rate for p in probes if p.passed]
    lo = max(passes) if passes else None
    above = [p.rate for p in probes if not p.passed and (lo is None or p.rate > lo)]
    return lo, (min(above) if above else None)


def next_rate(probes: Sequence[Probe], start: float, budget: int, tolerance: float) -> float | None:
    """The next rate to probe, or None when the search is done (bracket narrow enough, budget
    spent, or the next rate would repeat one already probed). budget counts runs (repeats too)."""
    if not probes:
        return round_rate(start)
    if sum(p.runs for p in probes) >= budget:
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


def slo_ratio(results: Sequence[RequestResult], q: float, slo_ttft_ms: float | None,
              slo_tpot_ms: float | None) -> float:
    """The worse of (TTFT percentile ÷ its SLO) and (TPOT percentile ÷ its SLO): 1 is the edge."""
    worst = 0.0
    for what, slo in (("ttft", slo_ttft_ms), ("tpot", slo_tpot_ms)):
        if slo is None:
            continue
        v = percentile(latencies_ms(results, what), q)
        if v is not None:
            worst = max(worst, v / slo)
    return min(worst, RATIO_CAP)


def crossing(rates: Sequence[float], ratios: Sequence[float], weights: Sequence[float]) -> float | None:
    """The rate where the non-decreasing fit of ratio against rate reaches 1, interpolated in log
    rate between the two probes around it; the highest rate when every fitted ratio is within 1
    (a lower bound), None when none is."""
    from scipy.optimize import isotonic_regression
    order = np.argsort(rates)
    r = np.asarray(rates, dtype=float)[order]
    fit = isotonic_regression(np.asarray(ratios, dtype=float)[order], weights=np.asarray(weights, dtype=float)[order],
                              increasing=True).x
    if fit[0] > 1:
        return None
    if fit[-1] <= 1:
        return float(r[-1])
    k = int(np.nonzero(fit > 1)[0][0])
    lo, hi = math.log(r[k - 1]), math.log(r[k])
    if fit[k] == fit[k - 1]:
        return float(r[k - 1])
    return float(math.exp(lo + (1 - fit[k - 1]) / (fit[k] - fit[k - 1]) * (hi - lo)))


@dataclass(frozen=True)
class Capacity:
    rate: float | None                 # highest rate that held (None: not even the lowest probed)
    lowest_failed: float | None        # the bracket's top (None: every probe held)
    probes: tuple[Probe, ...]
    converged: bool                    # the bracket is within the tolerance
    estimate: float | None = None      # where the fitted SLO ratio crosses 1
    ci: tuple[float | None, float | None] | None = None   # the estimate's bootstrap interval
    confidence: float = 0.9
    repeats: int = 0                   # extra runs at rates already probed (unsure probes)
    above_range: bool = False          # the fit never reached the SLO: the estimate is a lower bound
    notes: tuple[str, ...] = field(default=())

    @property
    def bracket_text(self) -> str:
        lo = f"{self.rate:g}" if self.rate is not None else "below the lowest probe"
        hi = f"{self.lowest_failed:g}" if self.lowest_failed is not None else "not reached"
        return f"{lo}–{hi}"


def capacity(probes: Sequence[Probe], tolerance: float, samples: dict[float, Sequence[RequestResult]] | None = None,
             q: float = 90.0, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None,
             confidence: float = 0.9, seed: int = 0) -> Capacity:
    """The capacity of a finished search; with each rate's pooled window requests (samples), its
    estimate and bootstrap interval too."""
    lo, hi = bracket(probes)
    cap = Capacity(lo, hi, tuple(probes), lo is not None and hi is not None and hi / lo <= 1 + tolerance,
                   confidence=confidence, repeats=sum(p.runs - 1 for p in probes))
    if not samples:
        return cap
    rates = sorted(samples)
    data = [list(samples[r]) for r in rates]
    weights = [len(d) for d in data]
    point = crossing(rates, [slo_ratio(d, q, slo_ttft_ms, slo_tpot_ms) for d in data], weights)
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(200):
        ratios = [slo_ratio([d[i] for i in rng.integers(0, len(d), len(d))], q, slo_ttft_ms, slo_tpot_ms)
                  for d in data]
        found.append(crossing(rates, ratios, weights))
    alpha = (1 - confidence) / 2
    # a resample with no crossing above the lowest rate counts as 0, one that never reaches the
    # SLO as the highest rate: the interval's ends then say "below" / "at least"
    values = np.array([0.0 if f is None else f for f in found])
    low, high = (float(np.quantile(values, alpha, method=PERCENTILE_METHOD)),
                 float(np.quantile(values, 1 - alpha, method=PERCENTILE_METHOD)))
    if not cap.converged and cap.rate is not None and cap.lowest_failed is not None:
        # the crossing between two probes far apart is an interpolation, not a measurement: where
        # the search stopped short of its tolerance, the interval claims no more than the bracket
        low, high = min(low, cap.rate), max(high, cap.lowest_failed)
    above = point is not None and point >= rates[-1]
    return Capacity(cap.rate, cap.lowest_failed, cap.probes, cap.converged, point,
                    (low if low > 0 else None, high if high > 0 else None), confidence, cap.repeats, above)
