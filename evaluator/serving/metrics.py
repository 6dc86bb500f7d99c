"""Summary statistics of one load level, from its RequestResults: throughput, latency percentiles
(TTFT, TPOT, ITL, E2E in milliseconds) and goodput under optional SLOs, over the level's
steady-state window and over the whole level. Pure arithmetic, no I/O.

One percentile definition everywhere (the tables, goodput, the capacity judge): numpy's
method="inverted_cdf", the nearest rank (the smallest value that at least q% of the values do not
exceed), over every request, a failed or timed-out one counting as infinitely late. So "TTFT p90 =
812 ms" means at least 90% of the requests had their first token within 812 ms, and a level with
more than 1% failures has an infinite p99.

The steady-state window (as GuideLLM and AIPerf report): from the moment the number of requests
in flight first reaches its plateau (the time-weighted median of the in-flight count while
requests still arrive) to the last arrival, after which the level only drains. Latencies are those
of the requests sent inside the window; throughput counts the tokens streamed and the requests
finished inside it. The whole-level figures are kept beside them.

    python -c "from evaluator.serving.metrics import percentile; print(percentile([1, 2, 3, 4], 90))"
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from evaluator.serving.records import Level, RequestResult

PERCENTILE_METHOD = "inverted_cdf"
PERCENTILE_RULE = ("percentiles: numpy method='inverted_cdf' (nearest rank) over every request sent in the window, "
                   "a failed or timed-out request counting as infinitely late (∞)")
INF = float("inf")
# a window shorter than this share of the level, or holding fewer requests, says little: the
# whole level is reported instead (and the record says so)
MIN_WINDOW_SHARE, MIN_WINDOW_REQUESTS = 0.2, 5
# finished / sent inside the window below which the level had not settled (its in-flight count still
# rising when arrivals ended); settled levels measured here read 0.84-1.08, unsettled ones 0.58 and less
SETTLED_BALANCE = 0.8


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile (0..100), numpy's method="inverted_cdf"; inf values (failed
    requests) take part like any other; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q, method=PERCENTILE_METHOD))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Window:
    """The steady-state part of a level, seconds from its start."""
    start_s: float
    end_s: float
    plateau: float                    # requests in flight the window starts at
    note: str = ""                    # why the whole level is reported instead, when it is

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def end_of(r: RequestResult) -> float:
    """When a request's result came back, seconds from the level's start."""
    if r.ended_s is not None:
        return r.ended_s
    return r.sent_s + (r.e2e_s if r.e2e_s is not None else 0.0)


def in_flight(results: Sequence[RequestResult]) -> list[tuple[float, int]]:
    """(time, requests in flight just after it) at every send and every end, in time order (an end
    before a send at the same instant)."""
    events = sorted([(r.sent_s, 1) for r in results] + [(end_of(r), -1) for r in results], key=lambda e: (e[0], e[1]))
    out, n = [], 0
    for t, step in events:
        n += step
        out.append((t, n))
    return out


def steady_window(results: Sequence[RequestResult], duration_s: float) -> Window:
    """From the first time the in-flight count reaches its plateau to the last arrival; the whole
    level (0..duration_s) when that window is too short to mean anything."""
    results = [r for r in results if not r.skipped]
    if not results:
        return Window(0.0, duration_s, 0.0, note="no request was sent")
    last_arrival = max(r.sent_s for r in results)
    curve = in_flight(results)
    # time-weighted median of the in-flight count over the arrival phase [first send, last arrival]
    first = min(r.sent_s for r in results)
    spans: dict[int, float] = {}
    for (t0, n), (t1, _) in zip(curve, curve[1:]):
        a, b = max(t0, first), min(t1, last_arrival)
        if b > a:
            spans[n] = spans.get(n, 0.0) + (b - a)
    whole = Window(0.0, duration_s, 0.0)
    if not spans:
        return dataclasses.replace(whole, note="every request arrived at once: no arrival phase")
    total, acc, plateau = sum(spans.values()), 0.0, 0
    for n in sorted(spans):
        acc += spans[n]
        if acc >= total / 2:
            plateau = n
            break
    start = next(t for t, n in curve if n >= plateau)
    window = Window(start, last_arrival, float(plateau))
    inside = sum(start <= r.sent_s <= last_arrival for r in results)
    if duration_s > 0 and window.duration_s < MIN_WINDOW_SHARE * duration_s:
        return dataclasses.replace(whole, plateau=float(plateau),
                                   note=f"steady state lasted {window.duration_s:.2f} s of {duration_s:.2f} s")
    if inside < MIN_WINDOW_REQUESTS:
        return dataclasses.replace(whole, plateau=float(plateau), note=f"only {inside} request(s) in the steady state")
    return window


@dataclass(frozen=True)
class LevelStats:
    """One level's summary over a span of it (its steady-state window, or all of it). Rates count
    ok requests; latency percentiles count every request (a failed one as infinitely late); means
    are over the answered requests."""
    level: str                        # Level.label
    level_kind: str                   # "concurrency" | "rate" | "replay"
    level_value: float                # N in flight, or requests/s (inf: all at once)
    gpus: int
    requests: int                     # requests sent in the span
    ok: int
    errors: int                       # failed, not counting rejected
    rejected: int                     # HTTP 4xx: bad input
    retries: int                      # over all requests
    duration_s: float                 # the span's length
    request_per_s: float              # requests answered inside the span, per second
    output_tokens_per_s: float        # tokens streamed inside the span, per second
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
    goodput_rps: float                # requests answered inside the span meeting every given SLO, per second
    slo_met: float                    # fraction of the span's requests that are ok and meet every given SLO
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
    reused: int = 0                   # requests an earlier level had sent already (--reuse-requests)
    skipped: int = 0                  # later turns never sent: their session had failed or outgrown the context

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


def latencies_ms(results: Sequence[RequestResult], what: str) -> list[float]:
    """Per request, in ms, a failed request as inf: ttft, e2e, or tpot (an answered request of one
    token has no TPOT and is left out). The one list the tables and the capacity judge both use."""
    out = []
    for r in results:
        if r.skipped:
            continue
        if not r.ok:
            out.append(INF)
            continue
        v = {"ttft": r.ttft_s, "e2e": r.e2e_s, "tpot": r.tpot_s}[what]
        if v is not None:
            out.append(v * 1000)
        elif what != "tpot":
            out.append(INF)
    return out


def _spread(prefix: str, all_ms: list[float], answered_ms: list[float]) -> dict[str, float | None]:
    return {f"{prefix}_ms_mean": _mean(answered_ms), f"{prefix}_ms_p50": percentile(all_ms, 50),
            f"{prefix}_ms_p90": percentile(all_ms, 90), f"{prefix}_ms_p99": percentile(all_ms, 99)}


def _tokens_between(r: RequestResult, a: float, b: float) -> float:
    """Output tokens of an answered request streamed inside [a, b] (level seconds): its chunks'
    arrival times, each chunk carrying an equal share of the server's token count."""
    if not r.ok or r.ttft_s is None or not r.completion_tokens:
        return 0.0
    times = [r.sent_s + r.ttft_s]
    for gap in r.itl_s:
        times.append(times[-1] + gap)
    share = r.completion_tokens / len(times)
    return share * sum(a <= t <= b for t in times)


def span_stats(results: Sequence[RequestResult], window: Window, gpus: int, slo_ttft_ms: float | None,
               slo_tpot_ms: float | None, slo_e2e_ms: float | None = None, whole: bool = False) -> LevelStats:
    """The level's figures over one span of it: latencies of the requests sent inside, throughput
    and goodput of what was streamed and finished inside (whole: every request and token, over
    the window's duration)."""
    labels = {r.level for r in results}
    if len(labels) != 1:
        raise ValueError(f"results of one level expected, got {sorted(labels)}")
    if window.duration_s <= 0:
        raise ValueError(f"a span must last some time, got {window.duration_s}")
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    a, b = window.start_s, window.end_s
    skipped = sum(r.skipped for r in results)
    results = [r for r in results if not r.skipped]
    if not results:
        raise ValueError("every request of the level was skipped")
    sent = list(results) if whole else [r for r in results if a <= r.sent_s <= b]
    finished = list(results) if whole else [r for r in results if a <= end_of(r) <= b]
    ok = [r for r in sent if r.ok]
    lags = [r.send_lag_s for r in sent if r.send_lag_s is not None]
    tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
    tokens = sum(r.completion_tokens for r in results if r.ok) if whole else sum(_tokens_between(r, a, b) for r in results)
    out_tok_per_s = tokens / window.duration_s
    level = Level.from_label(labels.pop())

    def answered(what: str) -> list[float]:
        return latencies_ms(ok, what)
    return LevelStats(
        level=level.label, level_kind=level.kind, level_value=level.value, gpus=gpus, requests=len(sent), ok=len(ok),
        errors=sum(not r.ok and not r.rejected for r in sent), rejected=sum(r.rejected for r in sent),
        retries=sum(r.retries for r in sent), duration_s=window.duration_s,
        request_per_s=sum(r.ok for r in finished) / window.duration_s, output_tokens_per_s=out_tok_per_s,
        output_tokens_per_s_per_gpu=out_tok_per_s / gpus,
        # the decode speed one user sees while streaming: 1/TPOT per request, averaged over requests
        # (not output_tokens_per_s / concurrency, which also counts time spent queued before TTFT)
        tokens_per_s_per_user=_mean([1 / t for t in tpots if t > 0]),
        **_spread("ttft", latencies_ms(sent, "ttft"), answered("ttft")),
        **_spread("tpot", latencies_ms(sent, "tpot"), answered("tpot")),
        # gaps between the chunks of answered requests (a failed request has no gaps to count)
        **_spread("itl", [g * 1000 for r in ok for g in r.itl_s], [g * 1000 for r in ok for g in r.itl_s]),
        **_spread("e2e", latencies_ms(sent, "e2e"), answered("e2e")),
        goodput_rps=sum(_meets(r, slo_ttft_ms, slo_tpot_ms, slo_e2e_ms) for r in finished) / window.duration_s,
        slo_met=sum(_meets(r, slo_ttft_ms, slo_tpot_ms, slo_e2e_ms) for r in sent) / len(sent) if sent else 0.0,
        slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, slo_e2e_ms=slo_e2e_ms,
        timeouts=sum(r.timed_out for r in sent), throttled=sum(r.throttled for r in sent),
        send_lag_ms_p50=_ms_percentile(lags, 50), send_lag_ms_p99=_ms_percentile(lags, 99),
        first_answer_ms_p50=_ms_percentile([r.first_answer_s for r in ok if r.first_answer_s is not None], 50),
        **_tokens("prompt_tokens", [r.prompt_tokens for r in ok]),
        **_tokens("output_tokens", [r.completion_tokens for r in ok]),
        reused=sum(r.reused for r in sent), skipped=skipped,
    )


def level_stats(results: Sequence[RequestResult], duration_s: float, gpus: int, slo_ttft_ms: float | None,
                slo_tpot_ms: float | None, slo_e2e_ms: float | None = None) -> LevelStats:
    """The whole level's figures (ramp-up, arrivals and drain together) over duration_s seconds
    on `gpus` GPUs. Without SLOs every ok request counts as good: goodput == request_per_s."""
    if not results:
        raise ValueError("level_stats needs at least one result")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    return span_stats(results, Window(0.0, duration_s, 0.0, note="whole level"), gpus, slo_ttft_ms, slo_tpot_ms,
                      slo_e2e_ms, whole=True)


def flow_balance(results: Sequence[RequestResult], window: Window) -> float | None:
    """Requests that finished inside the window per request sent inside it: about 1 once a level
    has settled (as many leave as arrive), well below it while the in-flight count is still rising:
    requests that outlive a level too short for them, or a server falling behind (an H200 at 19
    req/s of 10 s requests: 5 finished of 148 sent in a 7.6 s window). None for a whole-level
    window or one of too few requests."""
    results = [r for r in results if not r.skipped]
    sent = sum(window.start_s <= r.sent_s <= window.end_s for r in results)
    if window.note or sent < MIN_WINDOW_REQUESTS:
        return None
    return sum(window.start_s <= end_of(r) <= window.end_s for r in results) / sent


def window_results(results: Sequence[RequestResult], duration_s: float) -> list[RequestResult]:
    """The requests sent inside the level's steady-state window (all of them when the window is
    the whole level): the sample the capacity judge and the window's percentiles share."""
    w = steady_window(results, duration_s)
    sent = [r for r in results if not r.skipped]
    if w.note:
        return sent
    return [r for r in sent if w.start_s <= r.sent_s <= w.end_s]


def level_figures(results: Sequence[RequestResult], duration_s: float, gpus: int, slo_ttft_ms: float | None,
                  slo_tpot_ms: float | None) -> dict[str, Any]:
    """One level's record: the steady-state window's figures at the top (what tables and sentences
    read), the window itself, and the whole level's figures under "whole"."""
    whole = level_stats(results, duration_s, gpus, slo_ttft_ms, slo_tpot_ms)
    w = steady_window(results, duration_s)
    inside = whole if w.note else span_stats(results, w, gpus, slo_ttft_ms, slo_tpot_ms)
    balance = flow_balance(results, w)
    return {**inside.to_dict(), "window": {"start_s": w.start_s, "end_s": w.end_s, "plateau": w.plateau,
                                           "steady": not w.note, "note": w.note, "balance": balance,
                                           "settled": None if balance is None else balance >= SETTLED_BALANCE},
            "whole": whole.to_dict(), "level_duration_s": duration_s}


def _ms_percentile(values_s: list[float], q: float) -> float | None:
    return None if not values_s else percentile([v * 1000 for v in values_s], q)


def _tokens(prefix: str, counts: list[int]) -> dict[str, float | None]:
    return {f"{prefix}_mean": _mean(counts), f"{prefix}_p50": percentile(counts, 50),
            f"{prefix}_p90": percentile(counts, 90)}
