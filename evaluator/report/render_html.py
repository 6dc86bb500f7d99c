"""The report record (evaluator.report.model) as one self-contained page, report.html: no network,
no script, no font or chart library to fetch (an air-gapped cluster opens it as it is), charts as
inline SVG (evaluator.report.svg). Verdict first (which layout, which engine, for which workload,
traffic and SLO, with its interval), then the layouts side by side (the skipped and failed ones
with the reason), the charts (throughput per GPU against tokens/s per user, capacity at the SLO,
accuracy with Wilson intervals and McNemar, KV cache predicted against reported, start-up and
generate, GPU-hours and cost), the tables in full, and the command and environment at the bottom.
Every text goes through Jinja2's autoescape.

    python -m evaluator.report results/compare-20260101-120000 --compare --html
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from evaluator.report import svg
from evaluator.report.model import PairEntry, Report, RunEntry, Verdict
from evaluator.report.render_console import (EQUIVALENCE_NOTE, LEVELS_NOTE, TIMING_NOTE, level_columns, pair_cells,
                                             run_table_columns, serving_entries)

TEMPLATES = Path(__file__).with_name("templates")
P_NOISE = 0.05


# --- what the page says, as plain values for the template --------------------------------------
def _acc(value: float | None, ci) -> str:
    return "-" if value is None else f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _layout_words(e: RunEntry) -> str:
    dp, tp = (int(x) for x in e.layout.split()[0].split("x"))
    native = " (the engine's own data parallelism)" if "native" in e.layout else ""
    if dp * tp == 1:
        how = "one device"
    elif tp == 1:
        how = f"{dp} replicas of one device each{native}"
    elif dp == 1:
        how = f"one engine over {tp} devices (tensor parallel)"
    else:
        how = f"{dp} replicas, each one engine over {tp} devices{native}"
    return f"dp={dp} × tp={tp}: {how}"


def _capacity_text(e: RunEntry) -> str:
    c = e.capacity
    if not c:
        return ""
    if c.get("rate") is None:
        return f"holds none of the rates tried (lowest {c['lowest_failed']:g} req/s)"
    if c.get("ci_low") is not None and c.get("ci_high") is not None:
        interval = f"95% CI {c['ci_low']:.3g}–{c['ci_high']:.3g}"
    else:
        top = f"{c['lowest_failed']:g}" if c.get("lowest_failed") is not None else "not reached"
        interval = f"bracket {c['rate']:g}–{top}"
    return (f"{c['rate']:g} req/s ({c['rate'] / e.gpus:.3g} per GPU, {interval}"
            + ("" if c.get("converged") else ", not converged") + ")")


def _pair_of(report: Report, path: str) -> PairEntry | None:
    """The run's first pair: against its layout baseline (same engine and settings), else against the
    reference engine, else (a serving run) against its offline twin, as compare.pairs_of lists them."""
    return next((p for g in report.answers for p in g.pairs if p.path == path and p.problem is None), None)


def _mcnemar_text(p: PairEntry | None) -> str:
    if p is None:
        return ""
    f = p.flexible
    verdict = "can be noise" if f.p_value >= P_NOISE else "a real difference"
    same = f"; {100 * p.identical / p.prompts:.0f}% identical texts" if p.prompts else ""
    return (f"answers against {p.baseline_label}: Δ flexible accuracy {f.difference:+.3f}, McNemar p = "
            f"{f.p_value:.2g} ({verdict}){same}")


@dataclass(frozen=True)
class Card:
    workload: str
    winner: str | None                # label
    engine: str
    layout: str
    facts: tuple[tuple[str, str], ...]
    sentence: str
    details: tuple[str, ...]


def cards(report: Report) -> list[Card]:
    """One card per headline verdict, with the supporting sentences of the same runs under it."""
    out = []
    for i, v in enumerate(report.verdicts):
        if not v.headline:
            continue
        details = []
        for w in report.verdicts[i + 1:]:
            if w.headline:
                break
            details.append(w.sentence)
        out.append(_card(report, v, tuple(details)))
    return out


def _card(report: Report, v: Verdict, details: tuple[str, ...]) -> Card:
    e = report.run(v.winner) if v.winner else None
    workload = {"offline": "Offline batch", "serve": "Serving"}.get(v.workload, v.workload.capitalize())
    if v.source == "engines":
        workload = f"Which engine: {workload.lower()}"
    if e is None:
        return Card(workload, None, "", "", (), v.sentence, details)
    if e.workload == "offline":
        facts = [("workload", "offline batch: every prompt at once"), ("prompts", e.traffic), ("on", e.scope)]
    else:
        facts = [("workload", "serving under load levels"), ("traffic", e.traffic),
                 ("SLO", e.slo or "none given (ranked by output tokens/s per GPU)"), ("on", e.scope)]
    if e.capacity:
        facts.append(("capacity at SLO", _capacity_text(e)))
    if e.row["flexible_acc"] is not None:
        facts.append(("accuracy (95% Wilson)", f"flexible {_acc(e.row['flexible_acc'], e.row['flexible_ci'])}, "
                                               f"strict {_acc(e.row['strict_acc'], e.row['strict_ci'])}"))
    pair = _pair_of(report, e.path)
    if pair:
        facts.append(("McNemar", _mcnemar_text(pair)))
    return Card(workload, e.label, e.engine, _layout_words(e), tuple(facts), v.sentence, details)


@dataclass(frozen=True)
class LayoutRow:
    label: str
    status: str                       # ran | skipped | failed
    reason: str
    cells: tuple[str, ...]            # one per LAYOUT_COLUMNS after the label (empty: did not run)
    best: bool


def shown_columns(rows: list[LayoutRow]) -> list[int]:
    """Indices of the columns after the label that say something: a column that is "-" for every
    layout (no capacity search, no price, nothing paired) is left out."""
    ran = [r for r in rows if r.cells]
    return [i for i in range(len(LAYOUT_COLUMNS) - 1) if any(r.cells[i] != "-" for r in ran)] if ran else []


# the layouts table's columns, one row per layout (engine and workload are in its label): (title, CSS
# class of its cells: num = right-aligned, wrap = long text that may wrap, so the table fits the page)
LAYOUT_COLUMNS = (("layout", "label"), ("start-up s", "num"), ("generate s", "num"), ("tok/s/GPU", "num"),
                  ("capacity at SLO", "wrap"), ("flexible acc [95% CI]", ""), ("strict acc [95% CI]", ""),
                  ("vs baseline (McNemar)", "wrap"), ("KV tokens/replica (predicted)", "num"), ("peak GiB", "num"),
                  ("GPU-h paid", "num"), ("cost/M tok", "num"))


def layout_rows(report: Report) -> list[LayoutRow]:
    from evaluator.report.tables import compile_mark
    winners = {v.winner for v in report.verdicts if v.headline and v.winner}
    baselines = {p.baseline_path for g in report.answers for p in g.pairs}
    out = []
    for e in report.runs:
        r = e.row
        p = _pair_of(report, e.path)
        vs = ("baseline" if e.path in baselines else "-") if p is None else (
            f"{p.flexible.difference:+.3f} (p={p.flexible.p_value:.2g}) vs {p.baseline_label}")
        tok = "-" if r["output_tok_s_per_gpu"] is None else (
            f"{r['output_tok_s_per_gpu']:,.0f}" + (f" @{r['peak_level']}" if r["peak_level"] else ""))
        cost = ("per level" if e.workload == "serve" and report.price_per_gpu_hour is not None else
                "-" if r["cost_per_mtok"] is None else f"{r['cost_per_mtok']:.2f}")
        gen = "-" if r["generate_s"] is None else f"{r['generate_s']:.1f}"
        cells = (f"{r['startup_s']:.1f}" + compile_mark(r["compile"]), gen, tok, _capacity_text(e) or "-",
                 _acc(r["flexible_acc"], r["flexible_ci"]), _acc(r["strict_acc"], r["strict_ci"]), vs,
                 _kv_text(r["kv_tokens"], r["kv_tokens_predicted"], both=True),
                 "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}", f"{r['gpu_hours']:.3f}", cost)
        out.append(LayoutRow(e.label, "ran" + (" (resumed)" if r["resumed"] else "")
                             + (f", {r['failures']} replica failure(s)" if r["failures"] else ""), "", cells,
                             e.path in winners))
    for s in report.skipped:
        out.append(LayoutRow(s.label, "failed" if s.failed else "skipped", s.reason, (), False))
    return out


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    caption: str
    svg: Markup
    legend: tuple[tuple[str, str, str], ...] = ()   # (label, colour, dash)


def charts(report: Report) -> list[Chart]:
    f = report.figures
    out = []
    if f.tradeoff:
        series = [svg.Line(c.label, tuple(
            svg.Point(p.tokens_per_s_per_user, p.output_tokens_per_s_per_gpu,
                      f"{c.label} at {p.level}: {svg.num(p.output_tokens_per_s_per_gpu)} tok/s per GPU, "
                      f"{svg.num(p.tokens_per_s_per_user)} tok/s per user"
                      + (f", TTFT p50 {p.ttft_ms_p50:.0f} ms" if p.ttft_ms_p50 is not None else "")
                      + (f", goodput {p.goodput_rps:.2f} req/s" if p.goodput_rps is not None else ""), p.level)
            for p in c.points if p.tokens_per_s_per_user is not None and p.output_tokens_per_s_per_gpu is not None))
            for c in f.tradeoff]
        out.append(Chart("tradeoff", "Throughput per GPU against speed per user",
                         "One line per serving layout through its load levels; up and to the right is better, and "
                         "where lines cross the better layout changes with the load. Hover a point for its level.",
                         Markup(svg.lines(series, "tokens/s per user (mean 1 / TPOT)", "output tokens/s per GPU")),
                         tuple((c.label, svg.color(i), svg.dash(i)) for i, c in enumerate(f.tradeoff))))
    if f.capacity:
        rows = [svg.BarRow(b.label, (svg.Segment(b.per_gpu or 0.0, svg.color(0),
                                                 f"{b.label}: {svg.num(b.rate)} req/s held, {svg.num(b.per_gpu)} per GPU"),),
                           b.low, b.high, "none held" if b.rate is None else f"{svg.num(b.per_gpu)}/GPU",
                           f"{b.label}: {b.interval} {svg.num(b.low)}–{svg.num(b.high) if b.high is not None else '>'} "
                           f"req/s per GPU" + ("" if b.converged else " (not converged)"))
                for b in f.capacity]
        out.append(Chart("capacity", "Capacity at the SLO, per GPU",
                         "The highest request rate each layout held within the SLOs, divided by its devices; the "
                         "whisker is its interval (the search's bracket: held .. first missed, or a confidence "
                         "interval where one was measured).", Markup(svg.hbars(rows, "requests/s per GPU"))))
    acc = [a for a in f.accuracy if a.flexible is not None or a.strict is not None]
    if acc:
        rows = []
        for a in acc:
            marks = []
            if a.flexible is not None:
                marks.append(svg.Interval(a.flexible, *a.flexible_ci, svg.color(0), "circle",
                                          f"{a.label}: flexible {_acc(a.flexible, a.flexible_ci)}"))
            if a.strict is not None:
                marks.append(svg.Interval(a.strict, *a.strict_ci, svg.color(2), "diamond",
                                          f"{a.label}: strict {_acc(a.strict, a.strict_ci)}"))
            rows.append((a.label, marks))
        out.append(Chart("accuracy", "Accuracy with 95% Wilson intervals",
                         "Flexible (last number) and strict (#### answer) accuracy per layout; overlapping "
                         "intervals say little, the paired McNemar test below says whether a difference is real.",
                         Markup(svg.intervals(rows, "accuracy", legend=[("flexible", svg.color(0)),
                                                                         ("strict", svg.color(2))]))))
    if f.kv:
        rows = [svg.BarRow(k.label, tuple(s for s in (
            svg.Segment(k.reported_tokens, svg.color(0), f"{k.label}: {k.reported_tokens:,} tokens reported")
            if k.reported_tokens is not None else None,) if s), text=_kv_text(k.reported_tokens, k.predicted_tokens),
            low=k.predicted_tokens, high=k.predicted_tokens,
            note=f"{k.label}: predicted {k.predicted_tokens if k.predicted_tokens is None else f'{k.predicted_tokens:,}'}"
                 f", reported {k.reported_tokens if k.reported_tokens is None else f'{k.reported_tokens:,}'}")
            for k in f.kv]
        out.append(Chart("kv", "KV cache per replica: reported against predicted",
                         "Bars: the KV-cache tokens each engine reported at start-up; tick: what evaluator.memory "
                         "predicted before it started.", Markup(svg.hbars(rows, "KV-cache tokens per replica",
                                                                          legend=[("reported", svg.color(0))]))))
    if f.time:
        rows = [svg.BarRow(t.label, (svg.Segment(t.startup_s, svg.color(3), f"{t.label}: start-up {t.startup_s:.1f} s"),
                                     svg.Segment(t.generate_s, svg.color(0), f"{t.label}: generate {t.generate_s:.1f} s")),
                           text=f"{t.startup_s:.1f} + {t.generate_s:.1f} s") for t in f.time]
        out.append(Chart("time", "Start-up and generate",
                         "What a user waits for: the slowest replica's start-up, then its generate phase (a serving "
                         "run: all its load levels).", Markup(svg.hbars(rows, "seconds", legend=[
                             ("start-up", svg.color(3)), ("generate", svg.color(0))]))))
    if f.cost:
        priced = report.price_per_gpu_hour is not None
        rows = [svg.BarRow(c.label, (svg.Segment(c.gpu_hours_engine, svg.color(0),
                                                 f"{c.label}: engine {c.gpu_hours_engine:.3f} GPU-h"),
                                     svg.Segment(max(0.0, c.gpu_hours - c.gpu_hours_engine), svg.color(9),
                                                 f"{c.label}: paid {c.gpu_hours:.3f} GPU-h in all")),
                           text=f"{c.gpu_hours:.3f} GPU-h" + (f", {c.cost:.2f}" if priced and c.cost is not None else ""))
                for c in f.cost]
        out.append(Chart("cost", "GPU-hours paid" + (f" at {report.price_per_gpu_hour:g} per GPU-hour" if priced else ""),
                         "Devices × every attempt's wall time (Ray's start, scoring, shutdown included); the darker "
                         "part is the engine's own start-up + generate." + ("" if priced else
                                                                            " Give --gpu-hour-price for money."),
                         Markup(svg.hbars(rows, "GPU-hours", legend=[("engine", svg.color(0)),
                                                                      ("rest of the paid time", svg.color(9))]))))
    return out


def _kv_text(got: int | None, pred: int | None, both: bool = False) -> str:
    """"11.1M (-2%)": reported, and how far the prediction was off; both: "11.1M (10.8M, -2%)"."""
    if got is None or pred is None:
        return "-" if got is None and pred is None else svg.num(got) if pred is None else f"- ({svg.num(pred)})"
    off = f"{100 * (pred - got) / got:+.0f}%"
    return f"{svg.num(got)} ({svg.num(pred)}, {off})" if both else f"{svg.num(got)} ({off})"


@dataclass(frozen=True)
class HtmlTable:
    title: str
    head: tuple[str, ...]
    right: tuple[bool, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


def tables(report: Report) -> list[HtmlTable]:
    """The console's tables, in full, for whoever wants every column."""
    out = []
    if report.runs:
        cols = run_table_columns(report)
        from evaluator.report.tables import NOTE
        out.append(HtmlTable("Runs", tuple(c.title for c in cols), tuple(c.right for c in cols),
                             tuple(tuple(c.cell(r.row) for c in cols) for r in report.runs), NOTE))
    for g in report.answers:
        if g.pairs:
            out.append(HtmlTable(f"Same answers as the baseline? ({g.description})",
                                 ("run", "layout", "baseline", "identical output", "same answer",
                                  "Δ strict acc (McNemar p)", "Δ flex acc (McNemar p)", "flipped indices"),
                                 (False, False, False, True, True, True, True, False),
                                 tuple((p.run_id, p.label, p.baseline_id, *pair_cells(p)) for p in g.pairs),
                                 EQUIVALENCE_NOTE))
        if g.timing:
            out.append(HtmlTable(f"Batch timing: time(n) = start-up + n × generate/prompts ({g.description})",
                                 ("run", "layout", "start-up s", "generate s", "s/prompt", "straggler gap", "baseline",
                                  "faster than baseline"), (False, False, True, True, True, True, False, True),
                                 tuple((t.run_id, t.label, f"{t.startup_s:.1f}", f"{t.generate_s:.2f}",
                                        f"{t.per_prompt_s:.4f}", f"{100 * t.straggler_gap:.1f}%", t.baseline_id or "-",
                                        t.faster_than_baseline) for t in g.timing), TIMING_NOTE))
    served = serving_entries(report)
    if served:
        cols = level_columns(report)
        out.append(HtmlTable("Serving: per layout and load level", ("layout", *(n for n, _ in cols)),
                             (False, *(n != "level" for n, _ in cols)),
                             tuple((r.label if i == 0 else "", *(cell(l) for _, cell in cols))
                                   for r in served for i, l in enumerate(r.levels)), LEVELS_NOTE))
    return out


def render(report: Report) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    counts = {"ran": len(report.runs), "skipped": sum(not s.failed for s in report.skipped),
              "failed": sum(s.failed for s in report.skipped)}
    layouts = layout_rows(report)
    return env.get_template("report.html.j2").render(
        report=report, cards=cards(report), layouts=layouts, layout_columns=LAYOUT_COLUMNS,
        shown=shown_columns(layouts),
        charts=charts(report), tables=tables(report), counts=counts,
        other=[v.sentence for v in report.verdicts if not v.headline and v.source not in ("serving",)])


def write(report: Report, path: str | Path) -> Path:
    from evaluator.report.model import write_text
    # ASCII with character references: the page reads the same whatever the locale that wrote it
    return write_text(path, render(report).encode("ascii", "xmlcharrefreplace").decode("ascii"))
