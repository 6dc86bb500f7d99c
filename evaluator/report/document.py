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
from evaluator.report.runs import FoundRun, describe_speed_group, groups, run_label, speed_groups
from evaluator.report.serving import level_columns, level_rows, print_levels, sentences, serving_runs, write_tradeoff_plot
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


def verdicts(found: list[FoundRun]) -> list[str]:
    """One sentence per set of offline runs that measured the same thing the same way: one speed
    key (engine, settings, device, environment, prompts) and one start state. Resumed runs time
    part of their prompts and are left out."""
    timed = [r for r in found if r.summary.config.workload == "offline" and not r.summary.resumed]
    return [analysis.verdict(list(costs_of(g).values()), g[0].summary.prompts, describe_speed_group(g)).sentence
            for g in speed_groups(timed)]


def _timing_md(found: list[FoundRun], warmups: list[str]) -> list[str]:
    out = verdicts(found)
    if not out:
        return []
    note = ([f"Before the timed layouts, one untimed warm-up start each of {', '.join(warmups)}, so every timed start "
             f"could reuse its compile cache."] if warmups else [])
    return ["## Batch: which layout finishes first", "", *note, *([""] if note else []), *out, ""]


def levels_md(found: list[FoundRun], price_per_gpu_hour: float | None) -> list[str]:
    """The per-layout, per-level serving table as Markdown."""
    cols = ["layout"] + [name for name, _ in level_columns(price_per_gpu_hour)]
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in [label, *cells]) + " |"
            for label, cells in level_rows(found, price_per_gpu_hour)]
    rule = "|" + "|".join("---" if c in ("layout", "level") else "---:" for c in cols) + "|"
    return ["| " + " | ".join(cols) + " |", rule, *body, ""]


def write_report(folder: Path, found: list[FoundRun], skipped: list[tuple[str, str]], console: Console,
                 price_per_gpu_hour: float | None = None, title: str = "Layout comparison",
                 warmups: list[str] = ()) -> list[Path]:
    """Print the report and write report.md, report.csv and the PNGs into folder."""
    written = []
    if found:
        table_rows = print_table(found, console, title=title, price_per_gpu_hour=price_per_gpu_hour)
        compare(found, console)
        print_levels(found, console, price_per_gpu_hour)
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
    lines += _equivalence_md(found) + _timing_md(found, list(warmups))
    from evaluator.report.engines import sentences as engine_sentences
    across = engine_sentences(found)
    lines += ["## Which engine (like for like)", "", *across, ""] if across else []
    served = serving_runs(found)
    if served:
        lines += ["## Serving", "", *sentences(served, price_per_gpu_hour), "", *levels_md(found, price_per_gpu_hour)]
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
