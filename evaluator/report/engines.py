"""Which engine to run, said only where the engines ran like for like. Runs of different engines are
set side by side when everything but the engine matches (runs.engine_key: model and data by
fingerprint, device and count, workload, traffic, levels and SLOs, context length, sampling,
deterministic mode, quantisation). Each pair of engines gets one record and one sentence: each
engine's best run (offline: the shortest start-up + generate at the measured prompt count; serving:
the highest capacity at the SLOs with its interval, else the most goodput), the engine and layout to
run, the accuracy difference (McNemar), or, where their settings differ in a way that changes speed
(evaluator.report.likeforlike) or one start compiled and the other did not, why they cannot be ranked:
"vllm ran eager (given), sglang with CUDA graphs (default)". What the deterministic mode and online
quantisation cost is evaluator.report.variants; sentences() gives both, as the report prints them.

    python -m evaluator.report results/ --compare
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluator.records import Sample
from evaluator.report import analysis
from evaluator.report.likeforlike import Difference, compare_settings
from evaluator.report.runs import FoundRun, engine_key, layout_label, quantization, run_settings, start_state


@dataclass(frozen=True)
class EngineVerdict:
    """Two engines on one workload, device count and load: the engine and layout to run, or why not."""
    workload: str                     # offline | serve
    scope: str                        # "1 × H200, offline, 1319 prompts of gsm8k_test.parquet, model demo, T=0, ..."
    engines: tuple[str, str]          # in order of first appearance
    runs: tuple[str, str]             # each engine's best run (run ids), same order
    paths: tuple[str, str]            # the same runs' folders (run ids repeat across folders)
    comparable: bool
    differences: tuple[Difference, ...]
    best: str | None                  # "vllm 1x1": the engine and layout to run (None: not comparable, or a tie)
    beyond_intervals: bool | None     # serving capacity: the difference is larger than both intervals
    sentence: str


def _start_difference(ra: FoundRun, rb: FoundRun) -> Difference | None:
    """Offline: start-up is part of the time; a start that compiled is not ranked against one that did not."""
    sa, sb = start_state(ra), start_state(rb)
    if sa == sb or "unknown" in (sa, sb):
        return None
    words = {"cold": "compiled at its start (cold)", "warm": "reused its compile cache (warm)",
             "none": "had nothing to compile"}
    ea, eb = ra.summary.config.engine, rb.summary.config.engine
    return Difference("start", f"{ea} {words[sa]}, {eb} {words[sb]}", "cold" in (sa, sb))


def _label(run: FoundRun) -> str:
    return f"{run.summary.config.engine} {layout_label(run.summary)}"


def _device(run: FoundRun) -> str:
    s, c = run.summary, run.summary.config
    name = s.device_name.removeprefix("NVIDIA ") if c.device == "cuda" else s.device_name or "cpu"
    return f"{c.dp * c.tp} × {name}"


def _scope(run: FoundRun) -> str:
    s, c = run.summary, run.summary.config
    sp = c.sampling
    sampling = f"T={sp.temperature:g}, max {sp.max_tokens} tokens" + (", eos off" if sp.ignore_eos else "")
    extra = "".join([f", context {c.max_model_len}" if c.max_model_len else "",
                     ", deterministic mode" if c.deterministic else "",
                     f", {quantization(c)}" if quantization(c) else ""])
    if c.workload == "offline":
        return (f"{_device(run)}, offline, {s.prompts} prompts of {Path(c.data).name} (model {Path(c.model).name}, "
                f"{sampling}{extra})")
    traffic = (s.traffic or {}).get("name", "gsm8k")
    load = f"GSM8K, up to {s.prompts} prompts a level" if traffic == "gsm8k" else traffic
    return f"{_device(run)}, serving {load} (model {Path(c.model).name}, {sampling}{extra})"


def _slo(run: FoundRun, percentile: bool) -> str:
    sv = run.summary.config.serve
    q = f" p{sv.slo_percentile:g}" if percentile else ""
    return " and ".join(x for x in (f"TTFT{q} ≤ {sv.slo_ttft_ms:g} ms" if sv.slo_ttft_ms else "",
                                    f"TPOT{q} ≤ {sv.slo_tpot_ms:g} ms" if sv.slo_tpot_ms else "") if x)


def _samples(run: FoundRun, cache: dict) -> list[Sample]:
    from evaluator.store import RunDir
    if run.path not in cache:
        cache[run.path] = RunDir(run.path).read_samples()
    return cache[run.path]


def equivalence(base: FoundRun, other: FoundRun, cache: dict) -> tuple[analysis.Equivalence | None, str]:
    """The two runs' answers paired by prompt, or None and why not. Serving runs are paired on the
    prompts both answered (a capacity search's probes send different numbers of requests)."""
    if base.summary.strict_accuracy is None or other.summary.strict_accuracy is None:
        return None, "accuracy not measured (the traffic is not GSM8K)"
    try:
        a = _samples(base, cache)
        b = _samples(other, cache)
    except (OSError, ValueError, KeyError, TypeError):
        missing = base if base.path not in cache else other
        return None, f"answers not paired ({missing.path / 'samples.jsonl'} cannot be read)"
    if base.summary.config.workload == "serve":
        common = {s.index for s in a} & {s.index for s in b}
        a, b = [s for s in a if s.index in common], [s for s in b if s.index in common]
    if not a:
        return None, "answers not paired (no prompt answered by both)"
    try:
        return analysis.compare_samples(a, b), ""
    except analysis.AnalysisError as e:
        return None, f"answers not paired ({e})"


def _accuracy(first: FoundRun, second: FoundRun, cache: dict) -> str:
    eq, why = equivalence(second, first, cache)
    if eq is None:
        return why
    f = eq.flexible
    verdict = "equal" if f.p_value >= 0.05 else "not equal"
    return (f"flexible accuracy {verdict}: {_label(first)} {f.accuracy:.3f}, {_label(second)} {f.baseline_accuracy:.3f} "
            f"(McNemar p = {f.p_value:.2g}, {eq.prompts} prompts paired)")


def _like_for_like(engines: tuple[str, str], settings: tuple, diffs: tuple[Difference, ...]) -> str:
    a = settings[0]
    shared = [x for x in (a.execution and ("both " + {"eager": "eager", "compiled": "compiled",
                                                        "CUDA graphs": "with CUDA graphs"}[a.execution])
                          if settings[1].execution == a.execution else "",
                          f"in {a.dtype}" if a.dtype and a.dtype == settings[1].dtype else "") if x]
    notes = [d.text for d in diffs if not d.blocking]
    return "Like for like" + (f" ({' '.join(shared)})" if shared else "") + (f": {'; '.join(notes)}" if notes else "")


def _offline_sentence(best: tuple[FoundRun, FoundRun], scope: str, diffs, settings, cache) -> tuple[str, str | None]:
    n = best[0].summary.prompts
    costs = [analysis.cost(_label(r), r.summary.startup_s, r.summary.generate_s, n) for r in best]
    order = sorted(range(2), key=lambda i: (costs[i].time_s(n), costs[i].startup_s))
    fast, slow = order
    cf, cs = costs[fast], costs[slow]
    rf, rs = best[fast], best[slow]
    head = (f"On {scope}: {cf.label} is fastest at {n} prompts, {cf.time_s(n):.1f} s (start-up {cf.startup_s:.1f} s "
            f"+ generate {rf.summary.generate_s:.2f} s); {cs.label} {cs.time_s(n):.1f} s (start-up "
            f"{cs.startup_s:.1f} s + generate {rs.summary.generate_s:.2f} s), "
            f"{cs.time_s(n) / cf.time_s(n):.2f}× as long.")
    tf, ts = rf.summary.output_tokens_per_s, rs.summary.output_tokens_per_s
    if cs.per_prompt_s < cf.per_prompt_s:
        k = analysis.first_count_faster(cs, cf)
        speedup = f"{cf.per_prompt_s / cs.per_prompt_s:.1f}×" if cs.per_prompt_s else "far faster"
        tail = (f" Generation alone is faster on {cs.label} ({speedup} per prompt; "
                f"{ts:,.0f} against {tf:,.0f} output tok/s): from {k} prompts on it would finish first (a "
                f"straight-line estimate from this one batch).")
    else:
        ratio = cs.per_prompt_s / cf.per_prompt_s if cf.per_prompt_s else float("inf")
        tail = f" It generates faster too ({ratio:.1f}× per prompt; {tf:,.0f} against {ts:,.0f} output tok/s)."
    return (f"{head}{tail} {_like_for_like((rf.summary.config.engine, rs.summary.config.engine), settings, diffs)}. "
            f"{_capital(_accuracy(rf, rs, cache))}."), cf.label


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _capacity(run: FoundRun) -> tuple[float | None, float, float, str]:
    """(rate held, interval low, interval high, the interval in words): the capacity record's own
    interval (ci_low / ci_high) where it has one, else the search's bracket."""
    c = run.summary.capacity or {}
    rate = c.get("rate")
    if c.get("ci_low") is not None and c.get("ci_high") is not None:
        return rate, float(c["ci_low"]), float(c["ci_high"]), f"CI {c['ci_low']:.3g}–{c['ci_high']:.3g}"
    top = c.get("lowest_failed")
    hi = float(top) if top is not None else float("inf")
    return rate, float(rate or 0.0), hi, f"bracket {rate or 0:g}–{'not reached' if top is None else f'{top:g}'}"


def _best_serving(runs: list[FoundRun]) -> FoundRun:
    if all(r.summary.capacity for r in runs):
        return max(runs, key=lambda r: (r.summary.capacity or {}).get("rate") or 0.0)
    slo = bool(_slo(runs[0], False))
    return max(runs, key=lambda r: max((lv["goodput_rps"] if slo else lv["output_tokens_per_s"]) or 0.0
                                       for lv in r.summary.levels))


def _serving_sentence(best: tuple[FoundRun, FoundRun], scope: str, diffs, settings, cache) -> tuple[str, str | None, bool | None]:
    like = _like_for_like(tuple(r.summary.config.engine for r in best), settings, diffs)
    if all(r.summary.capacity for r in best):
        found = sorted(best, key=lambda r: -(_capacity(r)[0] or 0.0))
        (ra, la, ha, ia), (rb, lb, hb, ib) = (_capacity(r) for r in found)
        beyond = la > hb
        parts = f"{_label(found[0])} holds {ra or 0:g} req/s ({ia}), {_label(found[1])} {rb or 0:g} ({ib})"
        judged = ("the difference is beyond the intervals" if beyond
                  else "the difference is not beyond the intervals (they overlap: a tie at this precision)")
        sentence = (f"On {scope}, under {_slo(found[0], True)}: {parts}; {judged}. {like}. "
                    f"{_capital(_accuracy(found[0], found[1], cache))}.")
        return sentence, _label(found[0]) if beyond else None, beyond
    slo = _slo(best[0], False)
    key = "goodput_rps" if slo else "output_tokens_per_s"

    def top(r: FoundRun) -> dict:
        return max(r.summary.levels, key=lambda lv: lv[key] or 0.0)
    found = sorted(best, key=lambda r: -(top(r)[key] or 0.0))
    la, lb = top(found[0]), top(found[1])
    unit = "req/s of goodput" if slo else "output tok/s"
    fmt = ".2f" if slo else ",.0f"
    ratio = f", {la[key] / lb[key]:.2f}×" if lb[key] else ""
    sentence = (f"On {scope}{', under ' + slo if slo else ''}: {_label(found[0])} gives {la[key]:{fmt}} {unit} "
                f"(at {la['level']}), {_label(found[1])} {lb[key]:{fmt}} (at {lb['level']}){ratio}; one "
                f"measurement each, no interval (a capacity search gives one). {like}. "
                f"{_capital(_accuracy(found[0], found[1], cache))}.")
    return sentence, _label(found[0]), None


def _not_comparable(best: tuple[FoundRun, FoundRun], scope: str, diffs) -> str:
    a, b = (r.summary.config.engine for r in best)
    blocking = "; ".join(d.text for d in diffs if d.blocking)
    if best[0].summary.config.workload == "offline":
        n = best[0].summary.prompts
        measured = ", ".join(f"{_label(r)} {r.summary.startup_s + r.summary.generate_s:.1f} s" for r in best)
    elif all(r.summary.capacity for r in best):
        measured = ", ".join(f"{_label(r)} holds {(r.summary.capacity or {}).get('rate') or 0:g} req/s" for r in best)
        n = None
    else:
        measured = ", ".join(f"{_label(r)} {max(lv['output_tokens_per_s'] or 0 for lv in r.summary.levels):,.0f} "
                             f"output tok/s at best" for r in best)
        n = None
    at = f" at {n} prompts" if n else ""
    return (f"On {scope}: {a} and {b} cannot be ranked, they did not run like for like: {blocking}. Measured{at}, "
            f"not ranked: {measured}. Run both with the same settings (each engine's own defaults, graphs on) to "
            f"compare them.")


def candidates(runs: list[FoundRun]) -> list[FoundRun]:
    """Runs that speak for their engine: offline runs that timed every prompt, serving runs with levels."""
    return [r for r in runs if (r.summary.config.workload == "offline" and not r.summary.resumed
                                and r.summary.prompts > 0)
            or (r.summary.config.workload == "serve" and r.summary.levels)]


def verdicts(runs: list[FoundRun]) -> list[EngineVerdict]:
    """One verdict per pair of engines that measured the same thing (engine_key), in the order the
    runs came: each engine's best run (offline: shortest start-up + generate at the measured count;
    serving: the highest capacity, else the most goodput under the SLOs, else the most output)."""
    groups: dict[tuple, list[FoundRun]] = {}
    for r in candidates(runs):
        groups.setdefault(engine_key(r), []).append(r)
    out, cache = [], {}
    for group in groups.values():
        engines = list(dict.fromkeys(r.summary.config.engine for r in group))
        for i, ea in enumerate(engines):
            for eb in engines[i + 1:]:
                out.append(_verdict(group, ea, eb, cache))
    return out


def _best(group: list[FoundRun], engine: str) -> FoundRun:
    mine = [r for r in group if r.summary.config.engine == engine]
    if mine[0].summary.config.workload == "serve":
        return _best_serving(mine)
    n = mine[0].summary.prompts
    return min(mine, key=lambda r: (r.summary.startup_s + r.summary.generate_s, r.summary.startup_s, n))


def _verdict(group: list[FoundRun], ea: str, eb: str, cache: dict) -> EngineVerdict:
    best = (_best(group, ea), _best(group, eb))
    settings = tuple(run_settings(r) for r in best)
    diffs = compare_settings(ea, settings[0], eb, settings[1])
    workload = best[0].summary.config.workload
    if workload == "offline":
        start = _start_difference(*best)
        diffs += (start,) if start else ()
    scope = _scope(best[0])
    comparable = not any(d.blocking for d in diffs)
    beyond = None
    if not comparable:
        sentence, winner = _not_comparable(best, scope, diffs), None
    elif workload == "offline":
        sentence, winner = _offline_sentence(best, scope, diffs, settings, cache)
    else:
        sentence, winner, beyond = _serving_sentence(best, scope, diffs, settings, cache)
    return EngineVerdict(workload=workload, scope=scope, engines=(ea, eb), runs=tuple(r.summary.run_id for r in best),
                         paths=tuple(str(r.path) for r in best),
                         comparable=comparable, differences=diffs, best=winner, beyond_intervals=beyond,
                         sentence=sentence)
