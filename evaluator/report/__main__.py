"""python -m evaluator.report: one table over finished runs (every summary.json below the paths);
with --compare the answers no single run gives (equivalence, timing, break-even, serving levels
and the sentence), and the PNGs; with --html the whole report as one self-contained page
(report.html, and the record it was drawn from as report.json). A SLURM sweep folder gets its
merged report (failed and never-run tasks too, report.csv and report.md).

    python -m evaluator.report results/
    python -m evaluator.report results/ --compare --show-flips --plot results/report.png
    python -m evaluator.report results/compare-20260101-120000 --html
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluator.report",
        description="Print one table over finished runs (every summary.json below PATH). --compare adds, for "
                    "runs that answered the same prompts with the same model and sampling: answer equivalence "
                    "against a baseline with a McNemar test, per-replica timing, straggler gap, break-even "
                    "prompt count and which layout is fastest; for serving runs the per-level table and which "
                    "layout gives the most goodput per GPU.",
        epilog="Example: python -m evaluator.report results/ --compare --show-flips (writes results/report.png)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="results folder(s) or summary.json files")
    p.add_argument("--compare", action="store_true",
                   help="pair runs of the same prompts, model and sampling against a baseline: identical-output "
                        "rate, same-answer rate, accuracy difference with exact McNemar p-value, flipped "
                        "indices; includes --timing and the serving levels; writes the PNGs (see --plot)")
    p.add_argument("--baseline", metavar="RUN_ID",
                   help="run id (or run folder) to compare against (default: the latest single-device run of "
                        "the same engine and settings); implies --compare")
    p.add_argument("--show-flips", action="store_true",
                   help="print every flipped prompt: question (from the run's data parquet, left out when it "
                        "is gone), both responses and the gold answer; implies --compare")
    p.add_argument("--timing", action="store_true",
                   help="only the time part of --compare: per replica start-up / generate / idle-after-finish "
                        "seconds, straggler gap, prompt count from which each layout beats the baseline, and "
                        "which layout is fastest at this prompt count")
    p.add_argument("--plot", nargs="?", const="", metavar="PNG",
                   help="write a PNG of start-up + generate seconds (stacked) and strict/flexible accuracy per "
                        "run, and PNG-serving.png for serving runs (default path, also with --compare: "
                        "FIRST_PATH/report.png)")
    p.add_argument("--no-plot", action="store_true", help="no PNG, even with --compare")
    p.add_argument("--html", nargs="?", const="", metavar="HTML",
                   help="write the whole report as one self-contained page (verdict first, the layouts side by "
                        "side, charts as inline SVG, no network needed to open it) and its record as JSON beside "
                        "it (default path: FIRST_PATH/report.html and report.json); a comparison folder's page "
                        "lists its skipped and failed layouts and its command too")
    p.add_argument("--json", metavar="JSON", help="write the report record (every number and sentence the "
                                                   "renderers show) as JSON to this file")
    p.add_argument("--gpu-hour-price", type=float, metavar="PRICE",
                   help="price of one GPU-hour: adds GPU-hours, cost and cost per million output tokens "
                        "(start-up included)")
    return p


def default_plot_path(first: str, name: str = "report.png") -> Path:
    p = Path(first)
    return (p.parent if p.is_file() else p) / name


def main(argv: list[str] | None = None) -> int:
    from evaluator.report import render_console, render_html, sweep
    from evaluator.report.compare import show_flips
    from evaluator.report.document import planned_context, typed_command
    from evaluator.report.build import build_report
    from evaluator.report.model import write_json
    from evaluator.report.plot import runs_png, tradeoff_png
    from evaluator.report.runs import ReportError, find_runs, resolve_baseline
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in args.paths:
        if not Path(path).exists():
            parser.exit(2, f"error: {path} does not exist\n")
    if args.gpu_hour_price is not None and not args.gpu_hour_price >= 0:
        parser.exit(2, f"error: --gpu-hour-price must be 0 or more (got {args.gpu_hour_price})\n")
    html = Path(args.html) if args.html else default_plot_path(args.paths[0], "report.html") \
        if args.html is not None else None
    for out, flag in ((html, "--html"), (Path(args.json) if args.json else None, "--json")):
        if out is not None and out.is_dir():
            parser.exit(2, f"error: {flag} {out} is a folder; give a file name\n")
    if all(sweep.is_sweep_dir(p) for p in args.paths):
        for path in args.paths:
            sweep.report(path)
        if all(v == parser.get_default(k) for k, v in vars(args).items() if k != "paths"):
            return 0
    found = find_runs(*args.paths)
    if not found:
        parser.exit(2, f"error: no finished run (summary.json) under {', '.join(args.paths)}\n")
    try:
        chosen = resolve_baseline(found, args.baseline)
    except ReportError as e:
        parser.exit(2, f"error: {e}\n")
    # piped into a log or a file, rich would wrap every table at 80 columns; COLUMNS still wins
    console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=200)
    planned = planned_context(Path(args.paths[0]), found) if len(args.paths) == 1 and Path(args.paths[0]).is_dir() else {}
    this = typed_command("evaluator.report", sys.argv[1:] if argv is None else argv)
    report = build_report(found, planned.get("skipped", []) if html else [],
                          title=planned.get("title", "Finished runs") if html else "Finished runs",
                          price_per_gpu_hour=args.gpu_hour_price, chosen=chosen, warmups=planned.get("warmups", []),
                          commands=[*planned.get("commands", []), this])
    compare_all = args.compare or args.baseline is not None or args.show_flips
    render_console.render(report, console, answers=compare_all, timing=compare_all or args.timing, levels=compare_all)
    if args.show_flips:
        show_flips(found, console, chosen)
    written = []
    try:
        if (args.plot is not None or compare_all) and not args.no_plot:
            path = Path(args.plot) if args.plot else default_plot_path(args.paths[0])
            written += [runs_png(report, path), tradeoff_png(report, path.with_name(path.stem + "-serving.png"))]
        if html is not None:
            written += [render_html.write(report, html), write_json(report, html.with_suffix(".json"))]
        if args.json:
            written.append(write_json(report, args.json))
    except OSError as e:
        parser.exit(2, f"error: cannot write the report: {e}\n")
    for w in filter(None, written):
        console.print(f"{'plot' if w.suffix == '.png' else 'wrote'}: {w}", markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
