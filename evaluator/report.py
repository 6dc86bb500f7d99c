"""Compare finished runs: one table row per run (every summary.json under the given folders).

    python -m evaluator.report results/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evaluator.records import RunSummary
from evaluator.store import SUMMARY


def load_runs(*paths: str | Path) -> list[RunSummary]:
    """Every finished run (summary.json) at or below the paths, oldest first."""
    runs = []
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(path.rglob(SUMMARY))
        for f in files:
            try:
                runs.append(RunSummary.from_dict(json.loads(f.read_text())))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                print(f"warning: skipping {f}: {e}", file=sys.stderr)
    return sorted(runs, key=lambda r: (r.started_at, r.run_id))


def workload_key(run: RunSummary) -> tuple:
    """Runs with the same key answered the same prompts with the same model and sampling."""
    c = run.config
    return (c.engine, c.model, c.data, run.prompts, c.sampling, c.device, c.cpu_cores_per_device)


def baseline_for(run: RunSummary, runs: list[RunSummary]) -> RunSummary | None:
    """The latest single-device run of the same engine and workload."""
    singles = [r for r in runs if r.config.dp * r.config.tp == 1 and workload_key(r) == workload_key(run)]
    return singles[-1] if singles else None


def layout_label(run: RunSummary) -> str:
    c = run.config
    label = f"{c.dp}x{c.tp}"
    if c.dp_backend == "native":
        label += " native"
    if c.sharding != "contiguous":
        label += f" {c.sharding}"
    return label


def rows(runs: list[RunSummary]) -> list[dict]:
    out = []
    for r in runs:
        base = baseline_for(r, runs)
        speedup = base.generate_s / r.generate_s if base and r.generate_s else None
        out.append({"run_id": r.run_id, "engine": r.config.engine, "layout": layout_label(r),
                    "device": r.config.device, "prompts": r.prompts, "startup_s": r.startup_s,
                    "generate_s": r.generate_s, "total_s": r.wall_s, "speedup": speedup,
                    "output_tok_s": r.output_tokens_per_s, "strict_acc": r.strict_accuracy,
                    "flexible_acc": r.flexible_accuracy, "ignore_eos": r.config.sampling.ignore_eos,
                    "failures": len(r.failures)})
    return out


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(runs: list[RunSummary], console: Console | None = None, highlight: str | None = None,
                title: str = "Finished runs") -> None:
    console = console or Console()
    t = Table(title=title)
    for name, justify in [("engine", "left"), ("layout dp×tp", "left"), ("device", "left"), ("prompts", "right"),
                          ("start-up s", "right"), ("generate s", "right"), ("total s", "right"),
                          ("speedup", "right"), ("out tok/s", "right"), ("strict acc", "right"),
                          ("flex acc", "right")]:
        t.add_column(name, justify=justify)
    for row in rows(runs):
        layout = row["layout"] + (" eos-off" if row["ignore_eos"] else "") + (" ⚠" if row["failures"] else "")
        t.add_row(row["engine"], layout, row["device"], str(row["prompts"]), _f(row["startup_s"], ".1f"),
                  _f(row["generate_s"], ".1f"), _f(row["total_s"], ".1f"),
                  _f(row["speedup"], ".2f"), _f(row["output_tok_s"], ".0f"),
                  _f(row["strict_acc"], ".3f"), _f(row["flexible_acc"], ".3f"),
                  style="bold" if row["run_id"] == highlight else None)
    console.print(t)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluator.report",
                                description="Print one table over finished runs (every summary.json below PATH).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="results folder(s) or summary.json files")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in args.paths:
        if not Path(path).exists():
            parser.exit(2, f"error: {path} does not exist\n")
    runs = load_runs(*args.paths)
    if not runs:
        parser.exit(2, f"error: no finished run (summary.json) under {', '.join(args.paths)}\n")
    print_table(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
