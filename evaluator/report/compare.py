"""The answers no single run gives, for runs that answered the same prompts: are two layouts'
answers the same and is their accuracy difference real (equivalence against a baseline, McNemar),
where the time goes per replica, from which prompt count a layout's extra start-up is repaid, which
layout is fastest, every flipped prompt, and the PNG of time and accuracy per layout.

    python -m evaluator.report results/ --compare --show-flips
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluator.data import question_texts
from evaluator.records import Sample
from evaluator.report import analysis
from evaluator.report.runs import (FoundRun, baseline_in_group, describe_group, describe_speed_group, groups,
                                  run_label, speed_groups)
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
                  "(p ≥ 0.05: the difference can be noise); a serving run is paired on the prompts both runs "
                  "answered (its levels each sent fresh prompts).", style="dim")
    for line in unpaired_serving(group):
        console.print(line, style="dim", markup=False, highlight=False)


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
    """Batch timing of the offline runs that timed every prompt (resumed and serving runs are
    left out: their seconds do not describe one batch of these prompts)."""
    left_out = [r.summary.run_id for r in group if r.summary.resumed or r.summary.config.workload != "offline"]
    group = [r for r in group if r.summary.run_id not in left_out]
    if left_out:
        console.print(f"(left out of the batch timing: {', '.join(left_out)}: resumed or serving runs)",
                      style="dim", markup=False)
    if not group:
        return
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
    for g in speed_groups(group):
        console.print(analysis.verdict(list(costs_of(g).values()), g[0].summary.prompts,
                                       describe_speed_group(g)).sentence, markup=False, highlight=False)


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


def write_plot(runs: list[FoundRun], path: Path) -> Path:
    from evaluator.report.plot import Bar, plot_runs
    nan = float("nan")           # not measured (serving traffic other than GSM8K): no point drawn
    bars = [Bar(label=run_label(r, runs).replace(" [", "\n["), startup_s=r.summary.startup_s,
                generate_s=r.summary.generate_s,
                strict_accuracy=nan if r.summary.strict_accuracy is None else r.summary.strict_accuracy,
                flexible_accuracy=nan if r.summary.flexible_accuracy is None else r.summary.flexible_accuracy)
            for r in runs]
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
    from evaluator.report.engines import sentences as engine_sentences
    for line in engine_sentences(runs):          # across engines: the one to run, or why they cannot be ranked
        console.print(line, markup=False, highlight=False)
