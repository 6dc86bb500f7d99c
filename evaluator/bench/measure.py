"""One timed measurement of the benchmark: the bare engine, or the evaluator, on one layout.

Bare: the engine in launchers.engine_host processes started from here, no Ray: built through
launchers.engines.base.build with the replica's spec and environment (core binding on CPU, the
OMP_NUM_THREADS Ray gives an actor, its GPUs), one process per replica started together, each
generating its contiguous shard once all are up, as the evaluator's replicas do. Evaluator:
evaluator.offline.execute with Ray actors, dispatch, collection, scoring and storage.

    python -m evaluator.bench ...   # runs these in order, see evaluator/bench/__main__.py
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from evaluator.events import ChunkDone, EnginesClosed, Event, GenerationStarted, ReplicaFailed, Warning
from evaluator.hosts import HostFacts, gpu_count
from evaluator.pool import actor_env, actor_resources, engine_spec
from evaluator.records import Prompt, RunConfig


class BenchFailed(RuntimeError):
    """A measurement could not be taken (an engine did not start or died)."""


@dataclass
class Measurement:
    """One timed run. generate_s: bare = slowest process's generate call; evaluator = driver
    side, first chunk sent to last chunk stored, plus merge, scoring and storage."""
    repeat: int
    kind: str                       # "bare" or "evaluator"
    layout: str                     # "1x1", "2x1", ...
    sharding: str
    startup_s: float                # slowest replica's engine construction
    generate_s: float
    wall_s: float                   # processes (or Ray) started to everything closed
    completion_tokens: int
    replicas: list[dict] = field(default_factory=list)
    replica_generate_s: float | None = None     # evaluator: replica-side, as summary.json has it
    straggler_gap: float | None = None
    output_tokens_per_s: float | None = None    # evaluator: as summary.json has it
    engine: dict | None = None                  # bare: the engine's own counts and timing
    phases: dict | None = None                  # evaluator: the two parts of generate_s
    run_dir: str | None = None
    compile: str = "unknown"                    # cold / warm / none, as the engines reported

    @property
    def name(self) -> str:
        return label(self.kind, self.layout, self.sharding)


def label(kind: str, layout: str, sharding: str) -> str:
    """'bare 2x1' (always contiguous shards) or 'evaluator 2x1 balanced'."""
    return f"{kind} {layout}" if kind == "bare" else f"{kind} {layout} {sharding}"


def worker_env(cfg: RunConfig, rank: int, extra: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """The replica's environment (core binding on CPU), its GPUs on CUDA."""
    env = dict(actor_env(cfg, rank))
    # Ray gives every actor OMP_NUM_THREADS = its whole CPUs when the variable is unset; the bare
    # worker gets the same, or the ratio would measure that instead of our code
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, math.floor(actor_resources(cfg)["num_cpus"])))
    if cfg.device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(gpu_count())]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[rank * cfg.tp:(rank + 1) * cfg.tp])
    return {**env, **(extra or {})}


def run_bare(cfg: RunConfig, prompts: list[Prompt], repeat: int, extra_env: dict[str, str | None] | None = None,
             generate: bool = True) -> Measurement:
    """N engine hosts started together, one contiguous shard each; generate when all are ready."""
    from concurrent.futures import ThreadPoolExecutor
    from evaluator.sharding import contiguous_bounds
    from launchers.engine_host import EngineHost
    s = cfg.sampling
    spec = engine_spec(cfg)
    bounds = contiguous_bounds(len(prompts), cfg.dp)
    t0 = time.perf_counter()
    hosts = [EngineHost(cfg.engine, spec, worker_env(cfg, rank, extra_env)) for rank in range(cfg.dp)]
    try:
        with ThreadPoolExecutor(len(hosts)) as pool:
            ready = list(pool.map(lambda h: h.start(), hosts))
            done = []
            if generate:
                def one(rank: int) -> dict:
                    shard = prompts[bounds[rank][0]:bounds[rank][1]]
                    seeds = [s.seed + p.index for p in shard] if s.temperature > 0 else None
                    t = time.perf_counter()
                    completions = hosts[rank].generate([p.token_ids for p in shard], s, seeds)
                    return {"generate_s": time.perf_counter() - t,
                            "completion_tokens": sum(c.completion_tokens for c in completions)}
                done = list(pool.map(one, range(len(hosts))))
    except Exception as e:
        raise BenchFailed(f"bare {cfg.layout}: {type(e).__name__}: {e}") from e
    finally:
        for h in hosts:
            h.close()
    wall_s = time.perf_counter() - t0
    slowest = max((d["generate_s"] for d in done), default=0.0)
    tokens = sum(d["completion_tokens"] for d in done)
    return Measurement(
        repeat=repeat, kind="bare", layout=cfg.layout.label, sharding="contiguous",
        startup_s=max(r["startup_s"] for r in ready), generate_s=slowest, wall_s=wall_s, completion_tokens=tokens,
        replicas=[{"rank": k, **r, **(done[k] if done else {})} for k, r in enumerate(ready)],
        engine={"completion_tokens": tokens, "span_s": slowest,
                "source": "completion tokens / the slowest engine's generate call"},
        compile=_compile([r["compile"] for r in ready]))


def _compile(states: list[str]) -> str:
    for state in ("cold", "warm", "none"):
        if state in states:
            return state
    return "unknown"


class SpanClock:
    """Listener for evaluator.offline.execute: when chunks went out, came back, and engines closed."""

    def __init__(self, console: Console):
        self.console = console
        self.marks: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        now = time.perf_counter()
        match event:
            case GenerationStarted():
                self.marks.setdefault("generating", now)
            case ChunkDone():
                self.marks["last_chunk"] = now
            case EnginesClosed():
                self.marks["closed"] = now
            case ReplicaFailed(rank=rank, reason=why):
                self.console.print(f"replica {rank} failed: {why}", markup=False)
            case Warning(message=message):
                self.console.print(f"warning: {message}", markup=False)


def run_evaluator(cfg: RunConfig, prompts: list[Prompt], repeat: int, runs: Path, host: HostFacts,
                  console: Console) -> Measurement:
    from evaluator.offline import execute
    from evaluator.store import RunDir
    run_id = f"r{repeat}-{cfg.layout}-{cfg.sharding}"
    run_dir = RunDir(runs / run_id)
    run_dir.write_config(cfg, {"run_id": run_id})
    clock = SpanClock(console)
    t0 = time.perf_counter()
    summary = execute(cfg, run_id, run_dir, prompts, host, listener=clock)
    t_end = time.perf_counter()
    m = clock.marks
    if summary.failures or not {"generating", "last_chunk", "closed"} <= m.keys():
        raise BenchFailed(f"evaluator {cfg.layout} {cfg.sharding} did not run cleanly: "
                          f"{'; '.join(summary.failures) or 'no generate phase seen'}")
    # Ray dispatch, transfer, collection and partial.jsonl appends, then merge, score and store;
    # engine shutdown in between is not generation, for the bare engine either
    phases = {"dispatch_to_last_chunk_s": m["last_chunk"] - m["generating"],
              "merge_score_store_s": t_end - m["closed"]}
    return Measurement(
        repeat=repeat, kind="evaluator", layout=cfg.layout.label, sharding=cfg.sharding,
        startup_s=summary.startup_s, generate_s=sum(phases.values()), wall_s=t_end - t0,
        completion_tokens=summary.completion_tokens,
        replicas=[{"rank": r.rank, "startup_s": r.startup_s, "generate_s": r.generate_s, "prompts": r.prompts,
                   "completion_tokens": r.completion_tokens, "devices": r.devices, "compile": r.compile}
                  for r in summary.replicas],
        replica_generate_s=summary.generate_s, straggler_gap=summary.straggler_gap,
        output_tokens_per_s=summary.output_tokens_per_s, phases=phases, run_dir=str(run_dir.path),
        compile=summary.compile)
