"""The benchmark's ratios: every ratio computed within one repeat (measurements taken back to back,
same process order, same devices), then median and min-max over repeats; printed as a table and
plain lines, and kept in bench.json.

Sections:
  overhead      evaluator / bare, per layout: generate (goal <= 1.02), the same without the
                evaluator's own merge/score/store (its dispatch to last chunk: what Ray and the
                driver add to the engine's time), start-up (goal <= 1.05), wall; and the seconds of
                merge/score/store, which the bare engine does not do, so users can subtract them
  dp_scaling    1x1 generate / (Nx1 generate x N) (1.0 = ideal); end-to-end speedup; start-up
                ratio Nx1 vs 1x1 (goal <= 1.15)
  straggler_gap (slowest - fastest) / slowest replica, per sharding mode, from evaluator runs
  throughput    the engine's own output tokens/s next to the evaluator's

    python -m evaluator.bench --engine vllm --model models/tiny --data data/gsm8k_test.parquet --gpus 2
    python -m evaluator.bench.ratios results/bench/ID/bench.json     # a report again, ratios recomputed
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evaluator.bench.measure import Measurement

SCHEMA_VERSION = 2
NOTE = ("Ratios, not absolute times, are the point: every ratio compares measurements taken back to back "
        "in the same process order within one repeat, on the same device(s); absolute seconds depend on the "
        "machine and on what else runs on it.")
GOALS = {"overhead_generate": 1.02, "overhead_startup": 1.05, "startup_ratio": 1.15}


def stat(values: list[float], goal: float | None = None) -> dict[str, Any]:
    s = {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
    if goal is not None:
        s["goal_max"] = goal
        s["meets_goal"] = s["median"] <= goal
    return s


def sections(ms: list[Measurement], dp: int, shardings: list[str]) -> dict[str, Any]:
    """Every ratio within one repeat first, then median and spread over the repeats."""
    by = {(m.repeat, m.name): m for m in ms}
    repeats = sorted({m.repeat for m in ms})
    single, multi = "1x1", f"{dp}x1"

    def per(fn) -> list[float]:
        return [fn(lambda name: by[(r, name)]) for r in repeats]
    out: dict[str, Any] = {"overhead": {}, "dp_scaling": {}, "straggler_gap": {}, "throughput": {}}
    layouts = (single, multi) if dp > 1 else (single,)
    for lay in layouts:
        bare, ev = f"bare {lay}", f"evaluator {lay} contiguous"
        out["overhead"][f"generate_{lay}"] = stat(per(lambda g: g(ev).generate_s / g(bare).generate_s),
                                                  GOALS["overhead_generate"])
        out["overhead"][f"dispatch_{lay}"] = stat(
            per(lambda g: g(ev).phases["dispatch_to_last_chunk_s"] / g(bare).generate_s), GOALS["overhead_generate"])
        out["overhead"][f"scoring_{lay}"] = stat(per(lambda g: g(ev).phases["merge_score_store_s"]))
        out["overhead"][f"startup_{lay}"] = stat(per(lambda g: g(ev).startup_s / g(bare).startup_s),
                                                 GOALS["overhead_startup"])
        out["overhead"][f"wall_{lay}"] = stat(per(lambda g: g(ev).wall_s / g(bare).wall_s))
        out["throughput"][lay] = {
            "engine_tokens_per_s": stat(per(lambda g: g(bare).engine["completion_tokens"] / g(bare).engine["span_s"])),
            "ours_tokens_per_s": stat(per(lambda g: g(ev).output_tokens_per_s)),
            "ours_over_engine": stat(per(lambda g: g(ev).output_tokens_per_s
                                         / (g(bare).engine["completion_tokens"] / g(bare).engine["span_s"]))),
            "engine_completion_tokens": [by[(r, bare)].engine["completion_tokens"] for r in repeats],
            "ours_completion_tokens": [by[(r, ev)].completion_tokens for r in repeats],
            "engine_source": by[(repeats[0], bare)].engine["source"],
            "ours_source": "evaluator summary: completion tokens / slowest replica's generate_s"}
    if dp == 1:     # one device: no dp=N to scale to or to straggle in
        return out
    for kind, s_name, m_name in (("evaluator", f"evaluator {single} contiguous", f"evaluator {multi} contiguous"),
                                 ("bare", f"bare {single}", f"bare {multi}")):
        d = out["dp_scaling"]
        d[f"generate_efficiency_{kind}"] = stat(per(lambda g: g(s_name).generate_s / (g(m_name).generate_s * dp)))
        d[f"end_to_end_speedup_{kind}"] = stat(per(lambda g: g(s_name).wall_s / g(m_name).wall_s))
        d[f"startup_ratio_{kind}"] = stat(per(lambda g: g(m_name).startup_s / g(s_name).startup_s),
                                          GOALS["startup_ratio"])
    for mode in shardings:
        out["straggler_gap"][mode] = stat(per(lambda g: g(f"evaluator {multi} {mode}").straggler_gap))
    return out


# --- output -------------------------------------------------------------------------------------
def _fmt(s: dict[str, Any], digits: int = 3) -> tuple[str, str]:
    return f"{s['median']:.{digits}f}", f"{s['min']:.{digits}f}–{s['max']:.{digits}f}"


def lines_of(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(section, quantity, stat, unit) for every number the table and the plain lines show."""
    sec, dp = report["sections"], report["config"]["dp"]
    multi = f"{dp}x1"
    rows = []
    for key, s in sec["overhead"].items():
        what, lay = key.split("_", 1)
        if what == "dispatch":
            rows.append(("overhead", f"evaluator / bare generate {lay}, merge/score/store left out", s, "×"))
        elif what == "scoring":
            rows.append(("overhead", f"evaluator merge/score/store {lay} (seconds, in generate)", s, "s"))
        else:
            rows.append(("overhead", f"evaluator / bare {what} {lay}", s, "×"))
    d = sec["dp_scaling"]
    for kind in ("evaluator", "bare") if d else ():
        rows.append(("dp_scaling", f"{kind} generate 1x1 / ({multi} × {dp}) (1 = ideal)", d[f"generate_efficiency_{kind}"], "×"))
        rows.append(("dp_scaling", f"{kind} end-to-end speedup {multi} vs 1x1", d[f"end_to_end_speedup_{kind}"], "×"))
        rows.append(("dp_scaling", f"{kind} start-up {multi} / 1x1", d[f"startup_ratio_{kind}"], "×"))
    for mode, s in sec["straggler_gap"].items():
        rows.append(("straggler_gap", f"evaluator {multi} {mode}: (slowest - fastest) / slowest", s, ""))
    for lay, t in sec["throughput"].items():
        rows.append(("throughput", f"engine {lay} ({t['engine_source']})", t["engine_tokens_per_s"], "tok/s"))
        rows.append(("throughput", f"ours {lay} (evaluator summary)", t["ours_tokens_per_s"], "tok/s"))
        rows.append(("throughput", f"ours / engine {lay}", t["ours_over_engine"], "×"))
    return rows


def print_report(report: dict[str, Any], path: Path, console: Console) -> None:
    cfg = report["config"]
    t = Table(title=f"Bench: {cfg['engine']} on {cfg['device_name']}, {cfg['prompts']} prompts, "
                    f"{cfg['max_tokens']} max tokens, {cfg['repeats']} repeat(s)")
    for col in ("section", "quantity", "median", "min–max", "goal"):
        t.add_column(col, justify="right" if col in ("median", "min–max") else "left")
    rows = lines_of(report)
    for section, quantity, s, unit in rows:
        digits = 1 if unit == "tok/s" else 3
        med, spread = _fmt(s, digits)
        goal = "" if "goal_max" not in s else f"≤ {s['goal_max']} ({'met' if s['meets_goal'] else 'missed'})"
        t.add_row(section, quantity, med, spread, goal)
    console.print(t)
    m = Table(title="Measurements (median seconds over repeats)")
    for col in ("measurement", "start-up s", "generate s", "in replicas s", "wall s", "completion tokens"):
        m.add_column(col, justify="left" if col == "measurement" else "right")
    for name in report["order"]:
        of = [x for x in report["measurements"] if x["name"] == name]
        med = lambda k: statistics.median(x[k] for x in of)
        inside = f"{med('replica_generate_s'):.3f}" if of[0]["replica_generate_s"] is not None else ""
        m.add_row(name, f"{med('startup_s'):.2f} {of[0]['compile']}", f"{med('generate_s'):.3f}", inside,
                  f"{med('wall_s'):.1f}", str(of[0]["completion_tokens"]))
    console.print(m)
    print(f"note: {NOTE}")
    if cfg["dp"] == 1:
        print("dp_scaling, straggler_gap: not measured (dp=N needs N devices; this run had 1)")
    print(f"order of each repeat: {', '.join(report['order'])}"
          + (" (after one untimed warm-up start)" if cfg["warmup_wall_s"] is not None else ""))
    print("generate s: bare = slowest process's generate call; evaluator = driver side, first chunk sent to last "
          "stored, plus merge/score/store ('in replicas s' = the replicas' own first-start to last-end)")
    for section, quantity, s, unit in rows:
        digits = 1 if unit == "tok/s" else 3
        med, spread = _fmt(s, digits)
        goal = "" if "goal_max" not in s else f"; goal <= {s['goal_max']}: {'met' if s['meets_goal'] else 'missed'}"
        print(f"{section}: {quantity}: {med}{(' ' + unit) if unit == 'tok/s' else ''} "
              f"(median of {len(s['values'])}; {spread}{goal})")
    print(f"report: {path}")


def _finite(obj: Any) -> Any:
    """NaN/inf have no JSON spelling; a ratio that is one is reported as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def recompute(report: dict[str, Any]) -> dict[str, Any]:
    """The sections again from a bench.json's measurements, with this version's arithmetic."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(Measurement)}
    ms = [Measurement(**{k: v for k, v in m.items() if k in names}) for m in report["measurements"]]
    return {**report, "sections": sections(ms, report["config"]["dp"], report["config"]["shardings"])}


if __name__ == "__main__":
    import json
    import sys
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        print("usage: python -m evaluator.bench.ratios BENCH_JSON   (prints its report again, ratios recomputed)",
              file=sys.stderr)
        sys.exit(2)
    print_report(recompute(json.loads(Path(sys.argv[1]).read_text())), Path(sys.argv[1]), Console(width=140))
