"""python -m evaluator.compare: one command, one machine, one answer. Every valid layout of the
given engines for a GPU count (single, dp=N, tp=N, each hybrid, the engines' native DP), run one
after another on this host, each as an ordinary run folder under one comparison folder, then one
report (evaluator.report.document) with accuracy intervals, McNemar against single, the fastest
layout and break-even counts, the serving sentence, tokens/s per GPU and, with a price, cost.

Layouts that cannot run here are listed as skipped with the reason the run's own checks give
(tp does not divide the heads, the weights do not fit, engine not installed...). Finished layouts
are skipped, interrupted ones resumed: run the same command again (or --resume DIR) after a kill.

    python -m evaluator.compare --engines vllm --gpus 2 --model models/qwen2.5-coder-0.5b-instruct \
        --data data/gsm8k_test.parquet -- --limit 64 --max-tokens 256
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from evaluator.layout import MODES, Candidate, candidates
from launchers.engines.base import ENGINES

PLAN = "compare.json"


@dataclass(frozen=True)
class Planned:
    candidate: Candidate
    workload: str
    run_id: str
    argv: tuple[str, ...]             # the evaluator's flags for this layout
    skipped: str | None = None        # why it cannot run here

    @property
    def label(self) -> str:
        return self.candidate.label + (" serve" if self.workload == "serve" else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluator.compare",
        description="Run every valid layout of the engines for --gpus devices on this host, one after another, "
                    "and end with one report (report.md, report.csv, PNGs) in the comparison folder. Everything "
                    "after -- goes to every run (python -m evaluator --help lists the flags).",
        epilog="Example: python -m evaluator.compare --engines vllm,sglang --gpus 4 --model M --data D "
               "--workload both -- --limit 256 --concurrency 1,16,64. After a kill, run it again with "
               "--resume OUT: finished layouts are kept, the interrupted one is resumed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engines", default="vllm", help="comma-separated engines, e.g. vllm,sglang")
    p.add_argument("--gpus", type=int, default=2, help="devices every layout uses (single uses 1)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to include (hybrid = every "
                                                              "dp x tp split with both above 1)")
    p.add_argument("--no-native", action="store_true", help="leave out the engines' own data parallelism")
    p.add_argument("--workload", choices=("offline", "serve", "both"), default="offline",
                   help="offline batch, serving under load levels, or both for every layout")
    p.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct", help="local model folder or hub id")
    p.add_argument("--data", default="data/gsm8k_test.parquet", help="parquet made by python -m datasets_prep gsm8k")
    p.add_argument("--out", help="the comparison folder (default: results/compare-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue a comparison folder with its own plan")
    p.add_argument("--gpu-hour-price", type=float, metavar="PRICE",
                   help="price of one GPU-hour: GPU-hours, cost and cost per million output tokens per layout")
    p.add_argument("--dry-run", action="store_true", help="list the layouts (and the skipped ones) and stop")
    return p


def plan(engines: list[str], gpus: int, modes: tuple[str, ...], native: bool, workloads: list[str],
         model: str, data: str, out: Path, passthrough: list[str]) -> list[Planned]:
    """Every candidate layout, each checked by the run's own pre-flight (evaluator.cli)."""
    from evaluator.cli import build_parser as evaluator_parser, config_from_args
    from evaluator.errors import UsageError
    out_list = []
    for workload in workloads:
        for c in candidates(engines, gpus, workload, modes, native):
            run_id = c.name + ("-serve" if workload == "serve" else "")
            argv = (*c.argv(), "--model", model, "--data", data, "--workload", workload, *passthrough,
                    "--output-dir", str(out), "--run-id", run_id, "--no-table")
            try:
                config_from_args(evaluator_parser().parse_args(list(argv)))
                skipped = None
            except UsageError as e:
                skipped = str(e)
            except SystemExit:      # argparse refused a passthrough flag: the same for every layout
                raise UsageError(f"the flags after -- are not evaluator flags: {' '.join(passthrough)}") from None
            out_list.append(Planned(c, workload, run_id, argv, skipped))
    return out_list


def run_one(p: Planned, out: Path, position: int, total: int, started: float, console: Console) -> str | None:
    """One layout as its own `python -m evaluator` process; None when it finished, else why not."""
    folder = out / p.run_id
    if (folder / "summary.json").is_file():
        console.print(f"[{position}/{total}] {p.label}: finished earlier, kept", highlight=False)
        return None
    argv = (["--resume", str(folder), "--no-table"] if (folder / "config.json").is_file() else list(p.argv))
    elapsed = time.perf_counter() - started
    console.rule(f"layout {position} of {total}: {p.label} · comparison elapsed {elapsed / 60:.1f} min"
                 + (" · resuming" if argv[0] == "--resume" else ""))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "evaluator", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    last_error = ""
    for line in proc.stderr:            # shown as it comes; its last "error:" line is the reason
        sys.stderr.write(line)
        if line.lstrip().startswith("error:"):
            last_error = " ".join(line.split())
    if proc.wait() == 0:
        return None
    if proc.returncode == 130:
        raise KeyboardInterrupt
    return f"exit {proc.returncode}: {last_error or 'no error line'} (see {folder})"


def main(argv: list[str] | None = None) -> int:
    from evaluator.cli import split_passthrough
    from evaluator.errors import UsageError
    from evaluator.report.document import write_report
    from evaluator.report.runs import find_runs
    argv, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.resume:
            out = Path(args.resume)
            if not (out / PLAN).is_file():
                raise UsageError(f"--resume {out}: no {PLAN} there, not a comparison folder")
            saved = json.loads((out / PLAN).read_text())
            args = parser.parse_args(saved["argv"])
            passthrough = saved["passthrough"]
        else:
            out = Path(args.out or f"results/compare-{dt.datetime.now():%Y%m%d-%H%M%S}")
            if (out / PLAN).is_file():
                raise UsageError(f"{out} holds a comparison already; continue it with --resume {out}")
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        for e in engines:
            if e not in ENGINES:
                raise UsageError(f"--engines: unknown engine {e!r}; choose from {', '.join(sorted(ENGINES))}")
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        if not engines or not modes or any(m not in MODES for m in modes):
            raise UsageError(f"--modes: choose from {', '.join(MODES)}")
        if args.gpus is None or args.gpus < 1:
            raise UsageError(f"--gpus must be at least 1 (got {args.gpus})")
        if args.gpu_hour_price is not None and not args.gpu_hour_price >= 0:
            raise UsageError(f"--gpu-hour-price must be 0 or more (got {args.gpu_hour_price})")
        if not Path(args.data).is_file():
            raise UsageError(f"data file not found: {args.data} (make it with: python -m datasets_prep gsm8k)")
        workloads = ["offline", "serve"] if args.workload == "both" else [args.workload]
        layouts = plan(engines, args.gpus, modes, not args.no_native, workloads, args.model,
                       str(Path(args.data).resolve()), out.resolve(), passthrough)
    except UsageError as e:
        parser.exit(2, f"error: {e}\n")
    runnable = [p for p in layouts if p.skipped is None]
    for p in layouts:
        console.print(f"{'run ' if p.skipped is None else 'skip'} {p.label}" + (f": {p.skipped}" if p.skipped else ""),
                      highlight=False, markup=False)
    if args.dry_run:
        return 0
    if not runnable:
        parser.exit(2, "error: no layout can run here (reasons above)\n")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / PLAN).is_file():
        (out / PLAN).write_text(json.dumps({"argv": argv, "passthrough": passthrough,
                                            "layouts": [{"label": p.label, "run_id": p.run_id, "skipped": p.skipped}
                                                        for p in layouts]}, indent=2) + "\n")
    started = time.perf_counter()
    failed = []
    try:
        for k, p in enumerate(runnable, 1):
            why = run_one(p, out, k, len(runnable), started, console)
            if why:
                console.print(f"failed {p.label}: {why}", markup=False, highlight=False)
                failed.append((p.label, f"failed: {why}"))
    except KeyboardInterrupt:
        console.print(f"interrupted: continue with python -m evaluator.compare --resume {out}", markup=False)
        return 130
    console.rule(f"all {len(runnable)} layout(s) done in {(time.perf_counter() - started) / 60:.1f} min")
    report_console = Console(width=200) if not sys.stdout.isatty() else Console()
    wanted = {p.run_id for p in runnable}
    found = [r for r in find_runs(out) if r.path.name in wanted]
    write_report(out, found, [(p.label, p.skipped) for p in layouts if p.skipped] + failed, report_console,
                 args.gpu_hour_price, title=f"Layout comparison: {', '.join(engines)} on {args.gpus} device(s)")
    print(json.dumps({"compare": str(out), "finished": [r.summary.run_id for r in found],
                      "skipped": [p.run_id for p in layouts if p.skipped], "failed": [f[0] for f in failed]}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
