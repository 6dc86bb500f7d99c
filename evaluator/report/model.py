"""The report as one record, built once from finished runs and rendered three ways (console,
Markdown, HTML) and written as report.json: the runs with their raw numbers, the layouts that
were skipped or failed, the answers paired against their baselines (McNemar), the batch timing,
the verdict sentences, the figures' data, the command and the environment. Nothing here prints or
formats a table; evaluator/report/render_*.py do, from this record alone.

The sentences are not written here: they come from the functions that own them
(analysis.verdict for batches, serving.sentences for serving runs), so a change there reaches
every renderer. More sources of verdicts join VERDICT_SOURCES.

    python -m evaluator.report results/compare-20260101-120000 --compare --html   # report.html + report.json
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import platform
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evaluator.report import analysis
from evaluator.report.compare import Pair, costs_of, faster_than_baseline, pairs_of
from evaluator.report.runs import (FoundRun, baseline_in_group, describe_group, describe_speed_group, groups,
                                  layout_label, run_label, speed_groups, speed_key)
from evaluator.report.tables import rows as run_rows

SCHEMA_VERSION = 1


# --- the record ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunEntry:
    """One finished run: who it is, and its numbers as summary.json and the run table hold them."""
    run_id: str
    label: str                        # "vllm 2x1 serve": engine, layout, workload (+ [run id] where two read alike)
    path: str                         # the run's folder: the key other records name it by (run ids may repeat)
    engine: str
    layout: str                       # "2x1", "2x1 native"
    workload: str                     # offline | serve
    gpus: int
    scope: str                        # what it ran on and with: engine, device, settings, start state, version
    traffic: str                      # "16 prompts of gsm8k_test.parquet, ..." or the serving traffic's shape
    slo: str                          # "TTFT p90 ≤ 500 ms and TPOT p90 ≤ 8 ms", "" without SLOs
    row: dict                         # evaluator.report.tables.rows(): raw numbers, the run table's source
    replicas: tuple[dict, ...] = ()   # ReplicaTiming per replica, as summary.json holds it
    levels: tuple[dict, ...] = ()     # serving: one LevelStats dict per load level
    capacity: dict | None = None      # serving with --capacity: the highest rate within the SLOs


@dataclass(frozen=True)
class Skipped:
    """A planned layout that has no finished run, and why."""
    label: str
    reason: str
    failed: bool                      # True: it ran and failed; False: refused before any engine started


@dataclass(frozen=True)
class Score:
    """One score (strict or flexible) of a run against its baseline on the same prompts (McNemar)."""
    metric: str
    baseline_accuracy: float
    accuracy: float
    difference: float
    lost: int                         # baseline right, this run wrong
    gained: int                       # baseline wrong, this run right
    p_value: float                    # two-sided exact McNemar


@dataclass(frozen=True)
class PairEntry:
    """One run's answers set against its baseline's, prompt by prompt."""
    path: str                         # RunEntry.path of the run and of its baseline
    baseline_path: str
    run_id: str
    label: str
    baseline_id: str
    baseline_label: str
    prompts: int | None = None
    identical: int | None = None      # same first answer text
    same_answer: int | None = None    # same flexible prediction
    strict: Score | None = None
    flexible: Score | None = None
    flipped: tuple[int, ...] = ()     # prompt indices whose correctness differs
    problem: str | None = None        # why the pair could not be made (a samples.jsonl gone)


@dataclass(frozen=True)
class TimingRow:
    """A batch run's time model: time(n) = startup_s + n x per_prompt_s, against its baseline."""
    path: str
    run_id: str
    label: str
    startup_s: float
    generate_s: float
    per_prompt_s: float
    straggler_gap: float
    baseline_id: str | None
    faster_than_baseline: str         # "baseline", "always", "from 7", "up to 4", "never", "-"


@dataclass(frozen=True)
class AnswerGroup:
    """Runs that answered the same prompts with the same model and sampling."""
    description: str                  # "13 prompts of small.parquet, model tiny, T=0, max 12 tokens"
    paths: tuple[str, ...]            # RunEntry.path of its runs
    pairs: tuple[PairEntry, ...]
    note: str = ""                    # why nothing was paired
    timed: tuple[str, ...] = ()       # paths of the batch timing's runs (offline, not resumed)
    left_out: tuple[str, ...] = ()    # run ids of the resumed or serving runs, left out of the batch timing
    timing: tuple[TimingRow, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """One sentence that answers the question, from the function that owns it."""
    source: str                       # "batch" (analysis.verdict), "serving" (serving.sentences), ...
    workload: str                     # offline | serve | any
    sentence: str
    runs: tuple[str, ...]             # the runs it compared (RunEntry.path)
    headline: bool = True             # False: a supporting sentence (capacity detail, the servers' metrics)
    winner: str | None = None         # the run the sentence names first (its best), when it names one


@dataclass(frozen=True)
class CurvePoint:
    level: str
    tokens_per_s_per_user: float | None
    output_tokens_per_s_per_gpu: float | None
    goodput_rps: float | None
    ttft_ms_p50: float | None
    tpot_ms_p50: float | None


@dataclass(frozen=True)
class Curve:
    """A serving run through its load levels: the Pareto picture's line."""
    path: str                         # RunEntry.path
    label: str
    points: tuple[CurvePoint, ...]


@dataclass(frozen=True)
class TimeBar:
    path: str                         # RunEntry.path
    label: str
    startup_s: float
    generate_s: float


@dataclass(frozen=True)
class AccuracyPoint:
    path: str                         # RunEntry.path
    label: str
    strict: float | None
    strict_ci: tuple[float, float] | None
    flexible: float | None
    flexible_ci: tuple[float, float] | None


@dataclass(frozen=True)
class CapacityBar:
    """The highest request rate within the SLOs, per GPU, with its interval (a confidence interval
    where the capacity record has one, else the search's bracket: held .. first missed)."""
    path: str                         # RunEntry.path
    label: str
    rate: float | None                # req/s the layout held (None: none of the rates tried)
    per_gpu: float | None
    low: float | None                 # per GPU
    high: float | None                # per GPU; None: the search never missed
    interval: str                     # "95% CI" | "bracket"
    converged: bool


@dataclass(frozen=True)
class KvBar:
    path: str                         # RunEntry.path
    label: str
    reported_tokens: int | None       # what the engine said at start-up, per replica
    predicted_tokens: int | None      # evaluator.memory, before the engine started


@dataclass(frozen=True)
class CostBar:
    path: str                         # RunEntry.path
    label: str
    gpu_hours: float                  # every attempt's wall time x devices
    gpu_hours_engine: float           # start-up + generate of the last attempt x devices
    cost: float | None                # with --gpu-hour-price
    cost_per_mtok: float | None       # offline runs; serving runs are priced per level


@dataclass(frozen=True)
class Figures:
    tradeoff: tuple[Curve, ...] = ()
    time: tuple[TimeBar, ...] = ()
    accuracy: tuple[AccuracyPoint, ...] = ()
    capacity: tuple[CapacityBar, ...] = ()
    kv: tuple[KvBar, ...] = ()
    cost: tuple[CostBar, ...] = ()


@dataclass(frozen=True)
class Report:
    title: str
    created_at: str
    price_per_gpu_hour: float | None
    runs: tuple[RunEntry, ...]
    skipped: tuple[Skipped, ...]
    answers: tuple[AnswerGroup, ...]
    verdicts: tuple[Verdict, ...]
    figures: Figures
    warmups: tuple[str, ...] = ()     # untimed warm-up starts before the timed layouts
    commands: tuple[str, ...] = ()    # what made the runs and this report, exactly as typed
    environment: tuple[tuple[str, str], ...] = ()
    schema_version: int = SCHEMA_VERSION

    def run(self, path: str) -> RunEntry | None:
        return next((r for r in self.runs if r.path == path), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # Python's JSON: a request counted as infinitely late stays Infinity (read back as it was)
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        return _build(cls, data)


@functools.cache
def _hints(tp) -> dict:
    return typing.get_type_hints(tp)


def _build(tp, value):
    """A record of type tp from its dataclasses.asdict form (lists back to tuples, nested records)."""
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.name in value})
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        return tuple(_build(a, v) for a, v in zip(args, value))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], value) if len(inner) == 1 else value
    return value


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


# Where the verdict sentences come from, in the order the report shows them: each takes the
# finished runs and the price of a GPU-hour and returns Verdict records. A new kind of verdict
# (engines against each other, a deterministic mode's cost) joins here and reaches every renderer.
VERDICT_SOURCES: list[Callable[[list[FoundRun], float | None], list[Verdict]]] = [batch_verdicts, serving_verdicts]


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


def write_text(path: str | Path, text: str) -> Path:
    """Written whole or not at all (a killed report leaves the old file), readable as a plain file
    would be (the temporary file's 0600 would hide a page shared on a cluster)."""
    import os
    from evaluator.store import atomic_write
    path = Path(path)
    atomic_write(path, text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def write_json(report: Report, path: str | Path) -> Path:
    return write_text(path, report.to_json())


def read_json(path: str | Path) -> Report:
    return Report.from_dict(json.loads(Path(path).read_text()))
