"""Measure the evaluator against the bare engine and against the ideal, as ratios from one run.

Each repeat runs, always in this order, so that the bare engine and the evaluator of one layout
run back to back:

    bare 1x1, evaluator 1x1, bare Nx1, evaluator Nx1 contiguous, evaluator Nx1 <other shardings>

"Bare" is vllm.LLM / sglang.Engine built directly with the kwargs our backend would pass
(launchers.engines.*.llm_kwargs / engine_kwargs of evaluator.run.engine_spec), given the same
rendered prompts and sampling, in one plain subprocess per replica (no Ray), pinned like the
evaluator's replicas (evaluator.run.actor_env, launchers.replica.confine_to_devices, Ray's
OMP_NUM_THREADS, the driver's session; CUDA_VISIBLE_DEVICES on GPUs). For dp=N the N processes
start together, each takes its contiguous shard, and they wait for each other before generating,
as the evaluator's replicas do. "Evaluator" is evaluator.run.execute: Ray actors,
sharding, collection, scoring and storage, timed from the driver.

Sections (each ratio computed within one repeat, then median and min-max over repeats):
  overhead      evaluator generate / bare generate per layout (goal <= 1.02); wall vs wall
  dp_scaling    1x1 generate / (Nx1 generate x N) (1.0 = ideal); end-to-end speedup; start-up
                ratio Nx1 vs 1x1 (goal <= 1.15)
  straggler_gap (slowest - fastest) / slowest replica, per sharding mode, from evaluator runs
  throughput    the engine's own output tokens/s (its token counts; its timestamps where it
                exposes them) next to the evaluator's

    python -m evaluator.bench --engine vllm --model models/tiny --data data/gsm8k_test.parquet \
        --limit 64 --max-tokens 128 --gpus 2 --repeats 3 --cpu-memory-fraction 0.2 --max-model-len 1024
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evaluator.records import Prompt, RunConfig, SamplingConfig
from evaluator.sharding import SHARDING_MODES
from launchers.engines.base import ENGINES, EngineSpec

SCHEMA_VERSION = 1
NOTE = ("Ratios, not absolute times, are the point: every ratio compares measurements taken back to back "
        "in the same process order within one repeat, on the same device(s); absolute seconds depend on the "
        "machine and on what else runs on it.")
GOALS = {"overhead_generate": 1.02, "startup_ratio": 1.15}


class BenchFailed(RuntimeError):
    """A measurement could not be taken (an engine did not start or died)."""


# --- the bare engine, in its own subprocess ------------------------------------------------------
class BareVLLM:
    """vllm.LLM exactly as the evaluator's backend builds it, minus our Engine wrapper (the
    wrapper's conversion is part of what the overhead measures)."""

    def __init__(self, spec: EngineSpec):
        from vllm import LLM
        from launchers.engines.vllm import llm_kwargs
        self.llm = LLM(**llm_kwargs(spec))

    def generate(self, prompts: list[str], params: SamplingConfig, seeds: list[int] | None) -> dict[str, Any]:
        from launchers.engines.vllm import sampling_params
        sp = sampling_params(params, seeds)
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        generate_s = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        metrics = [o.metrics for o in outs]
        engine: dict[str, Any] = {"completion_tokens": tokens, "span_s": generate_s,
                                  "source": "RequestOutput token counts / LLM.generate call"}
        # per-request engine-core timestamps exist only with log stats on
        # (--engine-kwargs '{"disable_log_stats": false}', which the evaluator then gets too)
        if outs and all(m is not None and getattr(m, "last_token_ts", 0) for m in metrics):
            engine = {"completion_tokens": sum(m.num_generation_tokens for m in metrics),
                      "span_s": max(m.last_token_ts for m in metrics) - min(m.scheduled_ts for m in metrics),
                      "source": "RequestOutput.metrics (engine-core first-scheduled to last-token)"}
        return {"generate_s": generate_s, "completion_tokens": tokens, "engine": engine}

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if hasattr(llm, "shutdown"):
            llm.shutdown()
        else:
            llm.llm_engine.engine_core.shutdown()


class BareSGLang:
    """sglang.Engine exactly as the evaluator's backend builds it (a free port, as the replica)."""

    def __init__(self, spec: EngineSpec):
        import sglang as sgl
        from launchers.engines.sglang import engine_kwargs
        from launchers.replica import free_port
        spec = dataclasses.replace(spec, engine_kwargs={"port": free_port(), **spec.engine_kwargs})
        self.engine = sgl.Engine(**engine_kwargs(spec))

    def generate(self, prompts: list[str], params: SamplingConfig, seeds: list[int] | None) -> dict[str, Any]:
        from launchers.engines.sglang import sampling_params
        n = params.n
        flat = [p for p in prompts for _ in range(n)]
        sp: Any = (sampling_params(params, None) if seeds is None
                   else [sampling_params(params, s * n + k) for s in seeds for k in range(n)])
        t0 = time.perf_counter()
        outs = self.engine.generate(prompt=flat, sampling_params=sp)
        generate_s = time.perf_counter() - t0
        tokens = sum(int(o["meta_info"]["completion_tokens"]) for o in outs)
        latencies = [o["meta_info"].get("e2e_latency") for o in outs]
        engine: dict[str, Any] = {"completion_tokens": tokens, "span_s": generate_s,
                                  "source": "meta_info completion_tokens / Engine.generate call"}
        if outs and all(isinstance(x, (int, float)) for x in latencies):
            engine = {"completion_tokens": tokens, "span_s": max(latencies),
                      "source": "meta_info completion_tokens / longest e2e_latency"}
        return {"generate_s": generate_s, "completion_tokens": tokens, "engine": engine}

    def close(self) -> None:
        engine, self.engine = self.engine, None
        engine.shutdown()


BARE = {"vllm": BareVLLM, "sglang": BareSGLang}


def bare_worker(job_path: str) -> int:
    """Subprocess side: build the engine, say ready, wait for go, generate, report, close."""
    job = json.loads(Path(job_path).read_text())
    fd = job["msg_fd"]
    os.set_inheritable(fd, False)       # the engine's own processes must not hold our pipe open
    msg = os.fdopen(fd, "w", buffering=1)

    def send(obj: dict) -> None:
        msg.write(json.dumps(obj) + "\n")
        msg.flush()
    from launchers.replica import confine_to_devices
    spec = EngineSpec(**job["spec"])
    confine_to_devices(spec)            # the replica's cores only, as Replica does for the evaluator
    t0 = time.perf_counter()
    engine = BARE[job["engine"]](spec)
    send({"event": "ready", "startup_s": time.perf_counter() - t0})
    try:
        if sys.stdin.readline().strip() != "go":
            return 1
        result = engine.generate(job["prompts"], SamplingConfig(**job["sampling"]), job["seeds"])
        send({"event": "done", **result})
    finally:
        engine.close()      # vLLM's engine core keeps the process alive unless shut down
    return 0


# --- one measurement ---------------------------------------------------------------------------
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

    @property
    def name(self) -> str:
        return label(self.kind, self.layout, self.sharding)


def label(kind: str, layout: str, sharding: str) -> str:
    """'bare 2x1' (always contiguous shards) or 'evaluator 2x1 balanced'."""
    return f"{kind} {layout}" if kind == "bare" else f"{kind} {layout} {sharding}"


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    from evaluator.layout import cuda_device_count
    return [str(i) for i in range(cuda_device_count())]


def worker_env(cfg: RunConfig, rank: int) -> dict[str, str]:
    """The replica's environment (core binding on CPU), its GPUs on CUDA, no stale VLLM_DP_*."""
    from evaluator.run import actor_env, actor_resources
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_DP_")}
    env.update(actor_env(cfg, rank))
    # Ray gives every actor OMP_NUM_THREADS = its whole CPUs when the variable is unset; without
    # the same here, two bare processes oversubscribe the cores and the ratio measures that
    env.setdefault("OMP_NUM_THREADS", str(max(1, math.floor(actor_resources(cfg)["num_cpus"]))))
    env["PYTHONUNBUFFERED"] = "1"
    if cfg.device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(_gpu_ids()[rank * cfg.tp:(rank + 1) * cfg.tp])
    return env


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)   # the worker leads its group: engine processes too
            except ProcessLookupError:
                pass


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_bare(cfg: RunConfig, prompts: list[Prompt], repeat: int, work: Path) -> Measurement:
    """N subprocesses started together, one contiguous shard each; generate when all are ready."""
    from evaluator.run import engine_spec
    from evaluator.sharding import contiguous_bounds
    s = cfg.sampling
    spec = dataclasses.asdict(engine_spec(cfg))
    tag = f"r{repeat}-bare-{cfg.layout}"
    procs, pipes, logs = [], [], []
    t0 = time.perf_counter()
    try:
        for rank, (start, stop) in enumerate(contiguous_bounds(len(prompts), cfg.dp)):
            shard = prompts[start:stop]
            r, w = os.pipe()
            job = {"engine": cfg.engine, "spec": spec, "sampling": dataclasses.asdict(s), "msg_fd": w,
                   "prompts": [p.text for p in shard],
                   "seeds": [s.seed + p.index for p in shard] if s.temperature > 0 else None}
            job_path = work / f"{tag}-rank{rank}.job.json"
            job_path.write_text(json.dumps(job))
            log = work / f"{tag}-rank{rank}.log"
            # Own process group (killpg ends the engine's processes too) but not a new session: Ray's
            # actors stay in the driver's session, and a session is a scheduling group on Linux
            # (autogroup), so new sessions would get a different CPU share than the replicas get.
            with open(log, "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "evaluator.bench", "--bare-worker", str(job_path)],
                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True,
                    env=worker_env(cfg, rank), pass_fds=(w,), process_group=0))
            os.close(w)
            pipes.append(os.fdopen(r))
            logs.append(log)

        def receive(rank: int, event: str) -> dict:
            line = pipes[rank].readline()
            if not line:
                rc = procs[rank].wait()
                raise BenchFailed(f"bare {cfg.layout} rank {rank} exited (code {rc}) before '{event}'; "
                                  f"log {logs[rank]}:\n{_log_tail(logs[rank])}")
            return json.loads(line)
        ready = [receive(k, "ready") for k in range(len(procs))]
        for p in procs:             # like the evaluator: generation starts once every engine is up
            p.stdin.write("go\n")
            p.stdin.flush()
        done = [receive(k, "done") for k in range(len(procs))]
        for k, p in enumerate(procs):
            if p.wait(timeout=300) != 0:
                raise BenchFailed(f"bare {cfg.layout} rank {k} exited with code {p.returncode}; "
                                  f"log {logs[k]}:\n{_log_tail(logs[k])}")
        wall_s = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"bare {cfg.layout}: a worker did not exit within 300 s of closing its engine") from None
    finally:
        _kill(procs)
        for f in pipes:
            f.close()
        for path in work.glob(f"{tag}-rank*.job.json"):
            path.unlink()
    slowest = max(done, key=lambda d: d["engine"]["span_s"])
    return Measurement(
        repeat=repeat, kind="bare", layout=cfg.layout, sharding="contiguous",
        startup_s=max(r["startup_s"] for r in ready), generate_s=max(d["generate_s"] for d in done),
        wall_s=wall_s, completion_tokens=sum(d["completion_tokens"] for d in done),
        replicas=[{"rank": k, "startup_s": r["startup_s"], "generate_s": d["generate_s"],
                   "completion_tokens": d["completion_tokens"], "engine": d["engine"]}
                  for k, (r, d) in enumerate(zip(ready, done))],
        engine={"completion_tokens": sum(d["engine"]["completion_tokens"] for d in done),
                "span_s": slowest["engine"]["span_s"], "source": slowest["engine"]["source"]})


class SpanClock:
    """Listener for evaluator.run.execute: when chunks went out, came back, and engines closed."""

    def __init__(self, console: Console):
        self.console = console
        self.marks: dict[str, float] = {}

    def __call__(self, event: str, data: dict) -> None:
        now = time.perf_counter()
        if event == "generating":
            self.marks.setdefault("generating", now)
        elif event == "chunk":
            self.marks["last_chunk"] = now
        elif event == "closed":
            self.marks["closed"] = now
        elif event == "failed":
            self.console.print(f"[red]replica {data['rank']} failed:[/] {data['reason']}")
        elif event == "warning":
            self.console.print(f"[yellow]warning:[/] {data['message']}")


def run_evaluator(cfg: RunConfig, prompts: list[Prompt], repeat: int, runs: Path, console: Console) -> Measurement:
    from evaluator.run import execute
    from evaluator.store import RunDir
    run_id = f"r{repeat}-{cfg.layout}-{cfg.sharding}"
    run_dir = RunDir(runs / run_id)
    run_dir.write_config(cfg, {"run_id": run_id})
    clock = SpanClock(console)
    t0 = time.perf_counter()
    summary = execute(cfg, run_id, run_dir, prompts, listener=clock)
    t_end = time.perf_counter()
    m = clock.marks
    if summary.failures or not {"generating", "last_chunk", "closed"} <= m.keys():
        raise BenchFailed(f"evaluator {cfg.layout} {cfg.sharding} did not run cleanly: "
                          f"{'; '.join(summary.failures) or 'no generate phase seen'}")
    # Ray dispatch, transfer, collection and partial.jsonl appends, then merge, score and store;
    # engine shutdown in between is not generation, for the bare engine either
    phases = {"dispatch_to_last_chunk_s": m["last_chunk"] - m["generating"],
              "merge_score_store_s": t_end - m["closed"]}
    generate_s = sum(phases.values())
    return Measurement(
        repeat=repeat, kind="evaluator", layout=cfg.layout, sharding=cfg.sharding,
        startup_s=summary.startup_s, generate_s=generate_s, wall_s=t_end - t0,
        completion_tokens=summary.completion_tokens,
        replicas=[{"rank": r.rank, "startup_s": r.startup_s, "generate_s": r.generate_s, "prompts": r.prompts,
                   "completion_tokens": r.completion_tokens, "devices": r.devices} for r in summary.replicas],
        replica_generate_s=summary.generate_s, straggler_gap=summary.straggler_gap,
        output_tokens_per_s=summary.output_tokens_per_s, phases=phases, run_dir=str(run_dir.path))


# --- ratios --------------------------------------------------------------------------------------
def stat(values: list[float], goal: float | None = None) -> dict[str, Any]:
    s = {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
    if goal is not None:
        s["goal_max"] = goal
        s["meets_goal"] = s["median"] <= goal
    return s


def sections(ms: list[Measurement], dp: int, shardings: list[str]) -> dict[str, Any]:
    """Every ratio within one repeat first, then median and spread over the repeats."""
    by = {(m.repeat, m.name): m for m in ms}
    repeats = sorted({m.repeat for m in ms})
    single, multi = "1x1", f"{dp}x1"

    def per(fn) -> list[float]:
        return [fn(lambda name: by[(r, name)]) for r in repeats]
    out: dict[str, Any] = {"overhead": {}, "dp_scaling": {}, "straggler_gap": {}, "throughput": {}}
    for lay in (single, multi):
        bare, ev = f"bare {lay}", f"evaluator {lay} contiguous"
        out["overhead"][f"generate_{lay}"] = stat(per(lambda g: g(ev).generate_s / g(bare).generate_s),
                                                  GOALS["overhead_generate"])
        out["overhead"][f"wall_{lay}"] = stat(per(lambda g: g(ev).wall_s / g(bare).wall_s))
        out["throughput"][lay] = {
            "engine_tokens_per_s": stat(per(lambda g: g(bare).engine["completion_tokens"] / g(bare).engine["span_s"])),
            "ours_tokens_per_s": stat(per(lambda g: g(ev).output_tokens_per_s)),
            "ours_over_engine": stat(per(lambda g: g(ev).output_tokens_per_s
                                         / (g(bare).engine["completion_tokens"] / g(bare).engine["span_s"]))),
            "engine_completion_tokens": [by[(r, bare)].engine["completion_tokens"] for r in repeats],
            "ours_completion_tokens": [by[(r, ev)].completion_tokens for r in repeats],
            "engine_source": by[(repeats[0], bare)].engine["source"],
            "ours_source": "evaluator summary: completion tokens / slowest replica's generate_s"}
    for kind, s_name, m_name in (("evaluator", f"evaluator {single} contiguous", f"evaluator {multi} contiguous"),
                                 ("bare", f"bare {single}", f"bare {multi}")):
        d = out["dp_scaling"]
        d[f"generate_efficiency_{kind}"] = stat(per(lambda g: g(s_name).generate_s / (g(m_name).generate_s * dp)))
        d[f"end_to_end_speedup_{kind}"] = stat(per(lambda g: g(s_name).wall_s / g(m_name).wall_s))
        d[f"startup_ratio_{kind}"] = stat(per(lambda g: g(m_name).startup_s / g(s_name).startup_s),
                                          GOALS["startup_ratio"])
    for mode in shardings:
        out["straggler_gap"][mode] = stat(per(lambda g: g(f"evaluator {multi} {mode}").straggler_gap))
    return out


# --- output -------------------------------------------------------------------------------------
def _fmt(s: dict[str, Any], digits: int = 3) -> tuple[str, str]:
    return f"{s['median']:.{digits}f}", f"{s['min']:.{digits}f}–{s['max']:.{digits}f}"


def lines_of(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(section, quantity, stat, unit) for every number the table and the plain lines show."""
    sec, dp = report["sections"], report["config"]["dp"]
    multi = f"{dp}x1"
    rows = []
    for key, s in sec["overhead"].items():
        what, lay = key.split("_", 1)
        rows.append(("overhead", f"evaluator / bare {what} {lay}", s, "×"))
    d = sec["dp_scaling"]
    for kind in ("evaluator", "bare"):
        rows.append(("dp_scaling", f"{kind} generate 1x1 / ({multi} × {dp}) (1 = ideal)", d[f"generate_efficiency_{kind}"], "×"))
        rows.append(("dp_scaling", f"{kind} end-to-end speedup {multi} vs 1x1", d[f"end_to_end_speedup_{kind}"], "×"))
        rows.append(("dp_scaling", f"{kind} start-up {multi} / 1x1", d[f"startup_ratio_{kind}"], "×"))
    for mode, s in sec["straggler_gap"].items():
        rows.append(("straggler_gap", f"evaluator {multi} {mode}: (slowest - fastest) / slowest", s, ""))
    for lay, t in sec["throughput"].items():
        rows.append(("throughput", f"engine {lay} ({t['engine_source']})", t["engine_tokens_per_s"], "tok/s"))
        rows.append(("throughput", f"ours {lay} (evaluator summary)", t["ours_tokens_per_s"], "tok/s"))
        rows.append(("throughput", f"ours / engine {lay}", t["ours_over_engine"], "×"))
    return rows


def print_report(report: dict[str, Any], path: Path, console: Console) -> None:
    cfg = report["config"]
    t = Table(title=f"Bench: {cfg['engine']} on {cfg['device_name']}, {cfg['prompts']} prompts, "
                    f"{cfg['max_tokens']} max tokens, {cfg['repeats']} repeat(s)")
    for col in ("section", "quantity", "median", "min–max", "goal"):
        t.add_column(col, justify="right" if col in ("median", "min–max") else "left")
    rows = lines_of(report)
    for section, quantity, s, unit in rows:
        digits = 1 if unit == "tok/s" else 3
        med, spread = _fmt(s, digits)
        goal = "" if "goal_max" not in s else f"≤ {s['goal_max']} ({'met' if s['meets_goal'] else 'missed'})"
        t.add_row(section, quantity, med, spread, goal)
    console.print(t)
    m = Table(title="Measurements (median seconds over repeats)")
    for col in ("measurement", "start-up s", "generate s", "in replicas s", "wall s", "completion tokens"):
        m.add_column(col, justify="left" if col == "measurement" else "right")
    for name in report["order"]:
        of = [x for x in report["measurements"] if x["name"] == name]
        med = lambda k: statistics.median(x[k] for x in of)
        inside = f"{med('replica_generate_s'):.3f}" if of[0]["replica_generate_s"] is not None else ""
        m.add_row(name, f"{med('startup_s'):.2f}", f"{med('generate_s'):.3f}", inside, f"{med('wall_s'):.1f}",
                  str(of[0]["completion_tokens"]))
    console.print(m)
    print(f"note: {NOTE}")
    print(f"order of each repeat: {', '.join(report['order'])}"
          + (" (after one untimed warm-up start)" if cfg["warmup_wall_s"] is not None else ""))
    print("generate s: bare = slowest process's generate call; evaluator = driver side, first chunk sent to last "
          "stored, plus merge/score/store ('in replicas s' = the replicas' own first-start to last-end)")
    for section, quantity, s, unit in rows:
        digits = 1 if unit == "tok/s" else 3
        med, spread = _fmt(s, digits)
        goal = "" if "goal_max" not in s else f"; goal <= {s['goal_max']}: {'met' if s['meets_goal'] else 'missed'}"
        print(f"{section}: {quantity}: {med}{(' ' + unit) if unit == 'tok/s' else ''} "
              f"(median of {len(s['values'])}; {spread}{goal})")
    print(f"report: {path}")


# --- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluator.bench",
        description="Ratios from one run: the evaluator's generate time over the bare engine's (same prompts, "
                    "model, sampling, layout, devices), dp=N over 1 device against the ideal, start-up, "
                    "straggler gap per sharding mode, and the engine's own tokens/s next to ours.",
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
                                                       "(CPU hosts: N groups of --cpu-cores-per-device cores)")
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
    p.add_argument("--out", default="results/bench", help="the report goes to OUT/BENCH_ID/bench.json, "
                                                          "evaluator runs and bare logs next to it")
    p.add_argument("--bare-worker", metavar="JOB", help=argparse.SUPPRESS)
    return p


@dataclass(frozen=True)
class Plan:
    single: RunConfig
    multi: RunConfig
    shardings: list[str]
    prompts: list[Prompt]


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The evaluator's own checks (evaluator.cli) on both layouts, then the bench's."""
    from evaluator.cli import UsageError, build_parser as evaluator_parser, config_from_args
    from evaluator.data import load_tokenizer, read_rows, render_prompts
    if args.gpus is None or args.gpus < 2:
        raise UsageError(f"--gpus must be at least 2: the bench compares 1 device with dp=N (got {args.gpus})")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {args.repeats})")
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
    multi = config("dp", args.gpus)
    single = config("single", 1)
    rows = read_rows(single.data)[:args.limit]
    try:
        tokenizer = load_tokenizer(single.model)
    except (OSError, ValueError) as e:
        raise UsageError(f"--model {single.model}: cannot load its tokenizer ({str(e).splitlines()[0][:200]})") from None
    prompts = render_prompts(rows, tokenizer)
    if len(prompts) < args.gpus:
        raise UsageError(f"{len(prompts)} prompt(s) cannot keep {args.gpus} replicas busy; raise --limit")
    return Plan(single, multi, shardings, prompts)


def bench(plan: Plan, repeats: int, warmup: bool, out_dir: Path, console: Console) -> dict[str, Any]:
    from evaluator.run import device_name, versions
    single, multi = plan.single, plan.multi
    steps = [("bare", single), ("evaluator", single), ("bare", multi), ("evaluator", multi)]
    steps += [("evaluator", dataclasses.replace(multi, sharding=m)) for m in plan.shardings if m != "contiguous"]
    order = [label(k, c.layout, c.sharding) for k, c in steps]
    (out_dir / "bare").mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    warmup_s = None
    if warmup:
        # vLLM caches its compiled model per configuration and core binding: without this the
        # first engine of each binding compiles (~20 s on CPU) and every later one loads
        console.print(f"warm-up (untimed) · bare {multi.layout}, {multi.dp} prompt(s)")
        warmup_s = run_bare(multi, plan.prompts[:multi.dp], 0, out_dir / "bare").wall_s
    ms: list[Measurement] = []
    for rep in range(1, repeats + 1):
        for i, (kind, cfg) in enumerate(steps):
            console.print(f"repeat {rep}/{repeats} · {order[i]} ({i + 1}/{len(steps)})")
            if kind == "bare":
                m = run_bare(cfg, plan.prompts, rep, out_dir / "bare")
            else:
                m = run_evaluator(cfg, plan.prompts, rep, out_dir / "runs", console)
            console.print(f"  start-up {m.startup_s:.2f} s, generate {m.generate_s:.3f} s, wall {m.wall_s:.1f} s, "
                          f"{m.completion_tokens} tokens")
            ms.append(m)
    s = single.sampling
    return {
        "schema_version": SCHEMA_VERSION, "bench_id": out_dir.name, "started_at": started_at, "note": NOTE,
        "wall_s": time.perf_counter() - t0,
        "command": "python -m evaluator.bench " + " ".join(sys.argv[1:]),
        "config": {"engine": single.engine, "model": single.model, "data": single.data, "device": single.device,
                   "device_name": device_name(multi), "versions": versions(single.engine),
                   "prompts": len(plan.prompts), "max_tokens": s.max_tokens, "ignore_eos": s.ignore_eos,
                   "dp": multi.dp, "repeats": repeats, "shardings": plan.shardings, "warmup_wall_s": warmup_s,
                   "engine_kwargs": single.engine_kwargs, "max_model_len": single.max_model_len,
                   "cpu_memory_fraction": single.cpu_memory_fraction,
                   "cpu_cores_per_device": single.cpu_cores_per_device},
        "order": order,
        "sections": sections(ms, multi.dp, plan.shardings),
        "measurements": [{"name": m.name, **dataclasses.asdict(m)} for m in ms],
    }


def _finite(obj: Any) -> Any:
    """NaN/inf have no JSON spelling; a ratio that is one is reported as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bare_worker:
        return bare_worker(args.bare_worker)
    from evaluator.cli import UsageError
    from evaluator.data import DataError
    from evaluator.run import Interrupted, RunFailed
    err = Console(stderr=True)
    try:
        plan = plan_from_args(args)
    except (UsageError, DataError) as e:
        parser.exit(2, f"error: {e}\n")
    bench_id = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{plan.multi.engine}-dp{plan.multi.dp}"
    out_dir = Path(args.out) / bench_id
    err.print(f"bench {bench_id}: {len(plan.prompts)} prompts, 1x1 vs {plan.multi.layout} on {plan.multi.device}, "
              f"{args.repeats} repeat(s) -> {out_dir}")
    try:
        report = bench(plan, args.repeats, not args.no_warmup, out_dir, err)
    except (BenchFailed, RunFailed) as e:
        err.print(f"[red]error:[/] {e}")
        return 1
    except (KeyboardInterrupt, Interrupted):
        err.print("[yellow]interrupted[/]: every engine was shut down")
        return 130
    path = out_dir / "bench.json"
    from evaluator.store import atomic_write
    atomic_write(path, json.dumps(_finite(report), indent=2) + "\n")
    print_report(report, path, Console(width=140))
    headline = {"bench": str(path), **{f"{sec}.{key}": round(s["median"], 4)
                                       for sec in ("overhead", "dp_scaling", "straggler_gap")
                                       for key, s in report["sections"][sec].items()}}
    print(json.dumps(_finite(headline)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
