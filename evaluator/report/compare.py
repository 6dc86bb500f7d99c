"""The answers no single run gives, for runs that answered the same prompts: which runs are set
against which baseline and are their answers the same (equivalence, McNemar), from which prompt
count a layout's extra start-up is repaid, and every flipped prompt with its question. The report
record (evaluator.report.model) is built from these; printing it is render_console's job.

    python -m evaluator.report results/ --compare --show-flips
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from evaluator.data import question_texts
from evaluator.records import Sample
from evaluator.report import analysis
from evaluator.report.runs import FoundRun, baseline_in_group, groups, run_label
from evaluator.store import RunDir


@dataclass(frozen=True)
class Pair:
    """One run set against its baseline; equivalence is None when a samples.jsonl is unreadable."""
    baseline: FoundRun
    run: FoundRun
    equivalence: analysis.Equivalence | None
    problem: str | None = None


def _samples(run: FoundRun, cache: dict[Path, list[Sample]]) -> list[Sample]:
    if run.path not in cache:
        cache[run.path] = RunDir(run.path).read_samples()
    return cache[run.path]


def is_reference(engine: str) -> bool:
    from launchers.engines.base import ENGINES, capabilities
    return engine in ENGINES and capabilities(engine).reference


def reference_run(group: list[FoundRun]) -> FoundRun | None:
    """The latest offline single-device run of a reference engine (Capabilities.reference: the hf one) in the
    group: every other engine's single-device run is also set against it ("does the fast engine give
    the reference answers?")."""
    refs = [r for r in group if is_reference(r.summary.config.engine) and r.summary.config.dp * r.summary.config.tp == 1
            and r.summary.config.workload == "offline" and not r.summary.config.base_model]
    return refs[-1] if refs else None


def _pair(base: FoundRun, run: FoundRun, cache: dict[Path, list[Sample]]) -> Pair:
    # a serving run's levels each answered fresh prompts: it is paired on the prompts both answered
    common = "serve" in (base.summary.config.workload, run.summary.config.workload)
    try:
        return Pair(base, run, analysis.compare_samples(_samples(base, cache), _samples(run, cache), common))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, analysis.AnalysisError) as e:
        return Pair(base, run, None, f"{type(e).__name__}: {e}")


def pairs_of(group: list[FoundRun], chosen: FoundRun | None, cache: dict[Path, list[Sample]]) -> list[Pair]:
    """Each run against its baseline, and each other engine's single-device runs against the
    reference engine's when the group has one."""
    out = []
    for run in group:
        base = baseline_in_group(run, group, chosen)
        if base is not None and base is not run:
            out.append(_pair(base, run, cache))
    ref = reference_run(group)
    if ref is not None and chosen is None:
        out += [_pair(ref, r, cache) for r in group
                if not is_reference(r.summary.config.engine) and r.summary.config.dp * r.summary.config.tp == 1]
    if chosen is None:              # a serving run against the offline run of the same engine, layout and settings
        for r in group:
            twin = offline_twin(r, group)
            if twin is not None:
                out.append(_pair(twin, r, cache))
    return out


def unpaired_serving(group: list[FoundRun]) -> list[str]:
    """Why a serving run of the group has no offline twin to be paired with, one line each."""
    out = []
    for r in group:
        c = r.summary.config
        if c.workload == "serve" and offline_twin(r, group) is None:
            out.append(f"{run_label(r, group)}: not paired with an offline run: none of the same engine, layout and "
                       f"settings answered these prompts here (run --workload both)")
    return out


def offline_twin(run: FoundRun, group: list[FoundRun]) -> FoundRun | None:
    """For a serving run, the latest offline run of the same engine, layout and engine settings:
    do the server's answers (its chat template, its sampling defaults) match the offline engine's?"""
    c = run.summary.config
    if c.workload != "serve":
        return None
    same = [r for r in group if r.summary.config.workload == "offline" and r.summary.config.engine == c.engine
            and (r.summary.config.dp, r.summary.config.tp) == (c.dp, c.tp) and r.summary.config.model == c.model
            and r.summary.config.engine_kwargs == c.engine_kwargs and r.summary.config.deterministic == c.deterministic]
    return same[-1] if same else None


def costs_of(group: list[FoundRun]) -> dict[Path, analysis.Cost]:
    return {r.path: analysis.cost(run_label(r, group), r.summary.startup_s, r.summary.generate_s, r.summary.prompts)
            for r in group}


def faster_than_baseline(run: FoundRun, base: FoundRun | None, costs: dict[Path, analysis.Cost]) -> str:
    """The prompt counts at which the run beats its baseline in total time, in words."""
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


def print_flips(pairs: list[Pair], console: Console) -> None:
    texts: dict[str, dict[int, str]] = {}
    for p in pairs:
        if p.equivalence is None or not p.equivalence.flips:
            continue
        data = p.run.summary.config.data
        if data not in texts:
            texts[data] = question_texts(data)
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


def show_flips(runs: list[FoundRun], console: Console, chosen: FoundRun | None = None) -> None:
    """--show-flips: every flipped prompt of every pair, with its question and both responses."""
    cache: dict[Path, list[Sample]] = {}
    for group in groups(runs):
        print_flips(pairs_of(group, chosen, cache), console)
