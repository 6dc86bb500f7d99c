"""What the servers say about themselves while a level runs: their Prometheus /metrics, sampled
every interval and reduced per level to the figures that explain a layout's result (requests
running and queued, KV-cache usage, preemptions, prefix-cache hit rate, the server's own TTFT).

Engine-agnostic: which metric means what, whether it is a gauge or a counter and how its label sets
add up is the backend's business (Capabilities.metrics: launchers.engines.base.ServerMetric, in our
neutral names); this module reads the text with prometheus_client's parser, keeps every label set
(one per engine of a vLLM --data-parallel-size server, one per DP rank of SGLang) apart, and does
the arithmetic: a gauge is combined over its label sets at each scrape (one instant of one server)
and then reduced over the level; a counter is differenced per label set (a reset counted from 0)
and then summed; the layout's servers are combined by the same rule (docs/metrics.md). A server
without /metrics, or a name it does not export, gives None.

    python -c "from evaluator.serving.scrape import read_text; print(read_text('# TYPE a gauge\\na{engine=\\"0\\"} 3'))"
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from launchers.engines.base import ServerMetric

Labels = tuple[tuple[str, str], ...]          # one label set, sorted
COUNTER_TYPES = ("counter", "histogram", "summary", "gaugehistogram")   # families whose _total/_sum/_count only grow
GAUGE_TYPES = ("gauge", "info", "stateset")

# the neutral metrics the summary reports; the backends map them (launchers/engines/*.py CAPABILITIES)
LEVEL_GAUGES = ("running", "waiting", "kv_usage")
LEVEL_COUNTERS = ("preemptions", "prefix_queries", "prefix_hits", "ttft_sum", "ttft_count")


@dataclass(frozen=True)
class Series:
    """One sample name of a /metrics text: its family's declared type and a value per label set."""
    kind: str                          # counter, gauge, histogram, summary, unknown, ... (as the server declares)
    values: dict[Labels, float]


def read_text(text: str) -> dict[str, Series]:
    """Prometheus text format -> {sample name (a counter's with _total): Series}, through
    prometheus_client's parser (which raises ValueError on text that is not the format). NaN values
    (an engine's histogram before its first observation) are left out."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created") or math.isnan(s.value):   # a counter's creation time is no reading
                continue
            series = out.setdefault(s.name, Series(family.type, {}))
            series.values[tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def total(text: str, name: str) -> float | None:
    """One counter's value summed over its label sets (every engine of a server), None if absent."""
    series = read_text(text).get(name)
    return sum(series.values.values()) if series else None


def _fits(declared: str, kind: str) -> bool:
    """A declared family type that can be read as the kind the backend expects (untyped: either)."""
    return declared in (COUNTER_TYPES if kind == "counter" else GAUGE_TYPES) or declared in ("unknown", "untyped")


def _value(labels: dict[str, str], value: float, metric: ServerMetric) -> float | None:
    if not metric.labels:
        return value
    try:
        return math.prod(float(labels[k]) for k in metric.labels)
    except (KeyError, ValueError):       # the label is missing or says "None"
        return None


def pick(parsed: dict[str, Series], metrics: dict[str, ServerMetric]) -> dict[str, dict[Labels, float]]:
    """The neutral metrics one scrape gives: {neutral name: {label set: value}}, from the first of
    each metric's names the server exports with a fitting type; label sets that disagree with its
    `where` are left out. A neutral name is absent when the server exports none of its names."""
    out: dict[str, dict[Labels, float]] = {}
    for ours, metric in metrics.items():
        for name in metric.names:
            series = parsed.get(name)
            if series is None or not _fits(series.kind, metric.kind):
                continue
            values = {}
            for labels, v in series.values.items():
                d = dict(labels)
                if any(k in d and d[k] != want for k, want in metric.where):
                    continue
                value = _value(d, v, metric)
                if value is not None:
                    values[labels] = value
            if values or not metric.labels:
                out[ours] = values
                break
    return out


def combine(values: list[float], rule: str) -> float | None:
    """Label sets (ranks of one server) or servers (of a layout) as one figure: sum, max or mean."""
    if not values:
        return None
    return sum(values) if rule == "sum" else max(values) if rule == "max" else sum(values) / len(values)


def increase(points: list[float | None]) -> float | None:
    """A counter's growth over the level from its readings in order (None: not read that time): the
    sum of its rises, a fall being a reset (the engine restarted its count) from which the new reading
    is the rise, as Prometheus' increase() does. None with fewer than two readings."""
    read = [p for p in points if p is not None]
    if len(read) < 2:
        return None
    return sum(b - a if b >= a else b for a, b in zip(read, read[1:]))


Scrape = tuple[float, dict[str, dict[Labels, float]]]     # (perf_counter time, pick()'s result)


def reduce(samples: list[Scrape], metrics: dict[str, ServerMetric]) -> dict[str, Any]:
    """One server's scrapes over a level -> {gauge_mean, gauge_max, gauge_last, counter growth}, for
    every neutral metric it exported. A gauge is combined over its label sets at each scrape (one
    instant: KV usage the fullest rank's, requests running the sum) and then reduced over the level;
    a counter is differenced per label set and summed (a lazy one's label set that first appears
    mid-level counts from 0; one that never appears says nothing: None)."""
    out: dict[str, Any] = {"scrapes": len(samples)}
    for ours, metric in metrics.items():
        present = [s.get(ours) for _, s in samples]
        if metric.kind == "gauge":
            series = [combine(list(v.values()), metric.combine) for v in present if v]
            series = [v for v in series if v is not None]
            out[f"{ours}_mean"] = sum(series) / len(series) if series else None
            out[f"{ours}_max"] = max(series) if series else None
            out[f"{ours}_last"] = series[-1] if series else None
            continue
        growth = []
        for labels in {labels for v in present if v for labels in v}:
            points = [None if v is None else v.get(labels) for v in present]
            if metric.lazy:         # created at its first increment: 0 in every scrape before its first reading
                first = next(i for i, p in enumerate(points) if p is not None)
                points[:first] = [0.0] * first
            if (g := increase(points)) is not None:
                growth.append(g)
        out[ours] = sum(growth) if growth else None
    if samples:
        last = samples[-1][1]
        out["ranks"] = max((len(last.get(g) or {}) for g in LEVEL_GAUGES), default=0) or None
    return out


def hit_rate(hits: float | None, queries: float | None, gauge: float | None) -> tuple[float | None, str | None]:
    """One prefix-hit definition for every engine: cached tokens / looked-up tokens over the level,
    from the engine's counters ("counters"); where it exports none, its own hit-rate gauge, said so
    ("gauge"). Counters with no lookups in the level give None, not the gauge's stale reading."""
    if queries is not None:
        return (hits or 0.0) / queries if queries > 0 else None, "counters"
    if gauge is not None:
        return gauge, "gauge"
    return None, None


@dataclass
class Scraper:
    """Samples every endpoint's /metrics every interval_s while a level runs (run() is the
    client's monitor hook); summary() reduces the samples per endpoint and over the layout."""
    urls: list[str]
    names: dict[str, ServerMetric]         # neutral -> how the server exports it (Capabilities.metrics)
    interval_s: float = 1.0
    headers: dict[str, str] = field(default_factory=dict)
    samples: dict[int, list[Scrape]] = field(default_factory=dict)
    unreadable: dict[int, int] = field(default_factory=dict)   # texts the parser refused, per endpoint

    async def fetch(self, session: aiohttp.ClientSession, rank: int) -> None:
        try:
            async with session.get(f"{self.urls[rank]}/metrics", headers=self.headers,
                                   timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return
                text = await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return
        self.add(rank, text)

    def add(self, rank: int, text: str, at: float | None = None) -> None:
        """One scrape of one endpoint; a text prometheus_client cannot parse is counted, not read."""
        try:
            parsed = read_text(text)
        except ValueError:
            self.unreadable[rank] = self.unreadable.get(rank, 0) + 1
            return
        self.samples.setdefault(rank, []).append((time.perf_counter() if at is None else at, pick(parsed, self.names)))

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """One sample at the start, one every interval, one at the end (counters are differenced)."""
        if not self.names:
            return
        while True:
            await asyncio.gather(*(self.fetch(session, k) for k in range(len(self.urls))))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
                break
            except asyncio.TimeoutError:
                continue
        await asyncio.gather(*(self.fetch(session, k) for k in range(len(self.urls))))

    def summary(self) -> dict[str, Any]:
        """Per level, for the layout: running and waiting (mean, max: the sum over its servers of
        each one's), KV usage (mean, max: the fullest server's), KV-cache tokens (the sum), the
        counters' growth (preemptions, prefix lookups and hits, TTFT sum and count: summed), the
        prefix-cache hit rate and where it came from, the servers' mean TTFT; and per server the
        same, in `servers`."""
        per = {rank: self._server(reduce(samples, self.names)) for rank, samples in sorted(self.samples.items())}
        if not per:
            return {}
        out: dict[str, Any] = {}
        for g in LEVEL_GAUGES:
            rule = self.names[g].combine if g in self.names else "sum"
            for stat in ("mean", "max"):
                out[f"{g}_{stat}"] = combine([p[f"{g}_{stat}"] for p in per.values() if p.get(f"{g}_{stat}") is not None],
                                             rule)
        for c in LEVEL_COUNTERS:
            out[c] = combine([p[c] for p in per.values() if p.get(c) is not None], "sum")
        out["kv_tokens"] = combine([p["kv_tokens"] for p in per.values() if p.get("kv_tokens") is not None],
                                   self.names["kv_tokens"].combine if "kv_tokens" in self.names else "sum")
        rate_rule = self.names["prefix_hit_rate"].combine if "prefix_hit_rate" in self.names else "mean"
        gauge_rate = combine([p["prefix_hit_rate_gauge"] for p in per.values()
                              if p.get("prefix_hit_rate_gauge") is not None], rate_rule)
        out["prefix_hit_rate"], out["prefix_hit_rate_source"] = hit_rate(out["prefix_hits"], out["prefix_queries"],
                                                                         gauge_rate)
        out["server_ttft_ms_mean"] = 1000 * out["ttft_sum"] / out["ttft_count"] if out.get("ttft_count") else None
        if self.unreadable:
            out["unreadable_scrapes"] = sum(self.unreadable.values())
        out["servers"] = per
        return out

    @staticmethod
    def _server(r: dict[str, Any]) -> dict[str, Any]:
        """One server's figures under the summary's keys."""
        out = {k: r.get(k) for k in (*(f"{g}_{s}" for g in LEVEL_GAUGES for s in ("mean", "max")), *LEVEL_COUNTERS)}
        out["kv_tokens"] = r.get("kv_tokens_last")
        out["prefix_hit_rate_gauge"] = r.get("prefix_hit_rate_mean")
        out["prefix_hit_rate"], out["prefix_hit_rate_source"] = hit_rate(out["prefix_hits"], out["prefix_queries"],
                                                                         out["prefix_hit_rate_gauge"])
        out["server_ttft_ms_mean"] = 1000 * out["ttft_sum"] / out["ttft_count"] if out.get("ttft_count") else None
        out["ranks"], out["scrapes"] = r.get("ranks"), r["scrapes"]
        return out
