"""Finding finished runs on disk and deciding which of them may be set side by side.

Two keys decide it. Runs with the same speed key measured the same work under the same settings
that change speed (model and data by fingerprint, prompts, sampling, engine and its kwargs, context
length, device, CPU budget, workload and its load levels, the variables the backend set for the
engine, and the environment: engine and torch versions, device name and count): only those share
a baseline, a speedup, a break-even, a verdict (which also keeps cold and warm starts apart:
start_state). Runs with the same answer key answered the same prompts with the same model, sampling and context:
those are paired answer by answer (engines may differ: that is what is being compared). A resumed
run keeps its row but gives no speedup and is no baseline: its speed covers part of its prompts.

    python -c "from evaluator.report.runs import find_runs; print(len(find_runs('results')))"
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from evaluator.records import RecordError, RunConfig, RunSummary
from evaluator.store import CONFIG, REPLICAS, SUMMARY


@dataclass(frozen=True)
class FoundRun:
    """A finished run and the folder it lives in (its samples.jsonl is next to summary.json)."""
    summary: RunSummary
    path: Path
    fingerprint: str = ""             # short id of its data and model (config.json), "" when unknown
    environment: tuple = ()           # (name, version) of its engine, torch, ray, device (config.json)


def _recorded(folder: Path) -> tuple[str, tuple]:
    """The data/model fingerprint's short id and the environment config.json recorded."""
    from evaluator.fingerprint import short
    try:
        saved = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return "", ()
    # a quantised checkpoint answers the same questions as its base model: paired with it
    fp, env = saved.get("answers_fingerprint") or saved.get("fingerprint"), saved.get("environment") or {}
    return (short(fp) if fp else ""), tuple(sorted((k, v) for k, v in env.items() if k != "python"))


def find_runs(*paths: str | Path) -> list[FoundRun]:
    """Every finished run (summary.json) at or below the paths, oldest first. A summary this
    version cannot read is skipped with a warning naming it and why."""
    runs = []
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(path.rglob(SUMMARY))
        for f in files:
            if path.is_dir() and any(part.startswith(".") for part in f.relative_to(path).parts[:-1]):
                continue                # hidden folders (a comparison's .warmup/) hold no runs to report
            try:
                runs.append(FoundRun(RunSummary.from_dict(json.loads(f.read_text())), f.parent, *_recorded(f.parent)))
            except (json.JSONDecodeError, KeyError, TypeError, RecordError) as e:
                print(f"warning: skipping {f}: {e}", file=sys.stderr)
    return sorted(runs, key=lambda r: (r.summary.started_at, r.summary.run_id))


def load_runs(*paths: str | Path) -> list[RunSummary]:
    return [r.summary for r in find_runs(*paths)]


def _data_id(run: FoundRun | RunSummary) -> tuple:
    """The data and model by fingerprint when the run recorded one, by path otherwise."""
    if isinstance(run, FoundRun) and run.fingerprint:
        return ("fingerprint", run.fingerprint)
    s = run.summary if isinstance(run, FoundRun) else run
    return ("paths", s.config.model, s.config.data)


def _summary(run: FoundRun | RunSummary) -> RunSummary:
    return run.summary if isinstance(run, FoundRun) else run


def speed_key(run: FoundRun | RunSummary) -> tuple:
    """Runs with the same key may be compared for speed (speedup, baseline, break-even, verdict)."""
    s = _summary(run)
    c = s.config
    env = run.environment if isinstance(run, FoundRun) else ()
    # a serving run's prompt count is its widest level's, which its load levels already fix (a
    # capacity search's probes differ by layout): only an offline run's count is its batch
    prompts = s.prompts if c.workload == "offline" else None
    return (_data_id(run), c.model, c.tokenizer, c.engine, prompts, c.sampling, c.device, c.cpu_cores_per_device,
            c.cpu_memory_fraction, c.max_model_len, json.dumps(c.engine_kwargs, sort_keys=True), c.workload, c.serve,
            c.deterministic, env, tuple(sorted(s.engine_env.items())))


def run_settings(run: FoundRun):
    """What the run's engine ran with (launchers.engines.base.EngineSettings): as its summary recorded it,
    else as its replicas.json did (a run whose driver did not copy them into the summary), else as its
    config and the engine's own defaults say (a run from before settings were recorded)."""
    from launchers.engines.base import ENGINES, EngineSettings, settings
    recorded = run.summary.settings
    if recorded is None:
        try:
            replicas = json.loads((run.path / REPLICAS).read_text()).get("replicas", [])
            recorded = next((r["settings"] for r in replicas if r.get("settings")), None)
        except (OSError, json.JSONDecodeError, AttributeError):
            recorded = None
    if recorded is not None:
        return EngineSettings.from_dict(recorded)
    c = run.summary.config
    if c.engine not in ENGINES:
        return EngineSettings()
    from evaluator.pool import engine_spec
    return settings(c.engine, engine_spec(c))


def quantization(c: RunConfig) -> str:
    """"fp8" (the engine's online quantisation), "gguf" (a quantised checkpoint file), "" (as stored)."""
    q = c.engine_kwargs.get("quantization")
    return str(q) if q else "gguf" if str(c.model).endswith(".gguf") else ""


def engine_key(run: FoundRun) -> tuple:
    """Runs with the same key may be set side by side for an engine verdict: everything of the speed
    key except the engine and its own settings (which evaluator.report.engines compares in neutral
    names) and the layout (a verdict names the engine and layout to run): model and data by
    fingerprint, prompts, sampling, device and its name, device count, context length, workload,
    traffic, levels and SLOs, deterministic mode, quantisation."""
    s, c = run.summary, run.summary.config
    prompts = s.prompts if c.workload == "offline" else None
    return (_data_id(run), c.model, c.tokenizer, prompts, c.sampling, c.device, s.device_name, c.dp * c.tp,
            c.cpu_cores_per_device, c.cpu_memory_fraction, c.max_model_len, c.workload, c.serve, c.deterministic,
            quantization(c))


def start_state(run: FoundRun | RunSummary) -> str:
    """cold / warm / none / unknown: start-ups of different states are never ranked together."""
    return _summary(run).compile


def speed_groups(runs: list[FoundRun]) -> list[list[FoundRun]]:
    """Runs of one speed key and one start state, in order of first appearance."""
    out: dict[tuple, list[FoundRun]] = {}
    for r in runs:
        out.setdefault((speed_key(r), start_state(r)), []).append(r)
    return list(out.values())


def describe_speed_group(group: list[FoundRun], with_state: bool = True) -> str:
    """What a verdict compared, in words: engine, device, settings, start state, environment."""
    s = group[0].summary
    c = s.config
    parts = [c.engine, s.device_name if c.device == "cuda" else f"cpu, {c.cpu_cores_per_device} core(s)/device"]
    if c.engine_kwargs:
        parts.append("engine kwargs " + json.dumps(c.engine_kwargs, sort_keys=True))
    if c.max_model_len:
        parts.append(f"context {c.max_model_len}")
    if c.deterministic:
        parts.append("deterministic mode")
    if with_state:
        parts.append({"cold": "cold starts (compiled)", "warm": "warm starts (compile cache reused)",
                      "none": "starts with nothing to compile"}.get(start_state(group[0]), "start state unknown"))
    versions = [f"{k} {v}" for k, v in (group[0].environment or ()) if k == c.engine]
    return ", ".join(parts + versions)


def answer_key(run: FoundRun | RunSummary) -> tuple:
    """Runs with the same key can be compared answer by answer. A serving run's prompt count is
    left out: its levels each answered fresh prompts of the data, so it is paired on the prompts
    it shares with the other run (groups() puts it with the offline runs of the same data)."""
    s = _summary(run)
    c = s.config
    return (_data_id(run), s.prompts if c.workload == "offline" else None, c.sampling, c.max_model_len)


def baseline_for(run: FoundRun, runs: list[FoundRun]) -> FoundRun | None:
    """The latest single-device, not resumed run with the same speed key; for a quantised
    checkpoint (base_model), its base model's single-device run of the same engine and workload."""
    c = run.summary.config
    if c.base_model:
        # an online-quantised row (--quantized fp8) has the model itself as its base: not its own baseline
        bases = [r for r in runs if r.summary.config.model == c.base_model and r.summary.config.engine == c.engine
                 and r.summary.config.workload == c.workload and r.summary.config.layout.devices == 1
                 and not r.summary.resumed and not r.summary.config.base_model and answer_key(r) == answer_key(run)]
        return bases[-1] if bases else None
    singles = [r for r in runs if r.summary.config.layout.devices == 1 and not r.summary.resumed
               and speed_key(r) == speed_key(run)]
    return singles[-1] if singles else None


def layout_label(run: RunSummary) -> str:
    """The layout's own label ('2x1', '2x1 native', '2x1 router round_robin'), with what else
    tells two runs of one layout apart: the quantised checkpoint, the sharding."""
    c = run.config
    label = c.layout.label
    if c.base_model or c.engine_kwargs.get("quantization"):
        label += f" {c.engine_kwargs.get('quantization') or Path(c.model).name}"
    if c.sharding != "contiguous":
        label += f" {c.sharding}"
    return label


def run_label(run: FoundRun, group: list[FoundRun]) -> str:
    """engine + layout (+ serve), with the run id where two runs of the group would read the same."""
    label = _engine_layout(run.summary)
    same = [r for r in group if _engine_layout(r.summary) == label]
    return f"{label} [{run.summary.run_id}]" if len(same) > 1 else label


def _engine_layout(s: RunSummary) -> str:
    """"vllm 2x1", "vllm 2x1 serve": a serving run reads apart from its offline twin."""
    return f"{s.config.engine} {layout_label(s)}" + (" serve" if s.config.workload == "serve" else "")


def groups(runs: list[FoundRun]) -> list[list[FoundRun]]:
    """Runs that can be paired (answer_key), in order of first appearance; runs that scored no
    answers (serving traffic other than GSM8K) pair with nothing."""
    out: dict[tuple, list[FoundRun]] = {}
    scored = [r for r in runs if r.summary.strict_accuracy is not None]
    for r in [r for r in scored if r.summary.config.workload == "offline"]:
        out.setdefault(answer_key(r), []).append(r)
    for r in [r for r in scored if r.summary.config.workload != "offline"]:
        key = answer_key(r)
        same = [k for k in out if (k[0], k[2], k[3]) == (key[0], key[2], key[3])]
        out.setdefault(same[-1] if same else key, []).append(r)
    return sorted(out.values(), key=lambda g: min(runs.index(r) for r in g))


class ReportError(ValueError):
    """Bad report input (e.g. an unknown --baseline): one line, exit code 2."""


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
    """--baseline when it answered the same prompts, else the latest single-device run of the
    same speed key (as for the speedup column)."""
    if chosen is not None and chosen in group:
        return chosen
    return baseline_for(run, group)


def describe_group(group: list[FoundRun]) -> str:
    c, n = group[0].summary.config, group[0].summary.prompts
    s = c.sampling
    sampling = f"T={s.temperature:g}" + (f", n={s.n}" if s.n > 1 else "") + f", max {s.max_tokens} tokens"
    if s.ignore_eos:
        sampling += ", eos off"
    return f"{n} prompts of {Path(c.data).name}, model {Path(c.model).name}, {sampling}"
