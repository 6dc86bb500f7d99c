"""python -m evaluator.bench: the evaluator against the bare engine and against the ideal, as
ratios from one run; --startup-only breaks a replica's start-up down against the bare engine's
candidates; `serve` (evaluator.bench.serving) sets our load client beside `vllm bench serve`.

Each repeat runs, always in this order, so that the bare engine and the evaluator of one layout
run back to back:

    bare 1x1, evaluator 1x1, bare Nx1, evaluator Nx1 contiguous, evaluator Nx1 <other shardings>

    python -m evaluator.bench --engine vllm --model models/tiny --data data/gsm8k_test.parquet \
        --limit 64 --max-tokens 128 --gpus 2 --repeats 3 --cpu-memory-fraction 0.2 --max-model-len 1024
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from evaluator.records import Prompt, RunConfig
from evaluator.sharding import SHARDING_MODES
from launchers.engines.base import ENGINES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluator.bench",
        description="Ratios from one run: the evaluator's generate and start-up time over the bare engine's (same "
                    "prompts, model, sampling, layout, devices), dp=N over 1 device against the ideal, straggler "
                    "gap per sharding mode, and the engine's own tokens/s next to ours. For serving: python -m "
                    "evaluator.bench.serving --help",
        epilog="Example: python -m evaluator.bench --engine vllm --model models/tiny --data data/gsm8k_test.parquet "
               "--limit 64 --max-tokens 128 --gpus 2 --repeats 3",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engine", choices=sorted(ENGINES), default="vllm", help="inference engine")
    p.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct", help="local model folder or hub id")
    p.add_argument("--data", default="data/gsm8k_test.parquet", help="parquet made by python -m datasets_prep gsm8k")
    p.add_argument("--limit", type=int, default=64, help="first N prompts")
    p.add_argument("--max-tokens", type=int, default=128, help="maximum new tokens per answer")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    p.add_argument("--gpus", type=int, default=2, help="N: 1 device is compared with dp=N replicas of 1 device "
                                                       "(CPU hosts: N groups of --cpu-cores-per-device cores); "
                                                       "1: the one-device ratios only (dp=N needs N devices)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto = cuda when a GPU is visible, else cpu")
    p.add_argument("--cpu-cores-per-device", type=int, default=1, help="CPU cores that make one device on CPU hosts")
    p.add_argument("--cpu-memory-fraction", type=float, default=0.3,
                   help="CPU hosts: fraction of RAM for all engines' KV caches of one layout, split evenly")
    p.add_argument("--max-model-len", type=int, help="engine context length (default: the model's)")
    p.add_argument("--engine-kwargs", default="{}", metavar="JSON",
                   help="extra engine arguments in the engine's own names, given to bare and evaluator alike")
    p.add_argument("--shardings", default=",".join(SHARDING_MODES),
                   help="comma-separated sharding modes whose straggler gap is measured at dp=N; contiguous "
                        "reuses the overhead run, each other mode adds one evaluator run per repeat")
    p.add_argument("--repeats", type=int, default=3, help="times each measurement is taken (median and min-max)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed bare dp=N start before the first repeat (it fills the engines' compile "
                        "caches, so the first measured engine does not pay compilation the later ones skip)")
    p.add_argument("--startup-only", action="store_true",
                   help="only start-up, 1 device: the bare engine as measured, bare without Ray's OMP_NUM_THREADS, "
                        "bare with vLLM's EngineCore spawned (as inside a Ray actor), bare with the engine core in a process "
                        "of its own (offline CPU engines keep it in process), and our Ray replica")
    p.add_argument("--candidates", default=None, metavar="KEYS",
                   help="with --startup-only: only these bare variants, comma-separated, of omp-unset, tokenizers-on, "
                        "spawned, engine-core (default all); the bare engine and the Ray replica always run")
    p.add_argument("--out", default="results/bench", help="the report goes to OUT/BENCH_ID/bench.json, "
                                                          "evaluator runs next to it")
    return p


@dataclass(frozen=True)
class Plan:
    single: RunConfig
    multi: RunConfig | None           # None on a one-device host: dp=N needs N devices
    shardings: list[str]
    prompts: list[Prompt]
    candidates: list[str] | None = None   # --startup-only: the start-up candidates to measure


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The evaluator's own checks (evaluator.cli / evaluator.checks) on both layouts, then the bench's."""
    from evaluator.checks import check_lengths
    from evaluator.cli import build_parser as evaluator_parser, config_from_args
    from evaluator.data import load_prompts
    from evaluator.errors import UsageError
    if args.gpus is None or args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1 (got {args.gpus})")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {args.repeats})")
    if args.candidates is not None and not args.startup_only:
        raise UsageError("--candidates is for --startup-only")
    candidates = None
    if args.startup_only:
        from evaluator.bench.startup import chosen_candidates
        try:
            candidates = chosen_candidates(args.candidates)
        except ValueError as e:
            raise UsageError(str(e)) from None
    shardings = [s.strip() for s in args.shardings.split(",") if s.strip()]
    unknown = [s for s in shardings if s not in SHARDING_MODES]
    if unknown or not shardings:
        raise UsageError(f"--shardings {args.shardings!r}: choose one or more of {', '.join(SHARDING_MODES)}")
    if "contiguous" not in shardings:
        shardings.insert(0, "contiguous")       # measured anyway: it is the overhead run

    def config(mode: str, gpus: int) -> RunConfig:
        argv = ["--engine", args.engine, "--mode", mode, "--gpus", str(gpus), "--device", args.device,
                "--model", args.model, "--data", args.data, "--limit", str(args.limit),
                "--max-tokens", str(args.max_tokens), "--engine-kwargs", args.engine_kwargs,
                "--cpu-memory-fraction", str(args.cpu_memory_fraction),
                "--cpu-cores-per-device", str(args.cpu_cores_per_device), "--output-dir", args.out]
        argv += ["--ignore-eos"] if args.ignore_eos else []
        argv += ["--max-model-len", str(args.max_model_len)] if args.max_model_len is not None else []
        return config_from_args(evaluator_parser().parse_args(argv))
    multi = config("dp", args.gpus) if args.gpus > 1 else None
    single = config("single", 1)
    prompts = load_prompts(single.data, single.model, args.limit)
    check_lengths(prompts, single)
    if multi is not None and len(prompts) < args.gpus:
        raise UsageError(f"{len(prompts)} prompt(s) cannot keep {args.gpus} replicas busy; raise --limit")
    return Plan(single, multi, shardings, prompts, candidates)


def bench(plan: Plan, repeats: int, warmup: bool, out_dir: Path, console: Console) -> dict[str, Any]:
    from evaluator.bench.measure import label, run_bare, run_evaluator
    from evaluator.bench.ratios import NOTE, SCHEMA_VERSION, sections
    from evaluator.hosts import host_facts
    single, multi = plan.single, plan.multi
    host = host_facts(single.engine, single.device, single.cpu_cores_per_device)   # before any timed region
    steps = [("bare", single), ("evaluator", single)]
    if multi is not None:
        steps += [("bare", multi), ("evaluator", multi)]
        steps += [("evaluator", dataclasses.replace(multi, sharding=m)) for m in plan.shardings if m != "contiguous"]
    order = [label(k, c.layout, c.sharding) for k, c in steps]
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    warmup_s = None
    if warmup:
        # vLLM caches its compiled model per configuration and core binding: without this the
        # first engine of each binding compiles and every later one loads
        first = multi or single
        console.print(f"warm-up (untimed) · bare {first.layout}, {first.dp} prompt(s)")
        warmup_s = run_bare(first, plan.prompts[:first.dp], 0).wall_s
    ms = []
    for rep in range(1, repeats + 1):
        for i, (kind, cfg) in enumerate(steps):
            console.print(f"repeat {rep}/{repeats} · {order[i]} ({i + 1}/{len(steps)})")
            m = (run_bare(cfg, plan.prompts, rep) if kind == "bare"
                 else run_evaluator(cfg, plan.prompts, rep, out_dir / "runs", host, console))
            console.print(f"  start-up {m.startup_s:.2f} s ({m.compile}), generate {m.generate_s:.3f} s, "
                          f"wall {m.wall_s:.1f} s, {m.completion_tokens} tokens")
            ms.append(m)
    s = single.sampling
    return {
        "schema_version": SCHEMA_VERSION, "bench_id": out_dir.name, "started_at": started_at, "note": NOTE,
        "wall_s": time.perf_counter() - t0, "command": "python -m evaluator.bench " + " ".join(sys.argv[1:]),
        "config": {"engine": single.engine, "model": single.model, "data": single.data, "device": single.device,
                   "device_name": host.device_name, "versions": host.versions,
                   "prompts": len(plan.prompts), "max_tokens": s.max_tokens, "ignore_eos": s.ignore_eos,
                   "dp": multi.dp if multi else 1, "repeats": repeats, "shardings": plan.shardings, "warmup_wall_s": warmup_s,
                   "engine_kwargs": single.engine_kwargs, "max_model_len": single.max_model_len,
                   "cpu_memory_fraction": single.cpu_memory_fraction,
                   "cpu_cores_per_device": single.cpu_cores_per_device},
        "order": order, "sections": sections(ms, multi.dp if multi else 1, plan.shardings),
        "measurements": [{"name": m.name, **dataclasses.asdict(m)} for m in ms],
    }


def main(argv: list[str] | None = None) -> int:
    from evaluator.bench.ratios import _finite, print_report
    from evaluator.bench.measure import BenchFailed
    from evaluator.data import DataError
    from evaluator.errors import Interrupted, RunFailed, UsageError
    from evaluator.store import atomic_write
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    try:
        plan = plan_from_args(args)
    except (UsageError, DataError) as e:
        parser.exit(2, f"error: {e}\n")
    kind = "startup" if args.startup_only else (f"dp{plan.multi.dp}" if plan.multi else "1gpu")
    bench_id = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{plan.single.engine}-{kind}"
    out_dir = Path(args.out) / bench_id
    try:
        if args.startup_only:
            from evaluator.bench.startup import print_startup, startup_candidates
            err.print(f"bench {bench_id}: start-up candidates, 1 device, {args.repeats} repeat(s) -> {out_dir}")
            report = startup_candidates(plan.single, plan.prompts, args.repeats, out_dir, err,
                                        plan.candidates, warmup=not args.no_warmup)
        else:
            vs = f"1x1 vs {plan.multi.layout}" if plan.multi else "1x1 only (dp=N needs N devices; this run has 1)"
            err.print(f"bench {bench_id}: {len(plan.prompts)} prompts, {vs} on {plan.single.device}, "
                      f"{args.repeats} repeat(s) -> {out_dir}")
            report = bench(plan, args.repeats, not args.no_warmup, out_dir, err)
    except (BenchFailed, RunFailed, UsageError) as e:
        err.print(f"error: {e}", markup=False)
        return 1
    except (KeyboardInterrupt, Interrupted):
        err.print("interrupted: every engine was shut down", markup=False)
        return 130
    path = out_dir / "bench.json"
    atomic_write(path, json.dumps(_finite(report), indent=2) + "\n")
    if args.startup_only:
        print_startup(report, path, Console(width=140))
        print(json.dumps({"bench": str(path), **{k: round(v["median"], 3) for k, v in report["startup_s"].items()}}))
        return 0
    print_report(report, path, Console(width=140))
    headline = {"bench": str(path), **{f"{sec}.{key}": round(s["median"], 4)
                                       for sec in ("overhead", "dp_scaling", "straggler_gap")
                                       for key, s in report["sections"][sec].items()}}
    print(json.dumps(_finite(headline)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
