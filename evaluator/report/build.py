"""The report record (evaluator.report.model) built once from finished runs: each run's numbers
(the run table's rows), the answers paired against their baselines, the batch timing, the figures'
data, and the verdict sentences, which come from the functions that own them (analysis.verdict for
batches, serving.sentences for serving runs), so a change there reaches every renderer. A new kind
of verdict joins VERDICT_SOURCES.

    python -m evaluator.report results/compare-20260101-120000 --compare --html   # report.html + report.json
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
from typing import Callable

from evaluator.report import analysis
from evaluator.report.compare import Pair, costs_of, faster_than_baseline, pairs_of, unpaired_serving
from evaluator.report.model import (AccuracyPoint, AnswerGroup, CapacityBar, CostBar, Curve, CurvePoint, Figures,
                                    KvBar, PairEntry, Report, RunEntry, Score, Skipped, TimeBar, TimingRow, Verdict)
from evaluator.report.runs import (FoundRun, baseline_in_group, describe_group, describe_speed_group, groups,
                                  layout_label, run_label, speed_groups, speed_key)
from evaluator.report.tables import rows as run_rows


def _plain(obj):
    """JSON's own types only (tuples become lists), so a record read back from report.json equals
    the one that was written."""
    return json.loads(json.dumps(obj))


# --- verdicts -----------------------------------------------------------------------------------
def first_named(sentence: str, labels: dict[str, str]) -> str | None:
    """The run (key of labels) whose label the sentence names first (its best: every verdict sentence
    names its winner first); at one position the longest label ("vllm 2x1 native" over "vllm 2x1")."""
    found = [(sentence.find(label), -len(label), key) for key, label in labels.items() if label in sentence]
    return min(found)[2] if found else None


def batch_verdicts(found: list[FoundRun], price_per_gpu_hour: float | None) -> list["Verdict"]:
    """Per set of offline runs that measured the same thing the same way (one speed key, one start
    state), analysis.verdict's sentence. Resumed runs time part of their prompts: left out."""
    timed = [r for r in found if r.summary.config.workload == "offline" and not r.summary.resumed]
    out = []
    for g in speed_groups(timed):
        costs = costs_of(g)
        v = analysis.verdict(list(costs.values()), g[0].summary.prompts, describe_speed_group(g))
        winner = next(str(r.path) for r in g if costs[r.path] is v.fastest)
        out.append(Verdict("batch", "offline", v.sentence, tuple(str(r.path) for r in g), True, winner))
    return out


def serving_verdicts(found: list[FoundRun], price_per_gpu_hour: float | None) -> list["Verdict"]:
    """Per set of serving runs of one speed key, serving.sentences': the first names the layout with
    the most goodput (or output) per GPU; the capacity at the SLOs and the servers' own metrics follow."""
    from evaluator.report.serving import sentences, serving_runs
    by_key: dict[tuple, list[FoundRun]] = {}
    for r in serving_runs(found):
        by_key.setdefault(speed_key(r), []).append(r)
    out = []
    for group in by_key.values():
        labels = {str(r.path): run_label(r, group) for r in group}
        for i, line in enumerate(sentences(group, price_per_gpu_hour)):
            out.append(Verdict("serving", "serve", line, tuple(labels), i == 0,
                               first_named(line, labels) if i == 0 else None))
    return out


def engine_verdicts(found: list[FoundRun], price_per_gpu_hour: float | None) -> list["Verdict"]:
    """Across engines (evaluator.report.engines): per pair of engines that measured the same thing,
    the engine and layout to run, or why they cannot be ranked; then what a deterministic mode or a
    quantisation costs against the same engine without it (evaluator.report.variants)."""
    from evaluator.report.engines import verdicts
    from evaluator.report.variants import variant_costs
    out = []
    for v in verdicts(found):
        paths = v.paths
        winner = None
        if v.best is not None:
            winner = next((p for p, e in zip(paths, v.engines) if v.best.split(" ", 1)[0] == e), None)
        out.append(Verdict("engines", v.workload, v.sentence, paths, True, winner))
    for c in variant_costs(found):
        ids = {r.summary.run_id: str(r.path) for r in found}
        out.append(Verdict("variant", "any", c.sentence, tuple(ids.get(run, run) for run in (c.run, c.baseline)),
                           False, None))
    return out


# Where the verdict sentences come from, in the order the report shows them: each takes the
# finished runs and the price of a GPU-hour and returns Verdict records. A new kind of verdict
# (engines against each other, a deterministic mode's cost) joins here and reaches every renderer.
VERDICT_SOURCES: list[Callable[[list[FoundRun], float | None], list[Verdict]]] = [batch_verdicts, serving_verdicts,
                                                                                 engine_verdicts]


# --- building -----------------------------------------------------------------------------------
def _slo_text(r: FoundRun) -> str:
    sv = r.summary.config.serve
    if sv is None:
        return ""
    q = f"p{sv.slo_percentile:g} " if sv.capacity else ""
    parts = [f"TTFT {q}≤ {sv.slo_ttft_ms:g} ms" if sv.slo_ttft_ms else "",
             f"TPOT {q}≤ {sv.slo_tpot_ms:g} ms" if sv.slo_tpot_ms else ""]
    return " and ".join(p for p in parts if p)


def _traffic_text(r: FoundRun) -> str:
    from evaluator.report.serving import describe_traffic
    if r.summary.config.workload == "serve":
        return describe_traffic(r)
    return describe_group([r])


def _entry(r: FoundRun, found: list[FoundRun], row: dict) -> RunEntry:
    s, c = r.summary, r.summary.config
    return RunEntry(run_id=s.run_id, label=run_label(r, found), path=str(r.path), engine=c.engine,
                    layout=layout_label(s), workload=c.workload, gpus=c.dp * c.tp, scope=describe_speed_group([r]),
                    traffic=_traffic_text(r), slo=_slo_text(r), row=_plain(row),
                    replicas=tuple(_plain(dataclasses.asdict(x)) for x in s.replicas),
                    levels=tuple(_plain(list(s.levels))), capacity=_plain(s.capacity) if s.capacity else None)


def _score(t: analysis.AccuracyTest) -> Score:
    return Score(t.metric, t.baseline_accuracy, t.accuracy, t.difference, t.lost, t.gained, t.p_value)


def _pair_entry(p: Pair, group: list[FoundRun]) -> PairEntry:
    head = dict(path=str(p.run.path), baseline_path=str(p.baseline.path), run_id=p.run.summary.run_id,
                label=run_label(p.run, group), baseline_id=p.baseline.summary.run_id,
                baseline_label=run_label(p.baseline, group))
    eq = p.equivalence
    if eq is None:
        return PairEntry(**head, problem=p.problem or "")
    return PairEntry(**head, prompts=eq.prompts, identical=eq.identical_outputs, same_answer=eq.same_answer,
                     strict=_score(eq.strict), flexible=_score(eq.flexible), flipped=tuple(f.index for f in eq.flips))


def _answer_group(group: list[FoundRun], chosen: FoundRun | None, cache: dict) -> AnswerGroup:
    pairs = pairs_of(group, chosen, cache)
    ids = tuple(r.summary.run_id for r in group)
    note = ""
    if not pairs:
        note = (f"{describe_group(group)}: only {ids[0]} answered these prompts with these settings, nothing to pair "
                f"it with" if len(group) == 1 else
                f"{describe_group(group)}: no baseline to compare {', '.join(ids)} with; run a single-device layout "
                f"or pass --baseline")
    unpaired = unpaired_serving(group)
    if unpaired:
        note = "; ".join(([note] if note else []) + unpaired)
    out_of_timing = [r for r in group if r.summary.resumed or r.summary.config.workload != "offline"]
    timed = [r for r in group if r not in out_of_timing]
    costs = costs_of(timed)
    timing = []
    for r in timed:
        base = baseline_in_group(r, timed, chosen)
        c = costs[r.path]
        timing.append(TimingRow(str(r.path), r.summary.run_id, run_label(r, timed), c.startup_s, r.summary.generate_s,
                                c.per_prompt_s, analysis.straggler_gap(r.summary.replicas),
                                base.summary.run_id if base else None, faster_than_baseline(r, base, costs)))
    return AnswerGroup(describe_group(group), tuple(str(r.path) for r in group),
                       tuple(_pair_entry(p, group) for p in pairs), note, tuple(str(r.path) for r in timed),
                       tuple(r.summary.run_id for r in out_of_timing), tuple(timing))


def _capacity_bar(e: RunEntry) -> CapacityBar:
    c = e.capacity or {}
    per = (lambda v: None if v is None else v / e.gpus)
    if c.get("ci_low") is not None and c.get("ci_high") is not None:
        low, high, kind = per(c["ci_low"]), per(c["ci_high"]), "95% CI"
    else:
        low, high, kind = per(c.get("rate")), per(c.get("lowest_failed")), "bracket"
    return CapacityBar(e.path, e.label, c.get("rate"), per(c.get("rate")), low, high, kind,
                       bool(c.get("converged")))


def _figures(entries: list[RunEntry]) -> Figures:
    def ci(v):
        return tuple(v) if v is not None else None
    return Figures(
        tradeoff=tuple(Curve(e.path, e.label, tuple(
            CurvePoint(l["level"], l.get("tokens_per_s_per_user"), l.get("output_tokens_per_s_per_gpu"),
                       l.get("goodput_rps"), l.get("ttft_ms_p50"), l.get("tpot_ms_p50")) for l in e.levels))
            for e in entries if e.levels),
        time=tuple(TimeBar(e.path, e.label, e.row["startup_s"], e.row["generate_s"] or 0.0) for e in entries),
        accuracy=tuple(AccuracyPoint(e.path, e.label, e.row["strict_acc"],
                                     ci(e.row["strict_ci"]) if e.row["strict_acc"] is not None else None,
                                     e.row["flexible_acc"],
                                     ci(e.row["flexible_ci"]) if e.row["flexible_acc"] is not None else None)
                       for e in entries),
        capacity=tuple(_capacity_bar(e) for e in entries if e.capacity),
        kv=tuple(KvBar(e.path, e.label, e.row["kv_tokens"], e.row["kv_tokens_predicted"]) for e in entries
                 if e.row["kv_tokens"] is not None or e.row["kv_tokens_predicted"] is not None),
        cost=tuple(CostBar(e.path, e.label, e.row["gpu_hours"], e.row["gpu_hours_engine"], e.row["cost"],
                           e.row["cost_per_mtok"]) for e in entries))


def _environment(found: list[FoundRun]) -> tuple[tuple[str, str], ...]:
    """What the runs ran on (config.json's environment, summary's device), then where the report was made."""
    env: dict[str, list[str]] = {}
    for r in found:
        pairs = list(r.environment) or sorted(r.summary.versions.items())
        for k, v in [*pairs, ("device", r.summary.device_name)]:
            if str(v) not in env.setdefault(k, []):
                env[k].append(str(v))
    out = [(k, ", ".join(v)) for k, v in env.items()]
    out.append(("report made on", f"{platform.node()}, Python {platform.python_version()}, {platform.platform()}"))
    return tuple(out)


def build_report(found: list[FoundRun], skipped: list[tuple[str, str]] = (), *, title: str = "Finished runs",
                 price_per_gpu_hour: float | None = None, chosen: FoundRun | None = None,
                 warmups: list[str] = (), commands: list[str] = ()) -> Report:
    """The whole report of these finished runs; skipped: (label, why) of the planned layouts
    without a finished run (a why starting with "failed" ran and failed); chosen: the --baseline run."""
    table = run_rows(found, price_per_gpu_hour)
    entries = [_entry(r, found, row) for r, row in zip(found, table)]
    cache: dict = {}
    answers = tuple(_answer_group(g, chosen, cache) for g in groups(found))
    verdicts = tuple(v for source in VERDICT_SOURCES for v in source(found, price_per_gpu_hour))
    return Report(title=title, created_at=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                  price_per_gpu_hour=price_per_gpu_hour, runs=tuple(entries),
                  skipped=tuple(Skipped(label, why, why.startswith("failed")) for label, why in skipped),
                  answers=answers, verdicts=verdicts, figures=_figures(entries), warmups=tuple(warmups),
                  commands=tuple(commands), environment=_environment(found))
