"""The report as one record: the runs with their raw numbers, the layouts that were skipped or
failed, the answers paired against their baselines (McNemar), the batch timing, the verdict
sentences, the figures' data, the command and the environment; plain data that reads back from
report.json unchanged. evaluator/report/build.py makes it from finished runs; nothing here prints or
formats a table: evaluator/report/render_*.py do, from this record alone.

    python -m evaluator.report results/compare-20260101-120000 --compare --html   # report.html + report.json
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

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
