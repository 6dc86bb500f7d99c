"""The comparison report as a document: the run table with accuracy intervals, tokens/s per GPU and
cost; the layouts that were skipped or failed and why; the answers against single (McNemar); the
fastest layout and the break-even counts for batch runs; the goodput sentence for serving runs;
the PNGs. Printed, and written as report.md / report.csv next to the runs, so it can be pasted
into an issue or a wiki. `python -m evaluator.compare` and a SLURM sweep's report both end here.

    python -m evaluator.compare --engines vllm --gpus 2 ...   # writes OUT/report.md
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from evaluator.report import analysis
from evaluator.report.compare import compare, costs_of, pairs_of, write_plot
from evaluator.report.runs import FoundRun, groups, run_label
from evaluator.report.serving import print_levels, sentence, serving_runs, write_tradeoff_plot
from evaluator.report.tables import columns, markdown, print_table, rows, write_csv


def _equivalence_md(found: list[FoundRun]) -> list[str]:
    out = []
    cache: dict = {}
    for group in groups(found):
        for p in pairs_of(group, None, cache):
            eq = p.equivalence
            if eq is None:
                out.append(f"| {run_label(p.run, group)} | {run_label(p.baseline, group)} | - | - | - | {p.problem} |")
                continue
            out.append(f"| {run_label(p.run, group)} | {run_label(p.baseline, group)} | "
                       f"{100 * eq.identical_rate:.1f}% | {100 * eq.agreement_rate:.1f}% | "
                       f"{eq.flexible.difference:+.3f} (p={eq.flexible.p_value:.2g}) | "
                       f"{eq.strict.difference:+.3f} (p={eq.strict.p_value:.2g}) |")
    if not out:
        return []
    return ["## Same answers as single? (exact McNemar test)", "",
            "| layout | baseline | identical output | same answer | Δ flex acc | Δ strict acc |",
            "|---|---|---:|---:|---:|---:|", *out, "",
            "p ≥ 0.05: the accuracy difference can be noise (greedy decoding is not batch-invariant).", ""]


def _timing_md(found: list[FoundRun]) -> list[str]:
    out = []
    for group in groups(found):
        timed = [r for r in group if r.summary.config.workload == "offline" and not r.summary.resumed]
        if not timed:
            continue
        v = analysis.verdict(list(costs_of(timed).values()), timed[0].summary.prompts)
        out.append(v.sentence)
    return (["## Batch: which layout finishes first", "", *out, ""]) if out else []


def write_report(folder: Path, found: list[FoundRun], skipped: list[tuple[str, str]], console: Console,
                 price_per_gpu_hour: float | None = None, title: str = "Layout comparison") -> list[Path]:
    """Print the report and write report.md, report.csv and the PNGs into folder."""
    written = []
    if found:
        table_rows = print_table(found, console, title=title, price_per_gpu_hour=price_per_gpu_hour)
        compare(found, console)
        print_levels(found, console)
    else:
        table_rows = []
        console.print("no layout finished", style="red")
    for label, why in skipped:
        console.print(f"{label}: {why}" if why.startswith("failed") else f"skipped {label}: {why}",
                      markup=False, highlight=False)
    lines = [f"# {title}", ""]
    if found:
        lines += [markdown(table_rows, columns(table_rows, price_per_gpu_hour is not None), "Runs"), ""]
    if skipped:
        lines += ["## Skipped or failed", "", *[f"- {label}: {why}" for label, why in skipped], ""]
    lines += _equivalence_md(found) + _timing_md(found)
    served = serving_runs(found)
    if served:
        lines += ["## Serving", "", sentence(served), ""]
        plot = write_tradeoff_plot(found, folder / "report-serving.png")
        written.append(plot)
        lines += ["![throughput against latency](report-serving.png)", ""]
    if found:
        written.append(write_plot(found, folder / "report.png"))
        lines += ["![start-up + generate per layout, accuracy](report.png)", ""]
    md, csv_path = folder / "report.md", folder / "report.csv"
    md.write_text("\n".join(lines))
    write_csv(rows(found, price_per_gpu_hour) + [{"layout": label, "note": why} for label, why in skipped], csv_path)
    written += [md, csv_path]
    console.print("wrote " + ", ".join(str(p) for p in written if p), markup=False, highlight=False)
    return written
