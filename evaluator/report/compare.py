"""Compare finished runs: one table row per run (every summary.json under the given folders),
and on request the answers no single run gives: are two layouts' answers the same and is their
accuracy difference real (--compare), where the time goes and which layout wins at which prompt
count (--timing, part of --compare), and a PNG of time and accuracy per layout (--plot).

    python -m evaluator.report results/
    python -m evaluator.report results/ --compare --show-flips --plot results/report.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluator import analysis
from evaluator.records import RunSummary, Sample
from evaluator.store import SUMMARY, RunDir


@dataclass(frozen=True)
class FoundRun:
    """A finished run and the folder it lives in (its samples.jsonl is next to summary.json)."""
    summary: RunSummary
    path: Path


def find_runs(*paths: str | Path) -> list[FoundRun]:
    """Every finished run (summary.json) at or below the paths, oldest first."""
    runs = []
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(path.rglob(SUMMARY))
        for f in files:
            try:
                runs.append(FoundRun(RunSummary.from_dict(json.loads(f.read_text())), f.parent))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                print(f"warning: skipping {f}: {e}", file=sys.stderr)
    return sorted(runs, key=lambda r: (r.summary.started_at, r.summary.run_id))


def load_runs(*paths: str | Path) -> list[RunSummary]:
    """Every finished run (summary.json) at or below the paths, oldest first."""
    return [r.summary for r in find_runs(*paths)]


def workload_key(run: RunSummary) -> tuple:
    """Runs with the same key answered the same prompts with the same model and sampling."""
    c = run.config
    return (c.engine, c.model, c.data, run.prompts, c.sampling, c.device, c.cpu_cores_per_device)


def pairing_key(run: RunSummary) -> tuple:
    """Runs with the same key can be compared answer by answer: same prompts (data file and
    count), model and sampling. Engine and device may differ: that is what is being compared."""
    c = run.config
    return (c.model, c.data, run.prompts, c.sampling)


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


def has_majority(run: RunSummary) -> bool:
    return run.strict_maj_accuracy is not None or run.flexible_maj_accuracy is not None


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
                    "n": r.config.sampling.n, "strict_maj_acc": r.strict_maj_accuracy,
                    "flexible_maj_acc": r.flexible_maj_accuracy, "failures": len(r.failures)})
    return out


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(runs: list[RunSummary], console: Console | None = None, highlight: str | None = None,
                title: str = "Finished runs") -> None:
    console = console or Console()
    t = Table(title=title)
    # maj@K only when some run sampled several answers: pass@1 (strict/flex acc) is always the
    # first answer, so the two sit side by side and show what voting adds
    majority = any(has_majority(r) for r in runs)
    columns = [("engine", "left"), ("layout dp×tp", "left"), ("device", "left"), ("prompts", "right"),
               ("start-up s", "right"), ("generate s", "right"), ("total s", "right"),
               ("speedup", "right"), ("out tok/s", "right"), ("strict acc", "right"), ("flex acc", "right")]
    if majority:
        columns += [("strict maj@K", "right"), ("flex maj@K", "right")]
    for name, justify in columns:
        t.add_column(name, justify=justify)
    for row in rows(runs):
        layout = row["layout"] + (" eos-off" if row["ignore_eos"] else "") + (" ⚠" if row["failures"] else "")
        cells = [row["engine"], layout, row["device"], str(row["prompts"]), _f(row["startup_s"], ".1f"),
                 _f(row["generate_s"], ".1f"), _f(row["total_s"], ".1f"),
                 _f(row["speedup"], ".2f"), _f(row["output_tok_s"], ".0f"),
                 _f(row["strict_acc"], ".3f"), _f(row["flexible_acc"], ".3f")]
        if majority:
            k = f" @{row['n']}" if row["n"] > 1 else ""
            cells += [_f(row["strict_maj_acc"], ".3f") + k, _f(row["flexible_maj_acc"], ".3f") + k]
        t.add_row(*cells, style="bold" if row["run_id"] == highlight else None)
    console.print(t)


# --- --compare and --timing ---------------------------------------------------------------------
class ReportError(ValueError):
    """Bad report input (e.g. an unknown --baseline): one line, exit code 2."""


@dataclass(frozen=True)
class Pair:
    """One run set against its baseline; equivalence is None when a samples.jsonl is unreadable."""
    baseline: FoundRun
    run: FoundRun
    equivalence: analysis.Equivalence | None
    problem: str | None = None


def groups(runs: list[FoundRun]) -> list[list[FoundRun]]:
    """Runs that can be paired (pairing_key), in order of first appearance."""
    out: dict[tuple, list[FoundRun]] = {}
    for r in runs:
        out.setdefault(pairing_key(r.summary), []).append(r)
    return list(out.values())


def resolve_baseline(runs: list[FoundRun], run_id: str | None) -> FoundRun | None:
    if run_id is None:
        return None
    found = [r for r in runs if r.summary.run_id == run_id or r.path.resolve() == Path(run_id).resolve()]
    if not found:
        raise ReportError(f"--baseline {run_id}: no finished run with that id "
                          f"(have: {', '.join(sorted({r.summary.run_id for r in runs}))})")
    if len(found) > 1:
        raise ReportError(f"--baseline {run_id} names {len(found)} runs ({', '.join(str(r.path) for r in found)}); "
                          f"pass its folder instead")
    return found[0]


def baseline_in_group(run: FoundRun, group: list[FoundRun], chosen: FoundRun | None) -> FoundRun | None:
    """--baseline when it answered the same prompts, else the latest single-device run of the same
    engine and device (as for the speedup column)."""
    if chosen is not None and chosen in group:
        return chosen
    base = baseline_for(run.summary, [r.summary for r in group])
    return next((r for r in group if r.summary is base), None)


def _samples(run: FoundRun, cache: dict[Path, list[Sample]]) -> list[Sample]:
    if run.path not in cache:
        cache[run.path] = RunDir(run.path).read_samples()
    return cache[run.path]


def pairs_of(group: list[FoundRun], chosen: FoundRun | None, cache: dict[Path, list[Sample]]) -> list[Pair]:
    out = []
    for run in group:
        base = baseline_in_group(run, group, chosen)
        if base is None or base is run:
            continue
        try:
            eq = analysis.compare_samples(_samples(base, cache), _samples(run, cache))
            out.append(Pair(base, run, eq))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, analysis.AnalysisError) as e:
            out.append(Pair(base, run, None, f"{type(e).__name__}: {e}"))
    return out


def describe_group(group: list[FoundRun]) -> str:
    c, n = group[0].summary.config, group[0].summary.prompts
    s = c.sampling
    sampling = f"T={s.temperature:g}" + (f", n={s.n}" if s.n > 1 else "") + f", max {s.max_tokens} tokens"
    if s.ignore_eos:
        sampling += ", eos off"
    return f"{n} prompts of {Path(c.data).name}, model {Path(c.model).name}, {sampling}"


def run_label(run: FoundRun, group: list[FoundRun]) -> str:
    """engine + layout, with the run id where two runs of the group would read the same."""
    s = run.summary
    label = f"{s.config.engine} {layout_label(s)}"
    same = [r for r in group if f"{r.summary.config.engine} {layout_label(r.summary)}" == label]
    return f"{label} [{s.run_id}]" if len(same) > 1 else label


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}% ({count}/{total})" if total else "-"


def _delta(test: analysis.AccuracyTest) -> str:
    return f"{test.difference:+.3f} (p={test.p_value:.2g})"


def _flip_list(flips: tuple[analysis.Flip, ...], shown: int = 8) -> str:
    if not flips:
        return "0"
    idx = [str(f.index) for f in flips]
    return f"{len(idx)}: " + ", ".join(idx[:shown]) + (", …" if len(idx) > shown else "")


def print_equivalence(group: list[FoundRun], pairs: list[Pair], console: Console) -> None:
    t = Table(title=f"Same answers as the baseline? ({describe_group(group)})")
    for name, justify in [("run", "left"), ("layout", "left"), ("baseline", "left"), ("identical output", "right"),
                          ("same answer", "right"), ("Δ strict acc (McNemar p)", "right"),
                          ("Δ flex acc (McNemar p)", "right"), ("flipped indices", "left")]:
        t.add_column(name, justify=justify)
    for p in pairs:
        cells = [p.run.summary.run_id, run_label(p.run, group), p.baseline.summary.run_id]
        eq = p.equivalence
        if eq is None:
            cells += ["-", "-", "-", "-", escape(p.problem or "")]
        else:
            cells += [_pct(eq.identical_outputs, eq.prompts), _pct(eq.same_answer, eq.prompts),
                      _delta(eq.strict), _delta(eq.flexible), _flip_list(eq.flips)]
        t.add_row(*cells)
    console.print(t)
    console.print("identical output = same first answer text; same answer = same flexible prediction; "
                  "p = two-sided exact McNemar test on the prompts only one of the two got right "
                  "(p ≥ 0.05: the difference can be noise).", style="dim")


def costs_of(group: list[FoundRun]) -> dict[Path, analysis.Cost]:
    return {r.path: analysis.cost(run_label(r, group), r.summary.startup_s, r.summary.generate_s, r.summary.prompts)
            for r in group}


def _break_even(run: FoundRun, base: FoundRun | None, costs: dict[Path, analysis.Cost]) -> str:
    if base is None:
        return "-"
    if base is run:
        return "baseline"
    n = analysis.break_even_prompts(costs[run.path], costs[base.path])
    if n is None:
        # slower per prompt but quicker to start: it wins only while the count is small
        last = analysis.faster_until(costs[run.path], costs[base.path])
        return "never" if last is None else f"up to {last}"
    if n == 0:
        return "always"
    return f"from {math.floor(n) + 1}"


def print_timing(group: list[FoundRun], chosen: FoundRun | None, console: Console) -> None:
    t = Table(title=f"Where the time goes, per replica ({describe_group(group)})")
    for name, justify in [("run", "left"), ("layout", "left"), ("replica", "right"), ("devices", "left"),
                          ("prompts", "right"), ("start-up s", "right"), ("generate s", "right"),
                          ("idle after finish s", "right"), ("chunks", "right")]:
        t.add_column(name, justify=justify)
    for r in group:
        for i, rep in enumerate(r.summary.replicas):
            first = i == 0
            t.add_row(r.summary.run_id if first else "", run_label(r, group) if first else "", str(rep.rank),
                      escape(rep.devices), str(rep.prompts), f"{rep.startup_s:.1f}", f"{rep.generate_s:.2f}",
                      f"{rep.idle_after_finish_s:.2f}", str(rep.chunks),
                      style="red" if rep.failed else None, end_section=i == len(r.summary.replicas) - 1)
    console.print(t)

    costs = costs_of(group)
    t = Table(title="Per run: time(n) = start-up + n × generate/prompts")
    for name, justify in [("run", "left"), ("layout", "left"), ("start-up s", "right"), ("generate s", "right"),
                          ("s/prompt", "right"), ("straggler gap", "right"), ("baseline", "left"),
                          ("faster than baseline", "right")]:
        t.add_column(name, justify=justify)
    for r in group:
        base = baseline_in_group(r, group, chosen)
        c = costs[r.path]
        t.add_row(r.summary.run_id, run_label(r, group), f"{c.startup_s:.1f}", f"{r.summary.generate_s:.2f}",
                  f"{c.per_prompt_s:.4f}", f"{100 * analysis.straggler_gap(r.summary.replicas):.1f}%",
                  base.summary.run_id if base else "-", _break_even(r, base, costs))
    console.print(t)
    console.print("straggler gap = (slowest - fastest replica generate s) / slowest; "
                  "faster than baseline = prompt counts at which the layout beats the baseline in total time "
                  "(from N: its extra start-up is repaid there).", style="dim")
    console.print(analysis.verdict(list(costs.values()), group[0].summary.prompts).sentence, markup=False)


def questions(data: str) -> dict[int, str]:
    """index -> question text from the run's data parquet (extra_info.question); {} when the file
    is gone or has no such field, and the flips are then shown without it."""
    from evaluator.data import row_index
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(data)
    except (OSError, ValueError):   # gone, moved, or not parquet any more (ArrowInvalid is a ValueError)
        return {}
    out = {}
    for i, row in enumerate(table.to_pylist()):
        question = (row.get("extra_info") or {}).get("question")
        if question:
            out[row_index(row, i)] = question
    return out


def print_flips(pairs: list[Pair], console: Console) -> None:
    texts: dict[str, dict[int, str]] = {}
    for p in pairs:
        if p.equivalence is None or not p.equivalence.flips:
            continue
        data = p.run.summary.config.data
        if data not in texts:
            texts[data] = questions(data)
        b, o = p.baseline.summary.run_id, p.run.summary.run_id
        console.rule(f"{len(p.equivalence.flips)} flipped: {o} vs baseline {b}", style="dim")
        for f in p.equivalence.flips:
            marks = ", ".join(f"{m} {'✓' if getattr(f.baseline, m + '_correct') else '✗'}→"
                              f"{'✓' if getattr(f.other, m + '_correct') else '✗'}" for m in f.metrics)
            console.print(f"[bold]index {f.index}[/] ({marks}), gold {escape(f.baseline.gold)}")
            if f.index in texts[data]:
                console.print("  question: " + texts[data][f.index], markup=False, highlight=False)
            console.print(f"  {b}: {f.baseline.response!r}", markup=False, highlight=False)
            console.print(f"  {o}: {f.other.response!r}", markup=False, highlight=False)
        if not texts[data]:
            console.print(f"(question text left out: {data} cannot be read)", style="dim")


def write_plot(runs: list[FoundRun], path: Path) -> Path:
    from evaluator.plot import Bar, plot_runs
    bars = [Bar(label=run_label(r, runs).replace(" [", "\n["), startup_s=r.summary.startup_s,
                generate_s=r.summary.generate_s, strict_accuracy=r.summary.strict_accuracy,
                flexible_accuracy=r.summary.flexible_accuracy) for r in runs]
    engines = {r.summary.config.engine for r in runs}
    if len(engines) == 1:   # the engine in every label is noise when there is one
        bars = [Bar(b.label.split(" ", 1)[1], b.startup_s, b.generate_s, b.strict_accuracy, b.flexible_accuracy)
                for b in bars]
    return plot_runs(bars, path)


def compare(runs: list[FoundRun], console: Console, chosen: FoundRun | None = None, equivalence: bool = True,
            timing: bool = True, show_flips: bool = False) -> None:
    """The --compare / --timing sections, one block per set of runs that answered the same prompts;
    chosen is the --baseline run (resolve_baseline), None for the default baselines."""
    cache: dict[Path, list[Sample]] = {}
    for group in groups(runs):
        pairs = pairs_of(group, chosen, cache)
        if equivalence:
            if pairs:
                print_equivalence(group, pairs, console)
            elif len(group) == 1:
                console.print(f"({describe_group(group)}: only {group[0].summary.run_id} answered these prompts "
                              f"with these settings, nothing to pair it with)", style="dim", markup=False)
            else:
                console.print(f"({describe_group(group)}: no baseline to compare "
                              f"{', '.join(r.summary.run_id for r in group)} with; "
                              f"run a single-device layout or pass --baseline)", style="dim", markup=False)
        if timing:
            print_timing(group, chosen, console)
        if show_flips:
            print_flips(pairs, console)


def default_plot_path(first: str) -> Path:
    p = Path(first)
    return (p.parent if p.is_file() else p) / "report.png"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluator.report",
        description="Print one table over finished runs (every summary.json below PATH). --compare adds, for "
                    "runs that answered the same prompts with the same model and sampling: answer equivalence "
                    "against a baseline with a McNemar test, per-replica timing, straggler gap, break-even "
                    "prompt count and which layout is fastest.",
        epilog="Example: python -m evaluator.report results/ --compare --show-flips (writes results/report.png)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="results folder(s) or summary.json files")
    p.add_argument("--compare", action="store_true",
                   help="pair runs of the same prompts, model and sampling against a baseline: identical-output "
                        "rate, same-answer rate, accuracy difference with exact McNemar p-value, flipped "
                        "indices; includes --timing; writes the PNG (see --plot)")
    p.add_argument("--baseline", metavar="RUN_ID",
                   help="run id (or run folder) to compare against (default: the latest single-device run of "
                        "the same engine and device); implies --compare")
    p.add_argument("--show-flips", action="store_true",
                   help="print every flipped prompt: question (from the run's data parquet, left out when it "
                        "is gone), both responses and the gold answer; implies --compare")
    p.add_argument("--timing", action="store_true",
                   help="only the time part of --compare: per replica start-up / generate / idle-after-finish "
                        "seconds, straggler gap, prompt count from which each layout beats the baseline, and "
                        "which layout is fastest at this prompt count")
    p.add_argument("--plot", nargs="?", const="", metavar="PNG",
                   help="write a PNG of start-up + generate seconds (stacked) and strict/flexible accuracy per "
                        "run (default path, also with --compare: FIRST_PATH/report.png)")
    p.add_argument("--no-plot", action="store_true", help="no PNG, even with --compare")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in args.paths:
        if not Path(path).exists():
            parser.exit(2, f"error: {path} does not exist\n")
    # sweep folders (launchers.sweep): one row per task, failed and never-run ones too, + report.csv/.md
    from evaluator import sweep_report
    if all(sweep_report.is_sweep_dir(p) for p in args.paths):
        for path in args.paths:
            sweep_report.report(path)
        if all(v == parser.get_default(k) for k, v in vars(args).items() if k != "paths"):
            return 0
    found = find_runs(*args.paths)
    runs = [r.summary for r in found]
    if not runs:
        parser.exit(2, f"error: no finished run (summary.json) under {', '.join(args.paths)}\n")
    try:
        chosen = resolve_baseline(found, args.baseline)
    except ReportError as e:
        parser.exit(2, f"error: {e}\n")
    # piped into a log or a file, rich would wrap every table at 80 columns; COLUMNS still wins
    console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=160)
    print_table(runs, console)
    compare_all = args.compare or args.baseline is not None or args.show_flips
    if compare_all or args.timing:
        compare(found, console, chosen=chosen, equivalence=compare_all, timing=True, show_flips=args.show_flips)
    if (args.plot is not None or compare_all) and not args.no_plot:
        path = Path(args.plot) if args.plot else default_plot_path(args.paths[0])
        try:
            written = write_plot(found, path)
        except OSError as e:
            parser.exit(2, f"error: cannot write the plot to {path}: {e}\n")
        console.print(f"plot: {written}", markup=False, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
