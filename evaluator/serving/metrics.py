"""Summary statistics of one load level, from its RequestResults: throughput, latency percentiles
(TTFT, TPOT, ITL, E2E in milliseconds) and goodput under optional SLOs. Pure arithmetic, no I/O.

    python -c "from evaluator.serving.metrics import percentile; print(percentile([1, 2, 3, 4], 90))"
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

from evaluator.serving.records import Level, RequestResult


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks, as numpy's
    default (method="linear"); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class LevelStats:
    """One level's summary. Rates count ok requests only; latencies are over ok requests."""
    level: str                        # Level.label
    level_kind: str                   # "concurrency" | "rate"
    level_value: float                # N in flight, or requests/s (inf: all at once)
    gpus: int
    requests: int
    ok: int
    errors: int                       # failed, not counting rejected
    rejected: int                     # HTTP 4xx: bad input
    retries: int                      # over all requests
    duration_s: float
    request_per_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float | None
    ttft_ms_mean: float | None
    ttft_ms_p50: float | None
    ttft_ms_p90: float | None
    ttft_ms_p99: float | None
    tpot_ms_mean: float | None
    tpot_ms_p50: float | None
    tpot_ms_p90: float | None
    tpot_ms_p99: float | None
    itl_ms_mean: float | None
    itl_ms_p50: float | None
    itl_ms_p90: float | None
    itl_ms_p99: float | None
    e2e_ms_mean: float | None
    e2e_ms_p50: float | None
    e2e_ms_p90: float | None
    e2e_ms_p99: float | None
    goodput_rps: float                # ok requests meeting every given SLO, per second
    slo_met: float                    # fraction of all requests that are ok and meet every given SLO
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2e_ms: float | None = None
    timeouts: int = 0                 # no answer in time from a server that stayed healthy (among errors)
    throttled: int = 0                # 429/408 back-offs over all requests
    send_lag_ms_p50: float | None = None   # sent - due: the client keeping up with its own schedule
    send_lag_ms_p99: float | None = None
    first_answer_ms_p50: float | None = None   # first answer (content) token; differs from TTFT for reasoning models
    prompt_tokens_mean: float | None = None    # the traffic this level measured (server's usage, ok requests)
    prompt_tokens_p50: float | None = None
    prompt_tokens_p90: float | None = None
    output_tokens_mean: float | None = None
    output_tokens_p50: float | None = None
    output_tokens_p90: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LevelStats":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _meets(r: RequestResult, slo_ttft_ms: float | None, slo_tpot_ms: float | None, slo_e2e_ms: float | None) -> bool:
    if not r.ok:
        return False
    if slo_ttft_ms is not None and (r.ttft_s is None or r.ttft_s * 1000 > slo_ttft_ms):
        return False
    # a one-token answer has no decode phase, hence no TPOT to miss (vllm bench serve counts it as 0)
    if slo_tpot_ms is not None and r.tpot_s is not None and r.tpot_s * 1000 > slo_tpot_ms:
        return False
    if slo_e2e_ms is not None and (r.e2e_s is None or r.e2e_s * 1000 > slo_e2e_ms):
        return False
    return True


def _spread(prefix: str, values_s: list[float]) -> dict[str, float | None]:
    ms = [v * 1000 for v in values_s]
    return {f"{prefix}_ms_mean": _mean(ms), f"{prefix}_ms_p50": percentile(ms, 50),
            f"{prefix}_ms_p90": percentile(ms, 90), f"{prefix}_ms_p99": percentile(ms, 99)}


def level_stats(results: Sequence[RequestResult], duration_s: float, gpus: int, slo_ttft_ms: float | None,
                slo_tpot_ms: float | None, slo_e2e_ms: float | None = None) -> LevelStats:
    """Summarise one level's results (all from the same level) measured over duration_s seconds
    on `gpus` GPUs. Without SLOs every ok request counts as good: goodput == request_per_s."""
    if not results:
        raise ValueError("level_stats needs at least one result")
    labels = {r.level for r in results}
    if len(labels) != 1:
        raise ValueError(f"results of several levels mixed: {sorted(labels)}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    ok = [r for r in results if r.ok]
    lags = [r.send_lag_s for r in results if r.send_lag_s is not None]
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
    good = sum(_meets(r, slo_ttft_ms, slo_tpot_ms, slo_e2e_ms) for r in results)
    out_tok_per_s = sum(r.completion_tokens for r in ok) / duration_s
    level = Level.from_label(labels.pop())
    return LevelStats(
        level=level.label, level_kind=level.kind, level_value=level.value, gpus=gpus, requests=len(results), ok=len(ok),
        errors=sum(not r.ok and not r.rejected for r in results), rejected=sum(r.rejected for r in results),
        retries=sum(r.retries for r in results), duration_s=duration_s,
        request_per_s=len(ok) / duration_s, output_tokens_per_s=out_tok_per_s,
        output_tokens_per_s_per_gpu=out_tok_per_s / gpus,
        # the decode speed one user sees while streaming: 1/TPOT per request, averaged over requests
        # (not output_tokens_per_s / concurrency, which also counts time spent queued before TTFT)
        tokens_per_s_per_user=_mean([1 / t for t in tpots if t > 0]),
        **_spread("ttft", [r.ttft_s for r in ok if r.ttft_s is not None]),
        **_spread("tpot", tpots),
        **_spread("itl", [gap for r in ok for gap in r.itl_s]),
        **_spread("e2e", [r.e2e_s for r in ok if r.e2e_s is not None]),
        goodput_rps=good / duration_s, slo_met=good / len(results),
        slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, slo_e2e_ms=slo_e2e_ms,
        timeouts=sum(r.timed_out for r in results), throttled=sum(r.throttled for r in results),
        send_lag_ms_p50=_ms_percentile(lags, 50), send_lag_ms_p99=_ms_percentile(lags, 99),
        first_answer_ms_p50=_ms_percentile([r.first_answer_s for r in ok if r.first_answer_s is not None], 50),
        **_tokens("prompt_tokens", [r.prompt_tokens for r in ok]),
        **_tokens("output_tokens", [r.completion_tokens for r in ok]),
    )


def _ms_percentile(values_s: list[float], q: float) -> float | None:
    return None if not values_s else percentile([v * 1000 for v in values_s], q)


def _tokens(prefix: str, counts: list[int]) -> dict[str, float | None]:
    return {f"{prefix}_mean": _mean(counts), f"{prefix}_p50": percentile(counts, 50),
            f"{prefix}_p90": percentile(counts, 90)}
