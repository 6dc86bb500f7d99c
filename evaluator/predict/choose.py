"""The comparison's prediction step (python -m evaluator.compare --predict / --measure-top K): a
profile per engine (measured now, stored in the comparison folder as profile-<engine>.json, or given
with --profile), every planned layout predicted and printed ranked with its terms before any layout
runs, and each layout's prediction written into its run folder (prediction.json) for the report to
set against what it measures. With --measure-top K the single-device layout runs first (the
calibration, and the sanity check of the profile), the prediction is fitted again with what it
measured, and only the K best predicted layouts of each engine and workload run; the others are
listed as "predicted, not measured". A resumed comparison finds its profiles and its single run on
disk and makes the same choice.

    python -m evaluator.compare --engines vllm --gpus 2 --predict --measure-top 1 -- --device cpu ...
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

from rich.console import Console

from evaluator.errors import UsageError
from evaluator.predict import fit
from evaluator.predict import model as M
from evaluator.predict.layouts import LayoutInput, LayoutPrediction, Workload, predict, ranked, render
from evaluator.predict.records import Profile, load_profile, write_profile
from evaluator.records import RunConfig

PREDICTION = "prediction.json"


def profile_path(out: Path, engine: str) -> Path:
    return out / f"profile-{engine}.json"


def given_profiles(text: str | None, engines: list[str]) -> dict[str, Profile]:
    """--profile FILE[,FILE]: one profile per engine, each for an engine of the comparison."""
    found: dict[str, Profile] = {}
    for path in [p.strip() for p in (text or "").split(",") if p.strip()]:
        profile = load_profile(path)
        if profile.engine not in engines:
            raise UsageError(f"--profile {path} profiles {profile.engine}, which is not among --engines "
                             f"({', '.join(engines)})")
        if profile.engine in found:
            raise UsageError(f"--profile: two profiles of {profile.engine}")
        found[profile.engine] = profile
    return found


def check_flags(args, engines: list[str], resumed: bool = False) -> dict[str, Profile]:
    """The prediction flags, checked before anything starts; the profiles given (none when resumed:
    the comparison folder keeps a copy of each)."""
    if args.measure_top is not None and args.measure_top < 0:
        raise UsageError(f"--measure-top must be 0 or more (got {args.measure_top})")
    if args.profile and not (args.predict or args.measure_top is not None):
        raise UsageError("--profile is read by --predict or --measure-top")
    profiles = {} if resumed else given_profiles(args.profile, engines)
    missing = [e for e in engines if e not in profiles]
    if args.dry_run and (args.predict or args.measure_top is not None) and missing:
        raise UsageError(f"--dry-run starts no engine, so it predicts only from stored profiles: give --profile for "
                         f"{', '.join(missing)} (python -m evaluator.profile writes one)")
    return profiles


def shape_of(cfg: RunConfig) -> LayoutInput:
    """The model's layout input from a run's config (the one place a layout record maps onto it)."""
    from evaluator.memory import device_bytes, predict as memory
    from evaluator.pool import engine_spec
    from launchers.engines.base import batch_limits
    seqs, tokens = batch_limits(cfg.engine, engine_spec(cfg), cfg.workload == "serve", device_bytes(cfg))
    kv = memory(cfg)
    label = f"{cfg.engine} {cfg.layout.label}" + (" serve" if cfg.workload == "serve" else "")
    return LayoutInput(label, cfg.dp, cfg.tp, cfg.dp_backend, M.Limits(seqs, tokens, kv.kv_cache_tokens if kv else None))


def workload_of(cfg: RunConfig, profile: Profile) -> tuple[Workload, str]:
    """What a layout is asked, and where the answer length comes from."""
    from evaluator.data import load_prompts, load_tokenizer
    s = cfg.sampling
    if s.ignore_eos:
        out, how = float(s.max_tokens), "answers of --max-tokens (EOS ignored)"
    elif profile.workload:
        out, how = profile.workload.output_tokens, f"answers of {profile.workload.output_tokens:.0f} tokens " \
                                                   f"({profile.workload.source})"
    else:
        out, how = float(s.max_tokens), "answers of at most --max-tokens (an upper bound: no length measured)"
    if cfg.workload == "offline":
        prompts = load_prompts(cfg.data, cfg.model_folder, cfg.limit)
        return Workload("offline", len(prompts), sum(p.prompt_tokens for p in prompts) / len(prompts), out * s.n), how
    serve = cfg.serve
    base_rate = None
    if serve.traffic == "gsm8k":
        prompts = load_prompts(cfg.data, cfg.model_folder, cfg.limit)
        count, prompt_tokens = len(prompts), sum(p.prompt_tokens for p in prompts) / len(prompts)
    else:
        from evaluator.traffic import load_traffic
        traffic = load_traffic(serve.traffic, load_tokenizer(cfg.model_folder), max_model_len=cfg.max_model_len,
                               default_max_tokens=s.max_tokens, seed=s.seed, limit=cfg.limit)
        shape = traffic.shape()
        count, prompt_tokens = shape["requests"], shape["prompt_tokens_mean"]
        if shape["max_tokens_mean"]:
            out, how = shape["max_tokens_mean"], f"answers of the traffic's output lengths ({traffic.name})"
        stamps = [r.timestamp_s for r in traffic.requests if r.timestamp_s is not None]
        if len(stamps) > 1 and max(stamps) > min(stamps):
            base_rate = len(stamps) / (max(stamps) - min(stamps))
    levels = tuple(v for v in serve.levels if math.isfinite(v))
    kind = serve.level_kind
    if kind == "replay":            # a replay at speed x is predicted as its mean rate, x times the trace's
        levels, kind = tuple(v * base_rate for v in levels) if base_rate else (), "rate"
    slo = (serve.slo_ttft_ms / 1000 if serve.slo_ttft_ms else None, serve.slo_tpot_ms / 1000 if serve.slo_tpot_ms else None)
    return Workload("serve", count, prompt_tokens, out, kind, levels, *slo), how


def calibrate(profile: Profile, single: RunConfig) -> M.Calibration:
    offline = shape_of(dataclasses.replace(single, workload="offline", serve=None)).limits
    from evaluator.records import ServeConfig
    serve = shape_of(dataclasses.replace(single, workload="serve", serve=single.serve or ServeConfig())).limits
    try:
        return fit.calibrate(profile, offline, serve)
    except ValueError as e:
        raise UsageError(f"cannot predict {profile.engine}: {e}") from None


def with_run(profile: Profile, folder: Path) -> Profile:
    """The profile plus what a finished single-device run measured (its batch or its levels)."""
    from evaluator.predict.stored import observations, read_summary
    o, l = observations(read_summary(folder), str(folder.name))
    return dataclasses.replace(profile, offline=profile.offline + tuple(o), serve=profile.serve + tuple(l))


def predict_all(planned: list, profiles: dict[str, Profile], singles: dict[str, RunConfig]) -> dict:
    """{run_id: (Planned, LayoutPrediction, how)} and {engine: Calibration} for every runnable layout."""
    cals = {engine: calibrate(profiles[engine], singles[engine]) for engine in profiles}
    found = {}
    for p in planned:
        if p.config is None or p.config.base_model:     # a quantised checkpoint is another model: not profiled
            continue
        engine = p.config.engine
        work, how = workload_of(p.config, profiles[engine])
        layout = shape_of(p.config)
        found[p.run_id] = (p, dataclasses.replace(predict(profiles[engine].shape, cals[engine], layout, work),
                                                  label=p.label), how)
    return {"layouts": found, "calibrations": cals}


def show(result: dict, console: Console, when: str) -> None:
    groups: dict[tuple, list] = {}
    for p, lp, how in result["layouts"].values():
        groups.setdefault((p.config.engine, p.workload), []).append((lp, how))
    for (engine, workload), items in groups.items():
        title = f"predicted {when}, {engine} {workload} ({items[0][1]}), best first:"
        for line in render([lp for lp, _ in items], result["calibrations"][engine], title):
            console.print(line, markup=False, highlight=False)


def write(result: dict, out: Path, when: str, run_ids: set[str]) -> None:
    """The comparison's prediction.json (every layout), and the named runs' own, which the report reads:
    a run already measured keeps the prediction made before it ran."""
    from evaluator.store import atomic_write
    for run_id, (p, lp, how) in result["layouts"].items():
        if run_id in run_ids and not (out / run_id / "summary.json").is_file():
            atomic_write(out / run_id / PREDICTION,
                         json.dumps({**lp.to_dict(), "when": when, "assumes": how}, indent=1) + "\n")
    atomic_write(out / PREDICTION, json.dumps({
        "when": when, "layouts": {rid: lp.to_dict() for rid, (_, lp, _) in result["layouts"].items()},
        "calibrations": {e: {**dataclasses.asdict(c), "allreduce": c.allreduce.source} for e, c in
                         result["calibrations"].items()}}, indent=1) + "\n")


def predict_plan(planned: list, args, out: Path, console: Console, given: dict[str, Profile],
                 run_first: Callable[[list], None] | None = None) -> list:
    """Profile, predict and print every layout; with --measure-top, run the single-device layouts
    (run_first), predict again and keep only the K best of each engine and workload. Returns the
    plan with the unchosen layouts marked "predicted, not measured"."""
    from evaluator.profile import Options, build
    # a quantised checkpoint's single row (base_model set) is not the calibration: the model itself is
    singles = {p.config.engine: p for p in planned if p.config is not None and p.config.dp * p.config.tp == 1
               and not p.config.base_model}
    engines = sorted({p.config.engine for p in planned if p.config is not None})
    profiles = dict(given)
    for engine in engines:
        if engine not in singles:
            raise UsageError(f"cannot predict {engine}: its single-device layout cannot run here, and the "
                             f"prediction is calibrated on one device")
        if engine not in profiles and profile_path(out, engine).is_file():
            profiles[engine] = load_profile(profile_path(out, engine))
        if engine not in profiles:
            tps = sorted({p.config.tp for p in planned if p.config is not None and p.config.engine == engine})
            cfg = dataclasses.replace(singles[engine].config, workload="offline", serve=None)
            profiles[engine] = build(cfg, tps, Options(), console)
        if not args.dry_run:
            write_profile(profiles[engine], profile_path(out, engine))
    configs = {e: singles[e].config for e in engines}
    result = predict_all(planned, profiles, configs)
    show(result, console, "before any layout runs")
    if args.dry_run:
        return planned
    first = [p for p in planned if p.config is not None and p.config.dp * p.config.tp == 1]
    write(result, out, "before any layout runs",
          set(result["layouts"]) if args.measure_top is None else {p.run_id for p in first})
    if args.measure_top is None:
        return planned
    if run_first is not None:
        run_first(first)
    ran = {e: [out / p.run_id for p in first if p.config.engine == e and (out / p.run_id / "summary.json").is_file()]
           for e in engines}
    for e in engines:
        for folder in ran[e]:
            profiles[e] = with_run(profiles[e], folder)
    when = "before any layout runs"
    if any(ran.values()):
        when = "with the single-device run(s) measured"
        result = predict_all(planned, profiles, configs)
        show(result, console, when)
    chosen = choose(planned, result, args.measure_top)
    write(result, out, when, {p.run_id for p in chosen if p.config is not None})
    return chosen


def choose(planned: list, result: dict, k: int) -> list:
    """The plan with, per engine and workload, all but the single-device layout and the K best
    predicted others marked as predicted, not measured."""
    keep, reason = set(), {}
    groups: dict[tuple, list[LayoutPrediction]] = {}
    ids = {}
    for run_id, (p, lp, _) in result["layouts"].items():
        if p.config.dp * p.config.tp == 1:
            keep.add(run_id)
            continue
        groups.setdefault((p.config.engine, p.workload), []).append(lp)
        ids[id(lp)] = run_id
    for items in groups.values():
        order = ranked(items)
        for rank, lp in enumerate(order, 1):
            if rank <= k:
                keep.add(ids[id(lp)])
            else:
                reason[ids[id(lp)]] = f"predicted, not measured (rank {rank} of {len(order)} besides single: " \
                                      f"{lp.headline()})"
    return [dataclasses.replace(p, config=None, skipped=reason[p.run_id]) if p.run_id in reason else p
            for p in planned]


def read_prediction(folder: Path) -> dict | None:
    """A run folder's prediction.json (None when the run was not predicted)."""
    try:
        return json.loads((Path(folder) / PREDICTION).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def against(summary, prediction: dict | None) -> dict:
    """A finished run's speed against its prediction, for the report row: offline generate s;
    serving, median TPOT at the level with the most output tokens/s."""
    from evaluator.memory import error
    empty = {"speed_what": None, "speed_predicted": None, "speed_measured": None, "speed_error": None}
    if not prediction:
        return empty
    if summary.config.workload == "offline":
        return {"speed_what": "generate s", "speed_predicted": prediction.get("generate_s"),
                "speed_measured": summary.generate_s, "speed_error": error(prediction.get("generate_s"), summary.generate_s)}
    levels = {l["level"]: l for l in prediction.get("levels", [])}
    measured = [l for l in summary.levels if l["level"] in levels and l.get("tpot_ms_p50") is not None]
    if not measured:
        return empty
    peak = max(measured, key=lambda l: l["output_tokens_per_s"])
    got, pred = peak["tpot_ms_p50"], 1000 * levels[peak["level"]]["tpot_s"]
    return {"speed_what": f"TPOT ms @{peak['level']}", "speed_predicted": pred, "speed_measured": got,
            "speed_error": error(pred, got)}


def speed_cell(row: dict) -> str:
    """'0.45 s (pred. 0.41, -9%)' or 'TPOT@c=4 4.10 ms (pred. 3.90, -5%)'; '-' without a prediction."""
    if row.get("speed_predicted") is None:
        return "-"
    err = "" if row["speed_error"] is None else f", {100 * row['speed_error']:+.0f}%"
    if row["speed_what"] == "generate s":
        return f"gen {row['speed_measured']:.2f} s (pred. {row['speed_predicted']:.2f}{err})"
    return f"TPOT{row['speed_what'].removeprefix('TPOT ms ')} {row['speed_measured']:.2f} ms " \
           f"(pred. {row['speed_predicted']:.2f}{err})"
