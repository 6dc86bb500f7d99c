"""What a mode or a quantisation costs against the same engine and layout without it: each
deterministic run against the latest run of the same engine, layout and settings without the mode;
each quantised run (--quantized fp8: the engine's online FP8; a GGUF file) against its engine's run of
the model itself. Throughput (offline, the run's; serving, at the heaviest level both ran), the
identical-output rate and McNemar on the paired answers, in one sentence each.

    python -c "from evaluator.report.runs import find_runs; from evaluator.report.variants import variant_costs; print([c.sentence for c in variant_costs(find_runs('results'))])"
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from evaluator.report.engines import candidates, equivalence
from evaluator.report.runs import FoundRun, _data_id, layout_label, quantization


@dataclass(frozen=True)
class VariantCost:
    """What a mode or quantisation costs against the same engine and layout without it."""
    kind: str                         # "deterministic" or the quantisation ("fp8", "gguf")
    run: str
    baseline: str
    speed_ratio: float | None         # output tok/s with / without
    identical_rate: float | None      # answers identical to the run without it, character for character
    p_value: float | None             # McNemar, flexible accuracy
    sentence: str


def _twin_key(run: FoundRun) -> tuple:
    """Same engine, layout, settings and work, deterministic mode and quantisation aside."""
    s, c = run.summary, run.summary.config
    kwargs = {k: v for k, v in c.engine_kwargs.items() if k != "quantization"}
    return (_data_id(run), c.base_model or c.model, c.engine, c.dp, c.tp, c.dp_backend, c.sampling, c.device,
            s.device_name, c.max_model_len, json.dumps(kwargs, sort_keys=True), c.workload, c.serve,
            s.prompts if c.workload == "offline" else None)


def _throughput(run: FoundRun, other: FoundRun) -> tuple[float | None, float | None, str]:
    """Output tok/s of each: offline, the run's; serving, at the heaviest level both ran."""
    if run.summary.config.workload == "offline":
        return run.summary.output_tokens_per_s, other.summary.output_tokens_per_s, ""
    common = {lv["level"] for lv in run.summary.levels} & {lv["level"] for lv in other.summary.levels}
    if not common:
        return None, None, ""
    level = max(common, key=lambda name: next(lv["level_value"] for lv in run.summary.levels if lv["level"] == name))

    def at(r: FoundRun) -> float:
        return next(lv["output_tokens_per_s"] for lv in r.summary.levels if lv["level"] == level)
    return at(run), at(other), f" at {level}"


def _variant(run: FoundRun, base: FoundRun, kind: str, cache: dict) -> VariantCost:
    mine, theirs, where = _throughput(run, base)
    ratio = mine / theirs if mine and theirs else None
    eq, why = equivalence(base, run, cache)
    what = " in deterministic mode" if kind == "deterministic" else ""     # a quantised row's label names it
    without = "without it" if kind == "deterministic" else "unquantised"
    label = f"{run.summary.config.engine} {layout_label(run.summary)}"
    if ratio:
        pct = round(abs(1 - ratio) * 100)
        change = f"{pct}% {'slower' if ratio < 1 else 'faster'}" if pct else "no difference"
        speed = f"{mine:,.0f} output tok/s{where} against {theirs:,.0f} {without} ({ratio:.2f}×: {change})"
    else:
        speed = "no throughput to compare"
    if eq is None:
        answers = why
    else:
        answers = (f"identical output to the run {without} on {100 * eq.identical_rate:.1f}% of prompts "
                   f"({eq.identical_outputs}/{eq.prompts}); flexible accuracy {eq.flexible.accuracy:.3f} against "
                   f"{eq.flexible.baseline_accuracy:.3f} (McNemar p = {eq.flexible.p_value:.2g})")
    return VariantCost(kind=kind, run=run.summary.run_id, baseline=base.summary.run_id, speed_ratio=ratio,
                       identical_rate=None if eq is None else eq.identical_rate,
                       p_value=None if eq is None else eq.flexible.p_value,
                       sentence=f"{label}{what} ({run.summary.run_id} against {base.summary.run_id}): {speed}; "
                                f"{answers}.")


def variant_costs(runs: list[FoundRun]) -> list[VariantCost]:
    """Each deterministic run against the latest run of the same engine, layout and settings without
    the mode; each quantised run (--quantized: online fp8, a GGUF) against its engine's run of the model
    itself, same layout."""
    out, cache = [], {}
    usable = candidates(runs)
    for run in usable:
        c = run.summary.config
        if c.deterministic:
            twins = [r for r in usable if not r.summary.config.deterministic and quantization(r.summary.config)
                     == quantization(c) and _twin_key(r) == _twin_key(run)]
            if twins:
                out.append(_variant(run, twins[-1], "deterministic", cache))
        q = quantization(c)
        if q and not c.deterministic:
            bases = [r for r in usable if not quantization(r.summary.config) and not r.summary.config.deterministic
                     and _twin_key(r) == _twin_key(run)]
            if bases:
                out.append(_variant(run, bases[-1], q, cache))
    return out
