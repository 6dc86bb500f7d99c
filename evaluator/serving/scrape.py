"""What the servers say about themselves while a level runs: their Prometheus /metrics, sampled
every interval and reduced per level to the figures that explain a layout's result (requests
running and queued, KV-cache usage, preemptions, prefix-cache hit rate, the server's own TTFT).

Engine-agnostic: which metric means what is the backend's business (Capabilities.metrics, in our
neutral names: running, waiting, kv_usage, preemptions, prefix_queries, prefix_hits,
prefix_hit_rate, ttft_sum, ttft_count, kv_tokens); this module only reads the text format and
does the arithmetic. A server without /metrics (or a name it does not export) gives None.

    python -c "from evaluator.serving.scrape import parse; print(parse('vllm:num_requests_running{a=\"b\"} 3'))"
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

COUNTERS = ("preemptions", "prefix_queries", "prefix_hits", "ttft_sum", "ttft_count")
GAUGES = ("running", "waiting", "kv_usage", "prefix_hit_rate", "kv_tokens")


def parse(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: value}, summed over label sets (one server's
    engines, a native-DP server's ranks); comments and malformed lines are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        try:
            v = float(value)
        except ValueError:
            continue
        if name and not math.isnan(v):
            out[name] = out.get(name, 0.0) + v
    return out


def neutral(sample: dict[str, float], names: dict[str, str | tuple[str, ...]]) -> dict[str, float]:
    """The backend's metric names -> our neutral ones (the first of several alternatives that the
    server exports: a metric renamed between releases); names a server lacks are left out."""
    out = {}
    for ours, theirs in names.items():
        for name in (theirs,) if isinstance(theirs, str) else theirs:
            if name in sample:
                out[ours] = sample[name]
                break
    return out


@dataclass
class Scraper:
    """Samples every endpoint's /metrics every interval_s while a level runs (run() is the
    client's monitor hook); summary() reduces the samples per endpoint and over the layout."""
    urls: list[str]
    names: dict[str, str]                  # neutral -> the server's metric name
    interval_s: float = 1.0
    headers: dict[str, str] = field(default_factory=dict)
    samples: dict[int, list[tuple[float, dict[str, float]]]] = field(default_factory=dict)

    async def fetch(self, session: aiohttp.ClientSession, rank: int) -> None:
        try:
            async with session.get(f"{self.urls[rank]}/metrics", headers=self.headers,
                                   timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return
                text = await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return
        self.samples.setdefault(rank, []).append((time.perf_counter(), neutral(parse(text), self.names)))

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
        """Per level: for the layout, the gauges' mean and max summed over its servers (running,
        waiting) or averaged (KV usage), the counters' growth (preemptions), the prefix-cache hit
        rate over the level, the server-side mean TTFT; and per server the same, in `servers`."""
        per = {rank: reduce(samples) for rank, samples in sorted(self.samples.items())}
        if not per:
            return {}
        out: dict[str, Any] = {}
        for key in ("running_mean", "running_max", "waiting_mean", "waiting_max", "preemptions", "prefix_queries",
                    "prefix_hits", "ttft_sum", "ttft_count"):
            values = [p[key] for p in per.values() if p.get(key) is not None]
            out[key] = sum(values) if values else None
        for key in ("kv_usage_mean", "kv_usage_max", "prefix_hit_rate_gauge"):
            values = [p[key] for p in per.values() if p.get(key) is not None]
            out[key] = (max(values) if key.endswith("max") else sum(values) / len(values)) if values else None
        kv = [p["kv_tokens"] for p in per.values() if p.get("kv_tokens") is not None]
        out["kv_tokens"] = sum(kv) if kv else None
        out["prefix_hit_rate"] = (out["prefix_hits"] / out["prefix_queries"] if out.get("prefix_queries")
                                  else out["prefix_hit_rate_gauge"])
        out["server_ttft_ms_mean"] = (1000 * out["ttft_sum"] / out["ttft_count"] if out.get("ttft_count") else None)
        out["servers"] = per
        return {k: v for k, v in out.items() if k not in ("prefix_hit_rate_gauge",)}


def reduce(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float | None]:
    """One server's samples over a level: gauges' mean and max, counters' growth (last - first)."""
    out: dict[str, float | None] = {}
    for g in ("running", "waiting", "kv_usage"):
        values = [s[g] for _, s in samples if g in s]
        out[f"{g}_mean"] = sum(values) / len(values) if values else None
        out[f"{g}_max"] = max(values) if values else None
    for c in COUNTERS:
        values = [s[c] for _, s in samples if c in s]
        out[c] = values[-1] - values[0] if len(values) >= 2 else None
    rates = [s["prefix_hit_rate"] for _, s in samples if "prefix_hit_rate" in s]
    out["prefix_hit_rate_gauge"] = rates[-1] if rates else None
    kv = [s["kv_tokens"] for _, s in samples if "kv_tokens" in s]
    out["kv_tokens"] = kv[-1] if kv else None
    return out
