"""Merged report of one sweep (launchers.sweep): one table row per task of its sweep.txt,
finished or not, printed and also written as report.csv and report.md in the sweep folder.

A task is ok when its summary.json exists; otherwise its newest log (logs/<job>_<task>.log)
tells why: slurm/sweep.sbatch ends every log with "sweep task ID: exit RC", so a non-zero RC is
a failure (the log's last "error" line says why) and a log without that line was killed or
cancelled before the end. A task with no log never ran.

    python -m evaluator.report results/sweep-20250101-120000
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evaluator.records import RecordError, RunSummary
from evaluator.report.tables import Column, accuracy_cell, compile_mark, markdown, rows as run_rows, write_csv
from launchers.sweepfile import LOGS, SUMMARY, SWEEP_FILE, SweepLine, read_sweep

OK, FAILED, NEVER_RAN = "ok", "failed", "never ran"
LOG_NAME = re.compile(r"^(\d+)_(\d+)\.log$")
EXIT_LINE = re.compile(r"^sweep task (\d+): exit (\d+)\s*$")
# what SLURM itself writes into a job's output when it stops the job
SLURM_STOP = re.compile(r"(CANCELLED|DUE TO TIME LIMIT|DUE TO NODE FAILURE|OUT OF MEMORY|oom-kill)", re.I)


@dataclass(frozen=True)
class TaskStatus:
    task: int
    line: SweepLine
    status: str                       # ok | failed | never ran
    reason: str = ""
    summary: RunSummary | None = None
    log: Path | None = None


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def newest_logs(sweep_dir: Path) -> dict[int, Path]:
    """task -> its log from the latest submission (highest array job id)."""
    best: dict[int, tuple[int, Path]] = {}
    for f in (sweep_dir / LOGS).glob("*.log"):
        m = LOG_NAME.match(f.name)
        if m:
            job, task = int(m.group(1)), int(m.group(2))
            if task not in best or job > best[task][0]:
                best[task] = (job, f)
    return {task: f for task, (_, f) in best.items()}


def _short(text: str, width: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def failure_from_log(log: Path, task: int) -> str | None:
    """Why the task in this log did not finish, or None when the log says it exited 0."""
    lines = log.read_text(errors="replace").splitlines()
    exit_code = None
    for line in lines:
        m = EXIT_LINE.match(line)
        if m and int(m.group(1)) == task:
            exit_code = int(m.group(2))
    if exit_code == 0:
        return None
    stopped = [line for line in lines if SLURM_STOP.search(line) and "slurmstepd" in line]
    errors = [line for line in lines if line.lstrip().lower().startswith(("error", "traceback"))
              or re.match(r"^\w*(Error|Exception)\b", line.strip())]
    detail = stopped[-1] if stopped else errors[-1] if errors else next(
        (line for line in reversed(lines) if line.strip() and not EXIT_LINE.match(line)), "")
    if exit_code is None:
        head = "killed or cancelled before the end (no exit line)"
    else:
        head = f"exit {exit_code}"
    return _short(f"{head}: {detail.strip()}" if detail.strip() else head)


def task_statuses(sweep_dir: str | Path) -> list[TaskStatus]:
    sweep_dir = Path(sweep_dir)
    logs = newest_logs(sweep_dir)
    out = []
    for line in read_sweep(sweep_dir):
        summary_file = sweep_dir / str(line.task) / SUMMARY
        log = logs.get(line.task)
        if summary_file.is_file():
            try:
                summary = RunSummary.from_dict(json.loads(summary_file.read_text()))
            except (json.JSONDecodeError, KeyError, TypeError, RecordError) as e:
                out.append(TaskStatus(line.task, line, FAILED, _short(f"unreadable {SUMMARY}: {e}"), log=log))
                continue
            note = f"{len(summary.failures)} replica failure(s)" if summary.failures else ""
            out.append(TaskStatus(line.task, line, OK, note, summary, log))
        elif log is None:
            out.append(TaskStatus(line.task, line, NEVER_RAN, "no log and no summary.json"))
        else:
            reason = failure_from_log(log, line.task) or f"exited 0 but wrote no {SUMMARY}"
            out.append(TaskStatus(line.task, line, FAILED, reason, log=log))
    return out


def _planned_layout(line: SweepLine) -> str:
    return line.layout.label


def table_rows(statuses: list[TaskStatus]) -> list[dict]:
    """One dict per task; finished tasks carry the same numbers as evaluator.report's table
    (speedup against the sweep's own single-device run of the same workload)."""
    runs = [s.summary for s in statuses if s.summary]
    metrics = {row["run_id"]: row for row in run_rows(runs)}
    out = []
    for s in statuses:
        row = {"task": s.task, "status": s.status, "engine": s.line.engine, "layout": _planned_layout(s.line),
               "device": s.line.flag("--device"), "prompts": None, "startup_s": None, "compile": None,
               "generate_s": None, "total_s": None, "speedup": None, "output_tok_s": None,
               "output_tok_s_per_gpu": None, "strict_acc": None, "strict_ci": None, "flexible_acc": None,
               "flexible_ci": None, "note": s.reason, "log": str(s.log) if s.log else ""}
        if s.summary:
            m = metrics[s.summary.run_id]
            row.update({k: m[k] for k in row if k in m and k not in ("engine",)})
            if m["resumed"]:
                row["note"] = " ".join(filter(None, [row["note"], f"resumed: timed {m['timed_prompts']}/{m['prompts']}"]))
        out.append(row)
    return out


def _cell(value, fmt: str = "") -> str:
    if value is None or value == "":
        return "-"
    return format(value, fmt) if fmt else str(value)


COLUMNS = [Column("task", lambda r: _cell(r["task"])), Column("status", lambda r: r["status"], False),
           Column("engine", lambda r: r["engine"], False), Column("layout dp×tp", lambda r: r["layout"], False),
           Column("device", lambda r: _cell(r["device"]), False), Column("prompts", lambda r: _cell(r["prompts"])),
           Column("start-up s", lambda r: _cell(r["startup_s"], ".1f") + compile_mark(r["compile"])),
           Column("generate s", lambda r: _cell(r["generate_s"], ".1f")),
           Column("total s", lambda r: _cell(r["total_s"], ".1f")), Column("speedup", lambda r: _cell(r["speedup"], ".2f")),
           Column("out tok/s", lambda r: _cell(r["output_tok_s"], ".0f")),
           Column("tok/s/GPU", lambda r: _cell(r["output_tok_s_per_gpu"], ".0f")),
           Column("strict acc", lambda r: accuracy_cell(r["strict_acc"], r["strict_ci"]) if r["strict_ci"] else "-"),
           Column("flex acc", lambda r: accuracy_cell(r["flexible_acc"], r["flexible_ci"]) if r["flexible_ci"] else "-"),
           Column("note", lambda r: _cell(r["note"]), False)]


def print_table(rows: list[dict], console: Console, title: str) -> None:
    t = Table(title=title)
    for col in COLUMNS:
        t.add_column(col.title, justify="right" if col.right else "left", overflow="fold")
    styles = {OK: None, FAILED: "red", NEVER_RAN: "yellow"}
    for row in rows:
        t.add_row(*(col.cell(row) for col in COLUMNS), style=styles[row["status"]])
    console.print(t)


def report(sweep_dir: str | Path, console: Console | None = None) -> list[dict]:
    """Print the merged table and write report.csv / report.md next to the results."""
    sweep_dir = Path(sweep_dir)
    # piped into a log, rich would wrap the table at 80 columns; COLUMNS still wins
    if console is None:
        console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=200)
    rows = table_rows(task_statuses(sweep_dir))
    done = sum(r["status"] == OK for r in rows)
    title = f"Sweep {sweep_dir.name}: {done}/{len(rows)} task(s) finished"
    print_table(rows, console, title)
    write_csv(rows, sweep_dir / "report.csv")
    (sweep_dir / "report.md").write_text(markdown(rows, COLUMNS, title))
    console.print(f"wrote {sweep_dir / 'report.csv'} and {sweep_dir / 'report.md'}")
    return rows
