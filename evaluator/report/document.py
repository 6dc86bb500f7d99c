"""The comparison report as files: the record (evaluator.report.model) built once from the finished
runs and the planned layouts that did not finish, printed (render_console) and written next to the
runs as report.md (render_markdown), report.html (render_html, one self-contained page), report.json
(the record itself), report.csv (raw numbers) and the PNGs. `python -m evaluator.compare` ends here.

    python -m evaluator.compare --engines vllm --gpus 2 ...   # writes OUT/report.html, report.md, ...
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from evaluator.report import render_console, render_html, render_markdown
from evaluator.report.build import build_report
from evaluator.report.model import Report, write_json
from evaluator.report.plot import runs_png, tradeoff_png
from evaluator.report.runs import FoundRun
from evaluator.report.tables import write_csv


def write_files(folder: Path, report: Report) -> list[Path]:
    """report.md, report.csv, report.json, report.html and the PNGs, from the record alone."""
    written, pictures = [], {}
    serving = tradeoff_png(report, folder / "report-serving.png")
    if serving:
        written.append(serving)
        pictures["serving"] = serving.name
    if report.runs:
        written.append(runs_png(report, folder / "report.png"))
        pictures["runs"] = "report.png"
    md, csv_path = folder / "report.md", folder / "report.csv"
    md.write_text(render_markdown.render(report, pictures), encoding="utf-8")
    write_csv([r.row for r in report.runs] + [{"layout": s.label, "note": s.reason} for s in report.skipped], csv_path)
    written += [md, csv_path, write_json(report, folder / "report.json"),
                render_html.write(report, folder / "report.html")]
    return written


def write_report(folder: Path, found: list[FoundRun], skipped: list[tuple[str, str]], console: Console,
                 price_per_gpu_hour: float | None = None, title: str = "Layout comparison",
                 warmups: list[str] = (), commands: list[str] = ()) -> list[Path]:
    """Print the report and write its files into folder; the last line printed names them."""
    report = build_report(found, skipped, title=title, price_per_gpu_hour=price_per_gpu_hour, warmups=list(warmups),
                          commands=list(commands))
    render_console.render(report, console)
    written = write_files(folder, report)
    console.print("wrote " + ", ".join(str(p) for p in written), markup=False, highlight=False)
    return written


def typed_command(module: str, argv: list[str], passthrough: list[str] = ()) -> str:
    """"python -m MODULE ARGV -- PASSTHROUGH", quoted so it can be pasted into a shell."""
    import shlex
    return f"python -m {module} " + shlex.join(argv) + (" -- " + shlex.join(passthrough) if passthrough else "")


def plan_command(folder: Path) -> str | None:
    """The command that started the comparison in folder, from its saved plan (compare.json)."""
    import json
    try:
        saved = json.loads((folder / "compare.json").read_text())
    except (OSError, ValueError):
        return None
    return typed_command("evaluator.compare", saved.get("argv") or [], saved.get("passthrough") or [])


def planned_context(folder: Path, found: list[FoundRun]) -> dict:
    """For `evaluator.report FOLDER` over a comparison folder: its title, the layouts it skipped (with
    the reason saved in its plan) or that have no finished run, its command and warm-ups, so the page
    matches the one the comparison wrote. {} for any other folder."""
    import json
    try:
        saved = json.loads((folder / "compare.json").read_text())
    except (OSError, ValueError):
        return {}
    argv = saved.get("argv") or []

    def flag(name: str, default: str) -> str:
        return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else default
    finished = {r.path.resolve() for r in found}
    skipped = []
    for p in saved.get("layouts") or []:
        if p.get("skipped"):
            skipped.append((p["label"], p["skipped"]))
        elif (folder / p["run_id"]).resolve() not in finished:
            skipped.append((p["label"], f"failed: no finished run in {folder / p['run_id']} (run the comparison "
                                        f"again with --resume {folder})"))
    warm = folder / ".warmup"
    warmups = sorted(p.name.removeprefix("warmup-") for p in warm.iterdir() if (p / "summary.json").is_file()) \
        if warm.is_dir() else []
    return {"title": f"Layout comparison: {flag('--engines', 'vllm')} on {flag('--gpus', '2')} device(s)".replace(",", ", "),
            "skipped": skipped, "commands": [c for c in [plan_command(folder)] if c], "warmups": warmups}
