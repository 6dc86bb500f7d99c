"""Serving runs side by side: one row per layout and load level (throughput per GPU, latency
percentiles, goodput, accuracy), the sentence that answers "which layout holds my traffic", and
the throughput-latency picture (output tok/s per GPU against tok/s per user, a line per layout).

    python -m evaluator.report results/ --compare
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evaluator.report.runs import FoundRun, run_label


def serving_runs(runs: list[FoundRun]) -> list[FoundRun]:
    return [r for r in runs if r.summary.config.workload == "serve" and r.summary.levels]


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _f(v, fmt) -> str:
    return "-" if v is None else format(v, fmt)


LEVEL_COLUMNS = [
    ("level", lambda l: l["level"]), ("requests", lambda l: str(l["requests"])),
    ("err/retry", lambda l: f"{l['errors']}/{l['retries']}"), ("req/s", lambda l: _f(l["request_per_s"], ".2f")),
    ("out tok/s", lambda l: _f(l["output_tokens_per_s"], ".0f")),
    ("tok/s/GPU", lambda l: _f(l["output_tokens_per_s_per_gpu"], ".0f")),
    ("tok/s/user", lambda l: _f(l["tokens_per_s_per_user"], ".1f")),
    ("TTFT p50/p99 ms", lambda l: f"{_ms(l['ttft_ms_p50'])}/{_ms(l['ttft_ms_p99'])}"),
    ("TPOT p50/p99 ms", lambda l: f"{_ms(l['tpot_ms_p50'])}/{_ms(l['tpot_ms_p99'])}"),
    ("ITL p50/p99 ms", lambda l: f"{_ms(l['itl_ms_p50'])}/{_ms(l['itl_ms_p99'])}"),
    ("E2E p50/p99 ms", lambda l: f"{_ms(l['e2e_ms_p50'])}/{_ms(l['e2e_ms_p99'])}"),
    ("goodput req/s", lambda l: _f(l["goodput_rps"], ".2f")),
    ("flex acc", lambda l: f"{l['flexible_accuracy']:.3f}"),
]


def print_levels(runs: list[FoundRun], console: Console) -> None:
    served = serving_runs(runs)
    if not served:
        return
    t = Table(title="Serving: per layout and load level")
    t.add_column("layout", justify="left")
    for name, _ in LEVEL_COLUMNS:
        t.add_column(name, justify="left" if name == "level" else "right")
    for r in served:
        for i, level in enumerate(r.summary.levels):
            t.add_row(run_label(r, served) if i == 0 else "", *(cell(level) for _, cell in LEVEL_COLUMNS),
                      end_section=i == len(r.summary.levels) - 1)
    console.print(t)
    console.print("TTFT = request sent to first token; TPOT = (end-to-end - TTFT) / (output tokens - 1); ITL = "
                  "gaps between streamed chunks; tok/s/user = mean 1/TPOT; goodput = requests/s meeting every SLO "
                  "given (= req/s without SLOs); tokens from the server's usage.", style="dim", highlight=False)
    console.print(sentence(served), highlight=False, markup=False)


def _slo_text(r: FoundRun) -> str:
    sv = r.summary.config.serve
    parts = [f"TTFT ≤ {sv.slo_ttft_ms:g} ms" if sv.slo_ttft_ms else "", f"TPOT ≤ {sv.slo_tpot_ms:g} ms" if sv.slo_tpot_ms else ""]
    return " and ".join(p for p in parts if p)


def sentence(served: list[FoundRun]) -> str:
    """Which layout gives the most goodput per GPU (under the SLOs when given, else the most output
    tok/s per GPU), and which has the lowest median TPOT at the lightest load."""
    if not served:
        return ""
    slo = _slo_text(served[0])

    def gpus(r: FoundRun) -> int:
        return r.summary.config.dp * r.summary.config.tp
    if slo:
        best = max(((r, l) for r in served for l in r.summary.levels), key=lambda x: x[1]["goodput_rps"] / gpus(x[0]))
        r, l = best
        head = (f"Under {slo}, {run_label(r, served)} gives the most goodput per GPU "
                f"({l['goodput_rps'] / gpus(r):.2f} req/s/GPU at {l['level']})")
    else:
        best = max(((r, l) for r in served for l in r.summary.levels), key=lambda x: x[1]["output_tokens_per_s_per_gpu"])
        r, l = best
        head = (f"{run_label(r, served)} gives the most output per GPU "
                f"({l['output_tokens_per_s_per_gpu']:.0f} tok/s/GPU at {l['level']}; give --slo-ttft-ms / "
                f"--slo-tpot-ms to rank by goodput)")
    lightest = min(l["level_value"] for r in served for l in r.summary.levels)
    at = [(r, l) for r in served for l in r.summary.levels if l["level_value"] == lightest and l["tpot_ms_p50"] is not None]
    if at:
        r, l = min(at, key=lambda x: x[1]["tpot_ms_p50"])
        head += f"; at {l['level']}, {run_label(r, served)} has the lowest median TPOT ({l['tpot_ms_p50']:.1f} ms)"
    return head + "."


@dataclass(frozen=True)
class Curve:
    label: str
    per_user: list[float]             # tok/s per user, one point per level
    per_gpu: list[float]              # output tok/s per GPU
    levels: list[str]


def write_tradeoff_plot(runs: list[FoundRun], path: Path) -> Path | None:
    from evaluator.report.plot import plot_tradeoff
    served = serving_runs(runs)
    if not served:
        return None
    curves = [Curve(run_label(r, served), [l["tokens_per_s_per_user"] or 0.0 for l in r.summary.levels],
                    [l["output_tokens_per_s_per_gpu"] for l in r.summary.levels],
                    [l["level"] for l in r.summary.levels]) for r in served]
    return plot_tradeoff(curves, path)
