"""The run table: one row per finished run, offline and serving side by side, as rich output, CSV
(raw numbers) and Markdown (to paste into an issue or a wiki). The sweep and comparison reports
print through here too.

    python -m evaluator.report results/
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evaluator.records import RunSummary
from evaluator.report import analysis
from evaluator.report.runs import FoundRun, baseline_for, layout_label


def _found(runs: list[FoundRun] | list[RunSummary]) -> list[FoundRun]:
    return [r if isinstance(r, FoundRun) else FoundRun(r, Path(".")) for r in runs]


def peak_level(s: RunSummary) -> dict | None:
    """A serving run's level with the most output tokens/s (its levels are not one workload: a
    figure over all of them would blend c=1 with c=256)."""
    return max(s.levels, key=lambda l: l["output_tokens_per_s"]) if s.levels else None


def memory_row(s: RunSummary) -> dict:
    """Per replica, what the engine said it holds (KV-cache tokens, weights) against what was
    predicted before it started, and the replica's peak memory: the reason a layout wins."""
    from evaluator.memory import error
    working = [r for r in s.replicas if not r.failed] or list(s.replicas)
    kv = next((r.kv_cache_tokens for r in working if r.kv_cache_tokens), None)
    predicted = (s.memory or {}).get("predicted") or {}
    peaks = [r.peak_memory_gib for r in s.replicas if r.peak_memory_gib]
    weights = next((r.weights_gib for r in working if r.weights_gib), None)
    return {"kv_tokens": kv, "kv_tokens_predicted": predicted.get("kv_cache_tokens"),
            "kv_error": error(predicted.get("kv_cache_tokens"), kv),
            "max_concurrency": next((r.max_concurrency for r in working if r.max_concurrency), None),
            "weights_gib": weights, "weights_gib_predicted": predicted.get("weights_gib_per_device"),
            "peak_gib": max(peaks) if peaks else None}


def kv_cell(row: dict) -> str:
    if row["kv_tokens"] is None and row["kv_tokens_predicted"] is None:
        return "-"
    got = "-" if row["kv_tokens"] is None else f"{row['kv_tokens']:,}"
    if row["kv_tokens_predicted"] is None:
        return got
    err = "" if row["kv_error"] is None else f", {100 * row['kv_error']:+.0f}%"
    return f"{got} (pred. {row['kv_tokens_predicted']:,}{err})"


def speed_row(r: FoundRun) -> dict:
    """The run's speed against what evaluator.predict said before it ran (its prediction.json)."""
    from evaluator.predict.choose import against, read_prediction
    return against(r.summary, read_prediction(r.path) if r.path != Path(".") else None)


def rows(runs: list[FoundRun] | list[RunSummary], price_per_gpu_hour: float | None = None) -> list[dict]:
    """One row per run. Cost counts every second the devices were held, in every attempt (paid);
    the engine-only figure (start-up + generation of the last attempt) stands beside it. A serving
    run's throughput is its best level's (named), and its cost per million tokens is per level
    (serving table)."""
    found = _found(runs)
    out = []
    for r in found:
        s, c = r.summary, r.summary.config
        base = baseline_for(r, found) if not s.resumed else None
        speedup = base.summary.generate_s / s.generate_s if base and s.generate_s and c.workload == "offline" else None
        gpus = c.dp * c.tp
        serving = c.workload == "serve"
        peak = peak_level(s) if serving else None
        tok_s = peak["output_tokens_per_s"] if peak else s.output_tokens_per_s
        paid = analysis.gpu_cost(gpus, analysis.paid_s(s.attempts, s.wall_s), 0 if serving else s.completion_tokens,
                                 price_per_gpu_hour)
        engine = analysis.gpu_cost(gpus, s.startup_s + s.generate_s, 0, None)
        out.append({"run_id": s.run_id, "engine": c.engine, "layout": layout_label(s), "workload": c.workload,
                    "deterministic": c.deterministic, "model": Path(c.model).name,
                    "device": c.device, "prompts": s.prompts, "startup_s": s.startup_s, "compile": s.compile,
                    "generate_s": s.generate_s, "total_s": s.wall_s, "speedup": speedup,
                    "output_tok_s": tok_s, "output_tok_s_per_gpu": tok_s / gpus,
                    "peak_level": peak["level"] if peak else None,
                    "strict_acc": s.strict_accuracy, "strict_ci": s.strict_ci,
                    "flexible_acc": s.flexible_accuracy, "flexible_ci": s.flexible_ci,
                    "ignore_eos": c.sampling.ignore_eos, "n": c.sampling.n, "strict_maj_acc": s.strict_maj_accuracy,
                    "flexible_maj_acc": s.flexible_maj_accuracy, "failures": len(s.failures), "resumed": s.resumed,
                    "timed_prompts": s.timed_prompts, "attempts": len(s.attempts) or 1,
                    "gpu_hours": paid.gpu_hours, "gpu_hours_engine": engine.gpu_hours, "cost": paid.cost,
                    "cost_per_mtok": paid.cost_per_million_tokens, **memory_row(s), **speed_row(r)})
    return out


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def compile_mark(state: str | None) -> str:
    """' cold' / ' warm' / ' none' after a start-up time; nothing when the run did not record it."""
    return f" {state}" if state and state != "unknown" else ""


def accuracy_cell(acc: float | None, ci: tuple[float, float] | None) -> str:
    """'0.312 [0.14,0.56]'; '-' where not measured (serving traffic other than GSM8K)."""
    if acc is None:
        return "-"
    return f"{acc:.3f} [{ci[0]:.2f},{ci[1]:.2f}]"


def layout_cell(row: dict) -> str:
    marks = [m for m, on in (("serve", row["workload"] == "serve"), ("eos-off", row["ignore_eos"]),
                             ("deterministic", row.get("deterministic")),
                             (f"resumed: timed {row['timed_prompts']}/{row['prompts']}", row["resumed"]),
                             ("⚠", row["failures"])) if on]
    return " ".join([row["layout"], *marks])


@dataclass(frozen=True)
class Column:
    title: str
    cell: object                      # row -> str
    right: bool = True


def columns(runs_rows: list[dict], price: bool) -> list[Column]:
    from evaluator.predict.choose import speed_cell
    cols = [Column("engine", lambda r: r["engine"], False), Column("layout dp×tp", layout_cell, False),
            Column("device", lambda r: r["device"], False), Column("prompts", lambda r: str(r["prompts"])),
            Column("start-up s", lambda r: f"{r['startup_s']:.1f}" + compile_mark(r["compile"])),
            Column("generate s", lambda r: _f(r["generate_s"], ".1f")), Column("total s", lambda r: _f(r["total_s"], ".1f")),
            Column("speedup", lambda r: _f(r["speedup"], ".2f")),
            Column("out tok/s", lambda r: _f(r["output_tok_s"], ".0f") + (f" @{r['peak_level']}" if r["peak_level"] else "")),
            Column("tok/s/GPU", lambda r: _f(r["output_tok_s_per_gpu"], ".0f")),
            Column("KV tok/replica", kv_cell),
            *([Column("speed (pred., error)", speed_cell)] if any(r.get("speed_predicted") is not None
                                                                  for r in runs_rows) else []),
            Column("peak GiB", lambda r: _f(r["peak_gib"], ".2f")),
            Column("strict acc [95% CI]", lambda r: accuracy_cell(r["strict_acc"], r["strict_ci"])),
            Column("flex acc [95% CI]", lambda r: accuracy_cell(r["flexible_acc"], r["flexible_ci"]))]
    if any(r["strict_maj_acc"] is not None or r["flexible_maj_acc"] is not None for r in runs_rows):
        # maj@K only when some run sampled several answers: pass@1 (strict/flex acc) is always the
        # first answer, so the two sit side by side and show what voting adds
        k = lambda r: f" @{r['n']}" if r["n"] > 1 else ""
        cols += [Column("strict maj@K", lambda r: _f(r["strict_maj_acc"], ".3f") + k(r)),
                 Column("flex maj@K", lambda r: _f(r["flexible_maj_acc"], ".3f") + k(r))]
    if price:
        cols += [Column("GPU-h paid (engine)", lambda r: f"{r['gpu_hours']:.3f} ({r['gpu_hours_engine']:.3f})"
                        + (f" {r['attempts']} attempts" if r["attempts"] > 1 else "")),
                 Column("cost", lambda r: _f(r["cost"], ".2f")),
                 Column("cost/M tok", lambda r: _f(r["cost_per_mtok"], ".2f") if r["workload"] == "offline"
                        else "per level")]
    return cols


NOTE = ("start-up: cold = compiled at start-up, warm = reused its compile cache, none = nothing to compile; "
        "speedup = the single-device run's generate s (same engine, settings and prompts) / this run's; "
        "resumed runs time only their last attempt and get no speedup; serving runs: out tok/s of their best level; "
        "GPU-h paid = devices x every attempt's wall time (engine = start-up + generate of the last attempt); "
        "KV tok/replica: what the engine reported at start-up (pred.: before it started, evaluator.memory); "
        "speed: generate s, or median TPOT at the best level, against evaluator.predict's figure made before "
        "the run (runs of compare --predict only); "
        "peak GiB: the replica's processes at their peak (GPU memory by NVML; resident memory on CPU); "
        "accuracy '-': serving traffic other than GSM8K is not scored.")


def print_table(runs: list[FoundRun] | list[RunSummary], console: Console | None = None, highlight: str | None = None,
                title: str = "Finished runs", price_per_gpu_hour: float | None = None) -> list[dict]:
    console = console or Console()
    table_rows = rows(runs, price_per_gpu_hour)
    t = Table(title=title)
    cols = columns(table_rows, price_per_gpu_hour is not None)
    for col in cols:
        t.add_column(col.title, justify="right" if col.right else "left")
    for row in table_rows:
        t.add_row(*(col.cell(row) for col in cols), style="bold" if row["run_id"] == highlight else None)
    console.print(t)
    console.print(NOTE, style="dim", highlight=False)
    return table_rows


def markdown(table_rows: list[dict], cols: list[Column], title: str) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")
    head = "| " + " | ".join(c.title for c in cols) + " |"
    rule = "|" + "|".join("---:" if c.right else "---" for c in cols) + "|"
    body = ["| " + " | ".join(esc(c.cell(row)) for c in cols) + " |" for row in table_rows]
    return f"## {title}\n\n" + "\n".join([head, rule, *body]) + "\n"


def write_csv(table_rows: list[dict], path: Path) -> None:
    """Raw numbers (not rounded), one row per run or task."""
    fields = list(dict.fromkeys(k for row in table_rows for k in row)) or ["run_id"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table_rows)
