"""Where a replica's start-up goes, against the bare engine's, candidate by candidate (1 device):

    bare                    the engine host from a plain process, with the replica's environment
    bare, OMP unset         ... without the OMP_NUM_THREADS Ray gives an actor (num_cpus)
    bare, tokenizers on     ... without our TOKENIZERS_PARALLELISM=false
    bare, EngineCore spawned  ... with VLLM_WORKER_MULTIPROC_METHOD=spawn, as vLLM forces inside a
                            Ray actor (what a replica that built its engine in the actor paid)
    bare, EngineCore process  ... with VLLM_ENABLE_V1_MULTIPROCESSING=1: vLLM's engine core in a
                            process of its own, which the backend turns off for offline CPU engines
    replica                 our Ray replica: the engine's own start-up, and the driver's view from
                            asking Ray for the actor to the engine being ready

One untimed start comes first (it fills the compile cache); then each candidate is one engine
start, and a repeat runs them all in this order.

    python -m evaluator.bench --startup-only --engine vllm --model M --gpus 2 --repeats 2
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evaluator.records import Prompt, RunConfig

CANDIDATES = {
    "bare": {},
    "bare, OMP unset": {"OMP_NUM_THREADS": None},
    "bare, tokenizers on": {"TOKENIZERS_PARALLELISM": None},
    "bare, EngineCore spawned": {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"},
    "bare, EngineCore process": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
}
# --candidates names them by these keys; "bare" (the denominator) and the replica always run
KEYS = {"omp-unset": "bare, OMP unset", "tokenizers-on": "bare, tokenizers on", "spawned": "bare, EngineCore spawned",
        "engine-core": "bare, EngineCore process"}


def chosen_candidates(text: str | None) -> list[str]:
    """The candidate names --candidates picks (None: all), "bare" first; ValueError names the keys."""
    if text is None:
        return list(CANDIDATES)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise ValueError(f"--candidates {text!r}: choose from {', '.join(KEYS)} (bare and the replica always run)")
    return ["bare", *[KEYS[k] for k in dict.fromkeys(keys)]]


def replica_startup(cfg: RunConfig) -> tuple[float, float, str]:
    """(engine start-up as the replica measured it, driver's view: actor requested -> ready, compile)."""
    from evaluator.events import ignore
    from evaluator.pool import ReplicaPool, actor_env, engine_spec
    from launchers.replica import Replica
    spec = engine_spec(cfg)
    pool = ReplicaPool(cfg, Replica, lambda rank: (rank, cfg.engine, spec, actor_env(cfg, rank)), ignore)
    pool._init_ray()       # Ray's own start is not the replica's
    t0 = time.perf_counter()
    try:
        pool.start()
        driver_s = time.perf_counter() - t0
        m = pool.members[0]
        return m.startup_s, driver_s, m.info.get("compile", "unknown")
    finally:
        pool.close()


def startup_candidates(cfg: RunConfig, prompts: list[Prompt], repeats: int, out_dir: Path,
                       console: Console, names: list[str] | None = None, warmup: bool = True) -> dict[str, Any]:
    from evaluator.bench.measure import run_bare
    from evaluator.hosts import host_facts
    host = host_facts(cfg.engine, cfg.device, cfg.cpu_cores_per_device)
    values: dict[str, list[float]] = {}
    compile_states: dict[str, list[str]] = {}
    # one untimed start first: it fills the compile cache, so no candidate pays the compilation
    # the others then skip (the first start of a configuration is cold, the rest warm)
    first = None
    if warmup:
        console.print("warm-up (untimed) · bare")
        first = run_bare(cfg, prompts, 0, generate=False)
        console.print(f"  {first.startup_s:.2f} s ({first.compile})")
    for rep in range(1, repeats + 1):
        for name in names or list(CANDIDATES):
            env = CANDIDATES[name]
            console.print(f"repeat {rep}/{repeats} · {name}")
            m = run_bare(cfg, prompts, rep, extra_env=env, generate=False)
            values.setdefault(name, []).append(m.startup_s)
            compile_states.setdefault(name, []).append(m.compile)
            console.print(f"  {m.startup_s:.2f} s ({m.compile})")
        console.print(f"repeat {rep}/{repeats} · replica")
        engine_s, driver_s, state = replica_startup(cfg)
        values.setdefault("replica", []).append(engine_s)
        values.setdefault("replica, driver's view", []).append(driver_s)
        compile_states.setdefault("replica", []).append(state)
        compile_states.setdefault("replica, driver's view", []).append(state)
        console.print(f"  engine {engine_s:.2f} s, driver's view {driver_s:.2f} s ({state})")
    stats = {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v,
                    "compile": compile_states[name]} for name, v in values.items()}
    bare = stats["bare"]["median"]
    return {"bench_id": out_dir.name, "engine": cfg.engine, "model": cfg.model, "device_name": host.device_name,
            "versions": host.versions, "repeats": repeats,
            "warmup": {"startup_s": first.startup_s, "compile": first.compile} if first else None,
            "startup_s": stats,
            "over_bare": {name: s["median"] / bare for name, s in stats.items()}}


def print_startup(report: dict[str, Any], path: Path, console: Console) -> None:
    t = Table(title=f"Start-up candidates: {report['engine']} on {report['device_name']}, {report['repeats']} repeat(s)")
    for col in ("candidate", "median s", "min–max s", "÷ bare", "compile"):
        t.add_column(col, justify="left" if col in ("candidate", "compile") else "right")
    for name, s in report["startup_s"].items():
        t.add_row(name, f"{s['median']:.2f}", f"{s['min']:.2f}–{s['max']:.2f}", f"{report['over_bare'][name]:.3f}",
                  ",".join(sorted(set(s["compile"]))))
    console.print(t)
    for name, s in report["startup_s"].items():
        print(f"startup: {name}: {s['median']:.2f} s (÷ bare {report['over_bare'][name]:.3f}; "
              f"{s['min']:.2f}–{s['max']:.2f})")
    print(f"report: {path}")
