"""Serving runs side by side: one row per layout and load level (throughput per GPU, latency
percentiles, goodput, accuracy), the sentence that answers "which layout holds my traffic", and
the throughput-latency picture (output tok/s per GPU against tok/s per user, a line per layout).

    python -m evaluator.report results/ --compare
"""
from __future__ import annotations

from dataclasses import dataclass


from evaluator.report.runs import FoundRun, run_label
from evaluator.serving.metrics import PERCENTILE_RULE


def serving_runs(runs: list[FoundRun]) -> list[FoundRun]:
    return [r for r in runs if r.summary.config.workload == "serve" and r.summary.levels]


def _ms(v) -> str:
    if v is None:
        return "-"
    if v == float("inf"):
        return "∞"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _f(v, fmt) -> str:
    return "-" if v is None else format(v, fmt)


def _percent(fraction: float | None) -> str:
    """'61%', '3.9%', '0.02%': small KV usages keep their digits (0% would read as unused)."""
    if fraction is None:
        return "-"
    pct = 100 * fraction
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 0.1 else f"{pct:.2g}%"


def _server(level: dict, key: str):
    """What the servers' /metrics said over the level (None where they did not say)."""
    return (level.get("server") or {}).get(key)


def _sent(l: dict) -> str:
    """Requests the level sent (the window's in brackets when it is a part of them)."""
    whole = (l.get("whole") or {}).get("requests", l["requests"])
    return f"{whole}" if whole == l["requests"] else f"{whole} ({l['requests']})"


def _failed(l: dict) -> str:
    """Failed requests of the window (of them timed out), rejected ones, skipped later turns."""
    failed = l["errors"] + l.get("rejected", 0)
    text = f"{failed}" + (f" ({l['timeouts']} t/o)" if l.get("timeouts") else "")
    return text + (f" +{l['skipped']} skipped" if l.get("skipped") else "")


def _window(l: dict) -> str:
    w = l.get("window")
    if not w:
        return "whole"
    if not w.get("steady"):
        return "whole"
    return f"{w['end_s'] - w['start_s']:.1f}/{l.get('level_duration_s', 0):.1f}" + ("↑" if w.get("settled") is False else "")


def prefix_flag(l: dict) -> str:
    """The level's prefix-cache hit rate, marked where the traffic does not explain it: requests
    re-sent (--reuse-requests), or hits beyond the share of the prompt that all its requests have
    in common (the chat template's header) on traffic without shared prefixes or sessions."""
    rate = _server(l, "prefix_hit_rate")
    if rate is None:
        return "-"
    text = _percent(rate)
    if l.get("reused"):
        return text + " re-sent"
    share = l.get("template_share")
    if not l.get("traffic_repeats") and share is not None and rate > share + 0.05:
        return text + " !"
    return text


LEVEL_COLUMNS = [
    ("level", lambda l: l["level"]), ("sent (window)", _sent), ("failed", _failed),
    ("window s", _window), ("retry", lambda l: str(l["retries"])), ("req/s", lambda l: _f(l["request_per_s"], ".2f")),
    ("out tok/s", lambda l: _f(l["output_tokens_per_s"], ".0f")),
    ("tok/s/GPU", lambda l: _f(l["output_tokens_per_s_per_gpu"], ".0f")),
    ("tok/s/user", lambda l: _f(l["tokens_per_s_per_user"], ".1f")),
    ("TTFT p50/p99 ms", lambda l: f"{_ms(l['ttft_ms_p50'])}/{_ms(l['ttft_ms_p99'])}"),
    ("TPOT p50/p99 ms", lambda l: f"{_ms(l['tpot_ms_p50'])}/{_ms(l['tpot_ms_p99'])}"),
    ("ITL p50/p99 ms", lambda l: f"{_ms(l['itl_ms_p50'])}/{_ms(l['itl_ms_p99'])}"),
    ("E2E p50/p99 ms", lambda l: f"{_ms(l['e2e_ms_p50'])}/{_ms(l['e2e_ms_p99'])}"),
    ("goodput req/s", lambda l: _f(l["goodput_rps"], ".2f")),
    ("in/out tok mean", lambda l: f"{_f(l.get('prompt_tokens_mean'), '.0f')}/{_f(l.get('output_tokens_mean'), '.0f')}"),
    ("send lag p99 ms", lambda l: _f(l.get("send_lag_ms_p99"), ".1f")),
    ("server TTFT ms", lambda l: _f(_server(l, "server_ttft_ms_mean"), ".1f")),
    ("run/wait max", lambda l: f"{_f(_server(l, 'running_max'), '.0f')}/{_f(_server(l, 'waiting_max'), '.0f')}"),
    ("KV use max", lambda l: _percent(_server(l, "kv_usage_max"))),
    ("preempt", lambda l: _f(_server(l, "preemptions"), ".0f")),
    ("prefix hits", prefix_flag),
    ("flex acc", lambda l: "-" if l.get("flexible_accuracy") is None else f"{l['flexible_accuracy']:.3f}"),
]

LEGEND = ("Each level's figures are over its steady-state window (from when the requests in flight first reach their "
          "plateau to the last arrival; 'window s' = its length / the level's; 'whole' where it was too short to "
          "stand alone; '↑' where fewer than 80% as many requests finished in it as were sent: in flight still "
          "rising, the level shorter than it needed), the whole level's kept in summary.json. " + PERCENTILE_RULE
          + "; means are over answered requests. sent = requests the level sent, fresh unless marked (window: "
          "those sent inside it); failed = errors and rejections in the window (t/o: timeouts), skipped = later "
          "turns of a broken session. TTFT = "
          "request sent to first token; TPOT = (end-to-end - TTFT) / (output tokens - 1); ITL = gaps between "
          "streamed chunks of answered requests; tok/s/user = mean 1/TPOT; goodput = requests answered in the window "
          "meeting every SLO given, per second (= req/s without SLOs); tokens from the server's usage. prefix hits: "
          "'!' = more than the prompts' common header explains, 're-sent' = requests an earlier level sent.")


def level_columns(price_per_gpu_hour: float | None) -> list[tuple[str, object]]:
    """The per-level columns; with a price, what a million output tokens cost at that level's
    throughput (serving cost is per level: c=1 and c=256 of one run are not one price)."""
    from evaluator.report.analysis import cost_per_million_at
    cols = list(LEVEL_COLUMNS)
    if price_per_gpu_hour is not None:
        cols.append(("cost/M tok", lambda l: _f(cost_per_million_at(l["gpus"], l["output_tokens_per_s"],
                                                                    price_per_gpu_hour), ".2f")))
    return cols


def _slo_text(r: FoundRun) -> str:
    sv = r.summary.config.serve
    parts = [f"TTFT ≤ {sv.slo_ttft_ms:g} ms" if sv.slo_ttft_ms else "", f"TPOT ≤ {sv.slo_tpot_ms:g} ms" if sv.slo_tpot_ms else ""]
    return " and ".join(p for p in parts if p)


def _gpus(r: FoundRun) -> int:
    return r.summary.config.dp * r.summary.config.tp


def group_sentence(group: list[FoundRun]) -> str:
    """For serving runs of one speed key (same engine, settings, traffic, levels and SLOs): which
    layout gives the most goodput per GPU under the SLOs (else the most output tok/s per GPU), and,
    at the lightest load of each kind (concurrency levels and rate levels apart), which has the
    lowest median TPOT."""
    slo = _slo_text(group[0])
    pairs = [(r, l) for r in group for l in r.summary.levels]
    if slo:
        r, l = max(pairs, key=lambda x: x[1]["goodput_rps"] / _gpus(x[0]))
        head = (f"Under {slo}, {run_label(r, group)} gives the most goodput per GPU "
                f"({l['goodput_rps'] / _gpus(r):.2f} req/s/GPU at {l['level']})")
    else:
        r, l = max(pairs, key=lambda x: x[1]["output_tokens_per_s_per_gpu"])
        head = (f"{run_label(r, group)} gives the most output per GPU "
                f"({l['output_tokens_per_s_per_gpu']:.0f} tok/s/GPU at {l['level']}; give --slo-ttft-ms / "
                f"--slo-tpot-ms to rank by goodput)")
    for kind in dict.fromkeys(l["level_kind"] for _, l in pairs):
        of_kind = [(r, l) for r, l in pairs if l["level_kind"] == kind]
        lightest = min(l["level_value"] for _, l in of_kind)
        at = [(r, l) for r, l in of_kind if l["level_value"] == lightest and l["tpot_ms_p50"] is not None]
        if at and len(group) > 1:
            r, l = min(at, key=lambda x: x[1]["tpot_ms_p50"])
            head += f"; at {l['level']}, {run_label(r, group)} has the lowest median TPOT ({l['tpot_ms_p50']:.1f} ms)"
    return head + "."


def sentences(served: list[FoundRun], price_per_gpu_hour: float | None = None) -> list[str]:
    """One sentence per set of serving runs that measured the same thing the same way, each saying
    what it compared (runs of other engines, settings, traffic or SLOs are never ranked together)."""
    from evaluator.report.runs import describe_speed_group, speed_key
    groups: dict[tuple, list[FoundRun]] = {}
    for r in served:
        groups.setdefault(speed_key(r), []).append(r)
    out = []
    for group in groups.values():
        scope = describe_speed_group(group, with_state=False)
        out.append(f"({scope}; {describe_traffic(group[0])}) {group_sentence(group)}")
        for extra in (capacity_sentence(group, price_per_gpu_hour), why_sentence(group)):
            if extra:
                out.append(extra)
    return out


def sentence(served: list[FoundRun], price_per_gpu_hour: float | None = None) -> str:
    return " ".join(sentences(served, price_per_gpu_hour))


def describe_traffic(r: FoundRun) -> str:
    """What the load was: GSM8K (and how many prompts a level sent at most) or the traffic's name
    and shape (mean and p90 tokens in, out)."""
    t, s = r.summary.traffic or {}, r.summary
    if not t or t.get("name", "gsm8k") == "gsm8k":
        return f"GSM8K, up to {s.prompts} prompts a level"
    out = (f"{t['max_tokens_mean']:,.0f} out (p90 {t['max_tokens_p90']:,.0f})" if t.get("max_tokens_mean")
           else "output until EOS")
    return (f"{t['name']}: {t.get('requests', '?')} requests, mean {t.get('prompt_tokens_mean') or 0:,.0f} in "
            f"(p90 {t.get('prompt_tokens_p90') or 0:,.0f}) / {out}")


def _server_bits(srv: dict) -> list[str]:
    bits = []
    if srv.get("running_max") is not None:
        bits.append(f"ran up to {srv['running_max']:.0f} at once")
    if srv.get("preemptions"):
        bits.append(f"preempted {srv['preemptions']:.0f}")
    waiting = srv.get("waiting_max")
    if waiting is not None:
        bits.append(f"queued up to {waiting:.0f}" if waiting else "queued none")
    if srv.get("kv_usage_max") is not None:
        bits.append(f"KV cache up to {_percent(srv['kv_usage_max'])} used")
    if srv.get("prefix_hit_rate") is not None:
        bits.append(f"prefix-cache hits {100 * srv['prefix_hit_rate']:.0f}%")
    return bits


def why_sentence(group: list[FoundRun]) -> str | None:
    """What the servers said at the heaviest load every run of the group sent (for capacity
    searches: at the first rate each layout missed): how many requests each layout queued and
    preempted, and how full its KV cache got: the reason one holds more."""
    if all(r.summary.capacity for r in group):
        parts = []
        for r in group:
            c = r.summary.capacity
            rate = c["lowest_failed"] if c["lowest_failed"] is not None else max(p["rate"] for p in c["probes"])
            level = next((l for l in r.summary.levels if l["level_value"] == rate), None)
            bits = _server_bits((level or {}).get("server") or {})
            if bits:
                parts.append(f"{run_label(r, group)} at {level['level']} {', '.join(bits)}")
        return ("At the first rate each layout missed (the servers' own metrics): " + "; ".join(parts) + "."
                if parts else None)
    common = None
    for r in group:
        labels = {l["level"] for l in r.summary.levels if l.get("server")}
        common = labels if common is None else common & labels
    if not common:
        return None
    heaviest = max(common, key=lambda lab: next(l["level_value"] for l in group[0].summary.levels if l["level"] == lab))
    parts = []
    for r in group:
        bits = _server_bits(next(l for l in r.summary.levels if l["level"] == heaviest)["server"])
        if bits:
            parts.append(f"{run_label(r, group)} {', '.join(bits)}")
    return f"At {heaviest} (the servers' own metrics): " + "; ".join(parts) + "." if parts else None


def capacity_sentence(group: list[FoundRun], price_per_gpu_hour: float | None = None) -> str | None:
    """"Under TTFT p90 <= 1000 ms and TPOT p90 <= 50 ms: 1x2 holds 14.2 req/s (7.1 per GPU, bracket
    13.5-14.9), ..." for the runs of the group that searched their capacity, best per GPU first."""
    from evaluator.report.analysis import cost_per_million_at
    found = [r for r in group if r.summary.capacity]
    if not found:
        return None
    sv = found[0].summary.config.serve
    q = f"p{sv.slo_percentile:g}"
    slo = " and ".join(x for x in (f"TTFT {q} ≤ {sv.slo_ttft_ms:g} ms" if sv.slo_ttft_ms else "",
                                   f"TPOT {q} ≤ {sv.slo_tpot_ms:g} ms" if sv.slo_tpot_ms else "") if x)
    found.sort(key=lambda r: -((r.summary.capacity or {}).get("per_gpu") or 0))
    parts = []
    for r in found:
        c = r.summary.capacity
        if c["rate"] is None:
            parts.append(f"{run_label(r, group)} holds none of the rates tried (lowest {c['lowest_failed']:g} req/s)")
            continue
        top = f"{c['lowest_failed']:g}" if c["lowest_failed"] is not None else "not reached"
        cost = cost_per_million_at(_gpus(r), c.get("output_tokens_per_s") or 0, price_per_gpu_hour)
        parts.append(f"{run_label(r, group)} holds {c['rate']:g} req/s ({c['per_gpu']:.3g} per GPU"
                     + interval_text(c) + f"; bracket {c['rate']:g}–{top}{'' if c['converged'] else ', not converged'}"
                     + probes_text(c)
                     + (f"; {cost:.2f} per million output tokens" if cost is not None else "") + ")")
    return f"For {describe_traffic(found[0])}, under {slo}: " + "; ".join(parts) + "."


def interval_text(c: dict) -> str:
    """'; capacity 90% CI 19.8–21.9' from a capacity record (nothing for one written before intervals)."""
    if c.get("confidence") is None or (c.get("ci_low") is None and c.get("ci_high") is None):
        return ""
    low = f"{c['ci_low']:.3g}" if c.get("ci_low") is not None else "below the lowest probe"
    high = f"{c['ci_high']:.3g}" if c.get("ci_high") is not None else "?"
    if c.get("above_range"):
        high = f"≥{high}"
    return f"; capacity {100 * c['confidence']:.0f}% CI {low}–{high}"


def probes_text(c: dict) -> str:
    runs = c.get("runs") or len(c.get("probes") or ())
    text = f", {runs} probes" + (f", {c['repeats']} repeat{'s' if c['repeats'] != 1 else ''} at the boundary" if c.get("repeats") else "")
    unsettled = [p["rate"] for p in c.get("probes") or () if p.get("passed") and p.get("settled") is False]
    if unsettled:
        text += (f", held at {', '.join(f'{r:g}' for r in unsettled)} req/s before in flight settled (its levels "
                 "ended while requests still piled up: a longer --level-min-s would say whether it holds)")
    if c.get("stopped"):
        text += f", stopped early: {c['stopped']}"
    return text


@dataclass(frozen=True)
class Curve:
    label: str
    per_user: list[float]             # tok/s per user, one point per level
    per_gpu: list[float]              # output tok/s per GPU
    levels: list[str]


