"""Command line of one evaluation run: the flags, and turning them (or a run folder, for --resume)
into a checked RunConfig before anything is started or written.

    python -m evaluator --engine vllm --mode dp --gpus 2 --model models/qwen2.5-coder-0.5b-instruct \
        --data data/gsm8k_test.parquet --limit 64 --max-tokens 256
    python -m evaluator --engine vllm --mode dp --gpus 2 --workload serve --concurrency 1,4,16,64
    python -m evaluator --engine vllm --dp 2 --workload serve --dp-backend router --router-policy round_robin
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path

from evaluator.checks import check_config, check_run_dir
from evaluator.errors import UsageError
from evaluator.hosts import detect_device
from evaluator.layout import DP_BACKENDS, MODES, LayoutError, resolve
from evaluator.records import RunConfig, SamplingConfig, ServeConfig
from evaluator.sharding import SHARDING_MODES
from launchers.engines.base import ENGINES

# flags that may come with --resume: they change how the run is watched, not what it measures
RESUME_FLAGS = {"resume", "no_table", "engine_logs", "replica_timeout", "ray_address"}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block), still exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class RaisingParser(Parser):
    """The same flags for a caller that parses them as data (the comparison's flags after --):
    a usage error raises UsageError instead of exiting."""

    def error(self, message: str):
        raise UsageError(message)


def parse_flags(argv: list[str]) -> argparse.Namespace:
    """The evaluator's flags as a Namespace, UsageError for a bad one (nothing is printed)."""
    return build_parser(RaisingParser).parse_args(argv)


def levels(text: str) -> tuple[float, ...]:
    """'1,4,16' -> (1.0, 4.0, 16.0); 'inf' allowed (all requests at once)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def build_parser(parser_class: type[argparse.ArgumentParser] = Parser) -> argparse.ArgumentParser:
    p = parser_class(
        prog="python -m evaluator",
        description="Evaluate one serving layout (dp replicas x tp devices each) of vLLM or SGLang on GSM8K. "
                    "offline: one batch, start-up and generate time, throughput, strict/flexible accuracy. "
                    "serve: the engine's own OpenAI-compatible servers under load levels: TTFT, TPOT, ITL, "
                    "end-to-end latency, throughput per GPU, goodput, and the same accuracy.",
        epilog="Examples: python -m evaluator --engine vllm --mode dp --gpus 2 --model Qwen/Qwen2.5-7B-Instruct "
               "--data data/gsm8k_test.parquet | ... --workload serve --concurrency 1,4,16,64 --slo-ttft-ms 500. "
               "Resume an interrupted run: python -m evaluator --resume results/RUN_ID. "
               "Compare finished runs: python -m evaluator.report results/ --compare. "
               "Every layout in one command: python -m evaluator.compare --help",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("layout")
    g.add_argument("--engine", choices=sorted(ENGINES), default="vllm", help="inference engine")
    g.add_argument("--mode", choices=MODES,
                   help="single = 1 device; dp = GPUS replicas of 1 device; tp = 1 replica of GPUS devices; "
                        "hybrid = DP replicas of TP devices (DP x TP = GPUS). Default: from --dp/--tp when given "
                        "(each 1 when left out), else single")
    g.add_argument("--gpus", type=int, help="devices the layout uses (on a host without GPU: groups of "
                                            "--cpu-cores-per-device cores); default: 1, or DP x TP")
    g.add_argument("--dp", type=int, help="data-parallel replicas (with --mode hybrid, or alone)")
    g.add_argument("--tp", type=int, help="tensor-parallel devices per replica (with --mode hybrid, or alone)")
    g.add_argument("--pp", type=int, default=1,
                   help="pipeline stages per replica, a layout axis no backend maps yet: above 1 is refused with "
                        "the reason")
    g.add_argument("--ep", type=int, default=1,
                   help="expert-parallel size, a layout axis no backend maps yet: above 1 is refused with the reason")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto = cuda when a GPU is visible, else cpu")
    g.add_argument("--dp-backend", choices=DP_BACKENDS, default="ray",
                   help="ray = one engine per Ray actor (our DP; serving: our load client sends each request to "
                        "the server with the fewest in flight); native = one engine using its own data "
                        "parallelism (SGLang dp_size; vLLM only when serving: --data-parallel-size); router = "
                        "serving only: one server per replica behind the engine's own router from PyPI "
                        "(vllm-router, sglang-router), which routes every request by --router-policy")
    g.add_argument("--router-policy", metavar="POLICY",
                   help="--dp-backend router: the router's policy, in its own name: round_robin, power_of_two "
                        "(the less loaded of two), cache_aware (prefix-cache affinity, the routers' default), "
                        "random (default: cache_aware)")
    g.add_argument("--cpu-cores-per-device", type=int, default=1, help="CPU cores that make one device on CPU hosts")
    g.add_argument("--cpu-memory-fraction", type=float, default=0.5,
                   help="CPU hosts: fraction of RAM for all engines' KV caches together, split evenly "
                        "(vLLM-CPU's gpu_memory_utilization)")
    g.add_argument("--ray-address", help="join an existing Ray cluster (e.g. started by slurm/ray_cluster.sbatch)")
    d = p.add_argument_group("model and data")
    d.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct",
                   help="local model folder or hub id (made offline by: python -m datasets_prep model "
                        "qwen2.5-coder-0.5b-instruct)")
    d.add_argument("--tokenizer", metavar="DIR",
                   help="with a checkpoint file as --model (a GGUF): the folder of the model it was made from, for "
                        "its config and tokenizer")
    d.add_argument("--base-model", metavar="DIR",
                   help="the model --model is a quantised checkpoint of: its answers are paired with that model's "
                        "(McNemar), as evaluator.compare --quantized does")
    d.add_argument("--data", default="data/gsm8k_test.parquet", help="parquet made by python -m datasets_prep gsm8k")
    d.add_argument("--limit", type=int, help="first N prompts only (default: all)")
    s = p.add_argument_group("sampling")
    s.add_argument("--max-tokens", type=int, default=512, help="maximum new tokens per answer")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, in (0, 1]; 1 = off")
    s.add_argument("--top-k", type=int, default=-1, help="-1 = off")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    s.add_argument("--seed", type=int, default=0,
                   help="engine seed; with temperature > 0 prompt i uses seed+i, so its random stream does not "
                        "depend on which replica or batch it lands in (its arithmetic still may: see README)")
    s.add_argument("--n", type=int, default=1, help="answers per prompt; > 1 reports maj@N (needs temperature > 0)")
    s.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens (timing runs)")
    s.add_argument("--max-model-len", type=int, help="engine context length (default: the model's)")
    w = p.add_argument_group("workload")
    w.add_argument("--workload", choices=("offline", "serve"), default="offline",
                   help="offline = one batch through the engines; serve = the engines' OpenAI servers under load")
    w.add_argument("--concurrency", type=levels, metavar="N,N,...",
                   help="serve: closed-loop levels, requests in flight (default 1,4,16,64)")
    w.add_argument("--request-rate", type=levels, metavar="R,R,...",
                   help="serve: open-loop levels, Poisson arrivals in requests/s; inf = all at once")
    w.add_argument("--level-prompts", default="8x",
                   help="serve: requests each level plans to send, all fresh (none an earlier level sent): all (the "
                        "traffic's size), N, or Nx (N x the level's concurrency or rate, at most all). A GSM8K or "
                        "file traffic that cannot give every level fresh requests is refused before any engine "
                        "starts, unless --reuse-requests")
    w.add_argument("--level-min-s", type=float, default=10.0, metavar="S",
                   help="serve: a level goes on with more fresh requests (a concurrency level keeps its slots busy, a "
                        "rate level its schedule) until it has lasted S seconds, from what no later level needs; "
                        "0 = exactly the planned requests")
    w.add_argument("--warmup-requests", type=int, default=8, metavar="N",
                   help="serve: untimed requests per server before the first measured level, all in flight at "
                        "once (prompts made for the warm-up, of the traffic's typical length; no level sends them); "
                        "0 = none")
    w.add_argument("--reuse-requests", action="store_true",
                   help="serve: let levels re-send requests the servers already answered once the fresh ones run "
                        "out (those levels are marked: prefix caching serves them)")
    w.add_argument("--slo-ttft-ms", type=float, help="serve: time-to-first-token goal; goodput counts requests meeting it")
    w.add_argument("--slo-tpot-ms", type=float, help="serve: time-per-output-token goal")
    w.add_argument("--request-timeout", type=float, default=600.0, metavar="S", help="serve: seconds one request may take")
    w.add_argument("--traffic", default="gsm8k", metavar="SPEC",
                   help="serve: the load. gsm8k (the --data prompts, scored); FILE.jsonl (your requests: messages "
                        "or prompt, optional output_tokens, timestamp, session); FILE.json (ShareGPT); "
                        "synthetic:in=DIST,out=DIST[,n=N,prefix=TOKENS,prefixes=K,seed=S] with DIST a number, "
                        "uniform(a,b), normal(mean,sd) or lognormal(median,sigma), optionally [lo:hi]. Accuracy "
                        "always comes from GSM8K: other traffic is not scored (run the offline workload beside it)")
    w.add_argument("--replay", type=levels, metavar="S,S,...",
                   help="serve: levels that replay the traffic's own timestamps at these speeds (1 = as "
                        "recorded, 2 = twice as fast)")
    w.add_argument("--capacity", action="store_true",
                   help="serve: find the highest request rate (Poisson arrivals) at which the --slo-percentile "
                        "of TTFT and TPOT meets --slo-ttft-ms / --slo-tpot-ms: bracket, then bisect; each probe "
                        "is a level (the unit of resume)")
    w.add_argument("--capacity-start", type=float, default=1.0, metavar="R", help="serve: the search's first rate, req/s")
    w.add_argument("--capacity-levels", type=int, default=8, metavar="N", help="serve: at most N probes")
    w.add_argument("--capacity-tolerance", type=float, default=0.1, metavar="F",
                   help="serve: stop once the bracket's top / bottom is at most 1 + F")
    w.add_argument("--capacity-repeats", type=int, default=2, metavar="N",
                   help="serve: a probe whose percentile's interval straddles the SLO is run again at the same rate "
                        "with fresh requests (pooled) up to N times, then decided by its point estimate; repeats "
                        "count against --capacity-levels")
    w.add_argument("--slo-confidence", type=float, default=0.9, metavar="C",
                   help="serve: capacity: a probe holds when the C bootstrap interval of its percentile is within "
                        "the SLO, misses when it is beyond; the capacity's own interval is at C too")
    w.add_argument("--slo-percentile", type=float, default=90.0, metavar="Q",
                   help="serve: capacity: the percentile of TTFT and TPOT (failed requests count as late) that "
                        "must meet the SLOs")
    w.add_argument("--max-concurrency", type=int, metavar="N",
                   help="serve: rate and replay levels: at most N requests in flight (default: no cap)")
    w.add_argument("--health-interval", type=float, default=5.0, metavar="S",
                   help="serve: how often the client asks busy servers' /health; a server that fails twice "
                        "running (hung) is marked dead and its requests go to the others")
    e = p.add_argument_group("engine and run")
    e.add_argument("--engine-kwargs", default="{}", metavar="JSON",
                   help="extra engine arguments in the engine's own names, e.g. '{\"enforce_eager\": true}' "
                        "(serve: turned into the server's flags, --enforce-eager)")
    e.add_argument("--deterministic", action="store_true",
                   help="turn on the engine's own reproducibility mode (vLLM VLLM_BATCH_INVARIANT=1, SGLang "
                        "--enable-deterministic-inference): answers no longer depend on the batch they were in, "
                        "at a cost in speed; part of the speed key")
    e.add_argument("--sharding", choices=SHARDING_MODES, default="contiguous",
                   help="contiguous = equal counts; balanced = equal prompt tokens; dynamic = shared queue of chunks")
    e.add_argument("--chunk-size", type=int, help="prompts per generate call (default: a replica's whole shard; "
                                                  "dynamic: ~1/8 of it). Smaller flushes to disk sooner but "
                                                  "batches less")
    e.add_argument("--on-replica-failure", choices=("rerun", "fail"), default="rerun",
                   help="rerun = give a dead replica's prompts (or requests) to the others; fail = stop at once")
    e.add_argument("--replica-timeout", type=float, metavar="S",
                   help="seconds a replica may take to start, or to finish one chunk, before it counts as dead")
    e.add_argument("--output-dir", default="results", help="runs are written to OUTPUT_DIR/RUN_ID/")
    e.add_argument("--run-id", help="name of the run's folder, one plain name (default: time-engine-layout, "
                                    "e.g. 20261201-120000-vllm-dp2)")
    e.add_argument("--resume", metavar="RUN_DIR",
                   help="finish an interrupted run with its own settings: only missing prompts (offline) or load "
                        "levels (serve) are run. Refused when its data file or model changed since")
    e.add_argument("--no-table", action="store_true", help="do not print the comparison table at the end")
    e.add_argument("--engine-logs", action="store_true", help="stream the engines' own logs to stderr "
                                                              "(otherwise they stay in Ray's log folder)")
    return p


def serving_dests(parser: argparse.ArgumentParser | None = None) -> set[str]:
    """The flags of the "workload" group that only a serving run reads (--concurrency, the SLOs,
    the traffic...): the group is the definition, so a flag added there is covered."""
    parser = parser or build_parser()
    group = next(g for g in parser._action_groups if g.title == "workload")
    return {a.dest for a in group._group_actions} - {"workload"}


def typed_serving_flags(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The serving-only flags whose values differ from their defaults, as --flag-names."""
    parser = parser or build_parser()
    return sorted("--" + d.replace("_", "-") for d in serving_dests(parser) if getattr(args, d) != parser.get_default(d))


def for_workload(args: argparse.Namespace, workload: str, parser: argparse.ArgumentParser | None = None,
                 **layout) -> argparse.Namespace:
    """A copy of a comparison's evaluator flags for one run: its workload and layout set, and, for
    an offline run of a comparison that also serves, the serving-only flags back at their defaults
    (they are the serving runs' flags: an offline run would refuse them)."""
    parser = parser or build_parser()
    out = argparse.Namespace(**vars(args))
    if workload != "serve":
        for dest in serving_dests(parser):
            setattr(out, dest, parser.get_default(dest))
    out.workload = workload
    for key, value in layout.items():
        setattr(out, key, value)
    return out


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """(own flags, the evaluator flags after `--`) of a command that runs evaluator runs."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The dests of the flags actually typed (not their defaults)."""
    bare = build_parser()
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return set(vars(bare.parse_args(argv)))


def serve_config(args: argparse.Namespace, traffic: str = "gsm8k") -> ServeConfig | None:
    if args.workload != "serve":
        typed = typed_serving_flags(args)
        if typed:
            raise UsageError(f"{', '.join(typed)} {'is' if len(typed) == 1 else 'are'} for --workload serve")
        return None
    given = [name for name, v in (("--concurrency", args.concurrency), ("--request-rate", args.request_rate),
                                  ("--replay", args.replay), ("--capacity", args.capacity)) if v]
    if len(given) > 1:
        raise UsageError(f"give one of --concurrency, --request-rate, --replay and --capacity, not {' and '.join(given)}")
    if args.capacity:
        kind, values = "rate", ()
    elif args.replay:
        kind, values = "replay", args.replay
    elif args.request_rate:
        kind, values = "rate", args.request_rate
    else:
        kind, values = "concurrency", args.concurrency or (1, 4, 16, 64)
    return ServeConfig(level_kind=kind, levels=tuple(values), level_prompts=args.level_prompts,
                       slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms,
                       request_timeout_s=args.request_timeout, traffic=traffic, capacity=args.capacity,
                       capacity_start=args.capacity_start, capacity_levels=args.capacity_levels,
                       capacity_tolerance=args.capacity_tolerance, slo_percentile=args.slo_percentile,
                       max_concurrency=args.max_concurrency, health_interval_s=args.health_interval,
                       warmup_requests=args.warmup_requests, level_min_s=args.level_min_s,
                       reuse_requests=args.reuse_requests, capacity_repeats=args.capacity_repeats,
                       slo_confidence=args.slo_confidence)


def router_policy(args: argparse.Namespace) -> str | None:
    """--router-policy, or the router's own default for --dp-backend router (None otherwise: a
    policy given without a router is refused by the layout)."""
    if args.dp_backend != "router" or args.router_policy:
        return args.router_policy
    from launchers.engines.base import router_of
    router = router_of(args.engine)
    return router.default_policy if router else "cache_aware"


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's settings from its flags, checked (evaluator.checks) before anything starts."""
    try:
        layout = resolve(args.mode, args.gpus, args.dp, args.tp, args.dp_backend, router_policy(args), args.pp, args.ep)
    except LayoutError as e:
        raise UsageError(str(e)) from None
    try:
        engine_kwargs = json.loads(args.engine_kwargs)
    except json.JSONDecodeError as e:
        raise UsageError(f"--engine-kwargs is not valid JSON: {e}") from None
    if not isinstance(engine_kwargs, dict):
        raise UsageError("--engine-kwargs must be a JSON object, e.g. '{\"enforce_eager\": true}'")
    if args.cpu_memory_fraction is not None and not math.isfinite(args.cpu_memory_fraction):
        raise UsageError(f"--cpu-memory-fraction must be a number (got {args.cpu_memory_fraction})")
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    tokenizer = str(Path(args.tokenizer).resolve()) if args.tokenizer else None
    base_model = str(Path(args.base_model).resolve()) if args.base_model and Path(args.base_model).exists() \
        else args.base_model
    traffic = args.traffic
    if traffic not in ("gsm8k",) and not traffic.startswith("synthetic:"):
        traffic = str(Path(traffic).resolve())      # a file: the run names it wherever it is resumed from
    cfg = RunConfig(
        engine=args.engine, layout=layout, model=model,
        data=str(Path(args.data).resolve()), device=detect_device(args.device),
        sampling=SamplingConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
                                n=args.n, ignore_eos=args.ignore_eos),
        limit=args.limit, max_model_len=args.max_model_len, engine_kwargs=engine_kwargs,
        cpu_cores_per_device=args.cpu_cores_per_device, cpu_memory_fraction=args.cpu_memory_fraction,
        sharding=args.sharding, chunk_size=args.chunk_size,
        on_replica_failure=args.on_replica_failure, replica_timeout_s=args.replica_timeout,
        ray_address=args.ray_address, engine_logs=args.engine_logs, workload=args.workload,
        serve=serve_config(args, traffic), deterministic=args.deterministic, tokenizer=tokenizer,
        base_model=base_model)
    check_config(cfg)
    return cfg


def new_run(args: argparse.Namespace) -> tuple[RunConfig, str, Path]:
    cfg = config_from_args(args)
    run_id = args.run_id or default_run_id(cfg)
    return cfg, run_id, check_run_dir(args.output_dir, run_id)


def resume_run(args: argparse.Namespace, typed: set[str]) -> tuple[RunConfig, str, Path]:
    """The interrupted run's own settings, checked again against this host; flags that would
    change what it measures are refused (the run keeps the settings it started with)."""
    from evaluator.records import RecordError
    from evaluator.store import CONFIG, RunDir
    extra = sorted(typed - RESUME_FLAGS)
    if extra:
        flags = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise UsageError(f"--resume continues a run with the settings it started with; {flags} cannot be given "
                         f"with it (start a new run to change them)")
    run_dir = RunDir(args.resume)
    if not (run_dir.path / CONFIG).is_file():
        raise UsageError(f"--resume {args.resume}: no {CONFIG} there, not a run folder")
    if run_dir.finished:
        raise UsageError(f"--resume {args.resume}: that run already finished (summary.json exists)")
    try:
        cfg = run_dir.read_config()
    except (RecordError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise UsageError(f"--resume {args.resume}: {CONFIG} cannot be read ({e})") from None
    overrides = {k: getattr(args, k) for k in ("replica_timeout", "ray_address") if k in typed}
    if overrides:
        import dataclasses
        cfg = dataclasses.replace(cfg, **{("replica_timeout_s" if k == "replica_timeout" else k): v
                                          for k, v in overrides.items()})
    if "engine_logs" in typed:
        import dataclasses
        cfg = dataclasses.replace(cfg, engine_logs=True)
    check_config(cfg)
    return cfg, run_dir.path.name, run_dir.path


def default_run_id(cfg: RunConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    serve = "-serve" if cfg.workload == "serve" else ""
    return f"{stamp}-{cfg.engine}-{cfg.layout.name}{serve}"
