"""The report record (evaluator.report.model) as Markdown, to paste into an issue or a wiki: the
verdict sentences first, the run table with accuracy intervals, the layouts skipped or failed, the
answers against their baselines (McNemar), the batch verdicts, the serving sentences and levels,
and the PNGs. A comparison writes it as report.md.

    python -m evaluator.compare --engines vllm --gpus 2 ...   # writes OUT/report.md
"""
from __future__ import annotations

from evaluator.report.model import Report
from evaluator.report.render_console import run_table_columns, serving_entries


def esc(text: str) -> str:
    return str(text).replace("|", "\\|")


def _verdict(report: Report) -> list[str]:
    heads = [v.sentence for v in report.verdicts if v.headline]
    return ["## Verdict", "", *[f"- {s}" for s in heads], ""] if heads else []


def _runs(report: Report) -> list[str]:
    if not report.runs:
        return []
    cols = run_table_columns(report)
    head = "| " + " | ".join(c.title for c in cols) + " |"
    rule = "|" + "|".join("---:" if c.right else "---" for c in cols) + "|"
    body = ["| " + " | ".join(esc(c.cell(r.row)) for c in cols) + " |" for r in report.runs]
    return ["## Runs", "", head, rule, *body, "", ""]


def _skipped(report: Report) -> list[str]:
    if not report.skipped:
        return []
    return ["## Skipped or failed", "", *[f"- {s.label}: {s.reason}" for s in report.skipped], ""]


def _equivalence(report: Report) -> list[str]:
    out = []
    for group in report.answers:
        for p in group.pairs:
            if p.problem is not None:
                out.append(f"| {esc(p.label)} | {esc(p.baseline_label)} | - | - | - | {esc(p.problem)} |")
                continue
            rate = (lambda n: 100 * n / p.prompts if p.prompts else 100.0)
            out.append(f"| {esc(p.label)} | {esc(p.baseline_label)} | {rate(p.identical):.1f}% | {rate(p.same_answer):.1f}% | "
                       f"{p.flexible.difference:+.3f} (p={p.flexible.p_value:.2g}) | "
                       f"{p.strict.difference:+.3f} (p={p.strict.p_value:.2g}) |")
    if not out:
        return []
    return ["## Same answers as single? (exact McNemar test)", "",
            "| layout | baseline | identical output | same answer | Δ flex acc | Δ strict acc |",
            "|---|---|---:|---:|---:|---:|", *out, "",
            "p ≥ 0.05: the accuracy difference can be noise (greedy decoding is not batch-invariant).", ""]


def _batch(report: Report) -> list[str]:
    out = [v.sentence for v in report.verdicts if v.source == "batch"]
    if not out:
        return []
    note = ([f"Before the timed layouts, one untimed warm-up start each of {', '.join(report.warmups)}, so every "
             f"timed start could reuse its compile cache."] if report.warmups else [])
    return ["## Batch: which layout finishes first", "", *note, *([""] if note else []), *out, ""]


def levels_table(report: Report) -> list[str]:
    """The per-layout, per-level serving table."""
    from evaluator.report.render_console import level_columns
    level_cols = level_columns(report)
    cols = ["layout"] + [name for name, _ in level_cols]
    body = ["| " + " | ".join(esc(c) for c in [r.label if i == 0 else "", *(cell(level) for _, cell in level_cols)]) + " |"
            for r in serving_entries(report) for i, level in enumerate(r.levels)]
    rule = "|" + "|".join("---" if c in ("layout", "level") else "---:" for c in cols) + "|"
    return ["| " + " | ".join(cols) + " |", rule, *body, ""]


def _serving(report: Report, pictures: dict[str, str]) -> list[str]:
    if not serving_entries(report):
        return []
    lines = ["## Serving", "", *[v.sentence for v in report.verdicts if v.source == "serving"], "", *levels_table(report)]
    if "serving" in pictures:
        lines += [f"![throughput against latency]({pictures['serving']})", ""]
    return lines


def _other(report: Report) -> list[str]:
    out = [v.sentence for v in report.verdicts if v.source not in ("batch", "serving")]
    return ["## Which engine (like for like)", "", *out, ""] if out else []


def render(report: Report, pictures: dict[str, str] | None = None) -> str:
    """pictures: {"runs": "report.png", "serving": "report-serving.png"}, the PNGs written beside it."""
    pictures = pictures or {}
    lines = [f"# {report.title}", "", *_verdict(report), *_runs(report), *_skipped(report), *_equivalence(report),
             *_batch(report), *_other(report), *_serving(report, pictures)]
    if "runs" in pictures:
        lines += [f"![start-up + generate per layout, accuracy]({pictures['runs']})", ""]
    return "\n".join(lines)
