"""The capacity tables of results/evidence/2026-12-03-cpu-capacity: old method against new, per traffic and layout."""
import json, sys
from pathlib import Path
E = Path(__file__).resolve().parent
LAYOUTS = [("single", "vllm-single-serve"), ("dp=2", "vllm-dp2-serve"), ("tp=2", "vllm-tp2-serve")]

def hit(l):
    return (l.get("server") or {}).get("prefix_hit_rate")

def row(method, traffic, name, folder):
    p = E / f"{method}-{traffic}" / folder / "summary.json"
    if not p.is_file():
        return f"| {traffic} | {name} | {method} | (no run) | | | |"
    s = json.loads(p.read_text())
    c, levels = s.get("capacity") or {}, s["levels"]
    missed = {}
    for pr in c.get("probes") or []:
        if "passed" in pr:
            missed[float(pr["rate"])] = not pr["passed"]
        elif "verdict" in pr:
            missed[float(pr["rate"])] = pr["verdict"] == "missed"
    def mark(l):
        return "✗" if missed.get(float(l["level_value"])) else ""
    probes = ", ".join(f"{l['level'].removeprefix('rate=')}{mark(l)} "
                       f"({'-' if hit(l) is None else f'{hit(l):.2f}'})" for l in levels)
    if method == "old":
        cap = f"{c.get('rate')}"; interval = f"bracket {c.get('rate')}–{c.get('lowest_failed')}"
        fresh = 1                      # the head of one list: every later probe re-sends requests
    else:
        cap = f"{c['estimate']:.1f}" if c.get('estimate') is not None else str(c.get('rate'))
        lo, hi = c.get("ci_low"), c.get("ci_high")
        interval = (f"{100*c.get('confidence',0.9):.0f}% CI {lo:.3g}–{hi:.3g}" if lo is not None and hi is not None
                    else f"bracket {c.get('rate')}–{c.get('lowest_failed')}")
        interval += f"; holds {c.get('rate')}"
        if c.get("stopped"):
            interval += "; stopped: GSM8K used up"
        fresh = sum(1 for l in levels if not l.get("reused"))
    return f"| {traffic} | {name} | {method} | {cap} | {interval} | {len(levels)} ({fresh} fresh) | {probes} |"

print("| traffic | layout | method | capacity req/s | interval | runs | probes: rate (prefix hit rate), ✗ = missed |")
print("|---|---|---|---:|---|---|---|")
for traffic in ("gsm8k", "long"):
    for name, folder in LAYOUTS:
        for method in ("old", "new"):
            print(row(method, traffic, name, folder))
