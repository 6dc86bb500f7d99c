"""The report record (evaluator.report.model) on a terminal, as rich tables: the run table, per set
of runs that answered the same prompts the answers against the baseline and the batch timing, the
serving levels, the verdict sentences and the layouts that did not run.

    python -m evaluator.report results/ --compare
"""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluator.report.model import AnswerGroup, PairEntry, Report, Score
from evaluator.report.serving import LEGEND

EQUIVALENCE_NOTE = ("identical output = same first answer text; same answer = same flexible prediction; "
                    "p = two-sided exact McNemar test on the prompts only one of the two got right "
                    "(p ≥ 0.05: the difference can be noise); a serving run is paired on the prompts both runs "
                    "answered (its levels each sent fresh prompts).")
TIMING_NOTE = ("straggler gap = (slowest - fastest replica generate s) / slowest; "
               "faster than baseline = prompt counts at which the layout beats the baseline in total time "
               "(from N: its extra start-up is repaid there).")
LEVELS_NOTE = LEGEND          # the levels' legend: window, percentile rule, columns


# --- cells shared with the other renderers ------------------------------------------------------
def pct(count: int | None, total: int | None) -> str:
    return f"{100 * count / total:.1f}% ({count}/{total})" if total else "-"


def delta(score: Score | None) -> str:
    return "-" if score is None else f"{score.difference:+.3f} (p={score.p_value:.2g})"


def flip_list(flipped: tuple[int, ...], shown: int = 8) -> str:
    if not flipped:
        return "0"
    idx = [str(i) for i in flipped]
    return f"{len(idx)}: " + ", ".join(idx[:shown]) + (", …" if len(idx) > shown else "")


def pair_cells(p: PairEntry) -> list[str]:
    """identical output, same answer, Δ strict, Δ flex, flipped indices (or the problem)."""
    if p.problem is not None:
        return ["-", "-", "-", "-", p.problem]
    return [pct(p.identical, p.prompts), pct(p.same_answer, p.prompts), delta(p.strict), delta(p.flexible),
            flip_list(p.flipped)]


def run_table_columns(report: Report):
    from evaluator.report.tables import columns
    return columns([r.row for r in report.runs], report.price_per_gpu_hour is not None)


def level_columns(report: Report):
    from evaluator.report.serving import level_columns as cols
    return cols(report.price_per_gpu_hour)


def serving_entries(report: Report):
    return [r for r in report.runs if r.workload == "serve" and r.levels]


# --- sections -----------------------------------------------------------------------------------
def print_runs(report: Report, console: Console, highlight: str | None = None) -> None:
    from evaluator.report.tables import NOTE
    t = Table(title=report.title)
    cols = run_table_columns(report)
    for col in cols:
        t.add_column(col.title, justify="right" if col.right else "left")
    for r in report.runs:
        t.add_row(*(escape(col.cell(r.row)) for col in cols), style="bold" if r.run_id == highlight else None)
    console.print(t)
    console.print(NOTE, style="dim", highlight=False)


def print_equivalence(group: AnswerGroup, console: Console) -> None:
    if not group.pairs:
        console.print(f"({group.note})", style="dim", markup=False)
        return
    t = Table(title=f"Same answers as the baseline? ({group.description})")
    for name, justify in [("run", "left"), ("layout", "left"), ("baseline", "left"), ("identical output", "right"),
                          ("same answer", "right"), ("Δ strict acc (McNemar p)", "right"),
                          ("Δ flex acc (McNemar p)", "right"), ("flipped indices", "left")]:
        t.add_column(name, justify=justify)
    for p in group.pairs:
        t.add_row(*(escape(c) for c in [p.run_id, p.label, p.baseline_id, *pair_cells(p)]))
    console.print(t)
    console.print(EQUIVALENCE_NOTE, style="dim")


def print_timing(report: Report, group: AnswerGroup, console: Console) -> None:
    """Batch timing of the offline runs that timed every prompt (resumed and serving runs are left
    out: their seconds do not describe one batch of these prompts)."""
    if group.left_out:
        console.print(f"(left out of the batch timing: {', '.join(group.left_out)}: resumed or serving runs)",
                      style="dim", markup=False)
    if not group.timing:
        return
    t = Table(title=f"Where the time goes, per replica ({group.description})")
    for name, justify in [("run", "left"), ("layout", "left"), ("replica", "right"), ("devices", "left"),
                          ("prompts", "right"), ("start-up s", "right"), ("generate s", "right"),
                          ("idle after finish s", "right"), ("chunks", "right")]:
        t.add_column(name, justify=justify)
    for row in group.timing:
        replicas = report.run(row.path).replicas
        for i, rep in enumerate(replicas):
            first = i == 0
            t.add_row(escape(row.run_id) if first else "", escape(row.label) if first else "", str(rep["rank"]),
                      escape(rep["devices"]), str(rep["prompts"]), f"{rep['startup_s']:.1f}",
                      f"{rep['generate_s']:.2f}", f"{rep['idle_after_finish_s']:.2f}", str(rep["chunks"]),
                      style="red" if rep["failed"] else None, end_section=i == len(replicas) - 1)
    console.print(t)
    t = Table(title="Per run: time(n) = start-up + n × generate/prompts")
    for name, justify in [("run", "left"), ("layout", "left"), ("start-up s", "right"), ("generate s", "right"),
                          ("s/prompt", "right"), ("straggler gap", "right"), ("baseline", "left"),
                          ("faster than baseline", "right")]:
        t.add_column(name, justify=justify)
    for row in group.timing:
        t.add_row(escape(row.run_id), escape(row.label), f"{row.startup_s:.1f}", f"{row.generate_s:.2f}",
                  f"{row.per_prompt_s:.4f}", f"{100 * row.straggler_gap:.1f}%", escape(row.baseline_id or "-"),
                  row.faster_than_baseline)
    console.print(t)
    console.print(TIMING_NOTE, style="dim")
    timed = set(group.timed)
    for v in report.verdicts:
        if v.source == "batch" and set(v.runs) <= timed:
            console.print(v.sentence, markup=False, highlight=False)


def print_levels(report: Report, console: Console) -> None:
    served = serving_entries(report)
    if not served:
        return
    t = Table(title="Serving: per layout and load level")
    t.add_column("layout", justify="left")
    cols = level_columns(report)
    for name, _ in cols:
        t.add_column(name, justify="left" if name == "level" else "right")
    for r in served:
        for i, level in enumerate(r.levels):
            t.add_row(escape(r.label) if i == 0 else "", *(escape(cell(level)) for _, cell in cols),
                      end_section=i == len(r.levels) - 1)
    console.print(t)
    console.print(LEVELS_NOTE, style="dim", highlight=False)
    for v in report.verdicts:
        if v.source == "serving":
            console.print(v.sentence, highlight=False, markup=False)


def print_other_verdicts(report: Report, console: Console) -> None:
    """Sentences of sources other than the batch timing and the serving levels (each printed there)."""
    for v in report.verdicts:
        if v.source not in ("batch", "serving"):
            console.print(v.sentence, highlight=False, markup=False)


def print_skipped(report: Report, console: Console) -> None:
    for s in report.skipped:
        console.print(f"{s.label}: {s.reason}" if s.failed else f"skipped {s.label}: {s.reason}",
                      markup=False, highlight=False)


def render(report: Report, console: Console, *, answers: bool = True, timing: bool = True,
           levels: bool = True) -> None:
    """The report on the console: the run table always; answers = the equivalence tables, timing = the
    batch timing and its verdicts, levels = the serving table and its sentences."""
    if report.runs:
        print_runs(report, console)
    elif report.skipped:
        console.print("no layout finished", style="red")
    for group in report.answers:
        if answers:
            print_equivalence(group, console)
        if timing:
            print_timing(report, group, console)
    if levels:
        print_levels(report, console)
    if answers or levels:
        print_other_verdicts(report, console)
    print_skipped(report, console)
