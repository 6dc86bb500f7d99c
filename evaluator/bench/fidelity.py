"""python -m evaluator.bench.fidelity: does running a replica's server inside our Ray actor change
what it measures? The same engine server started twice, once as a serving run starts it (a
ServerReplica actor: process group, reaper, core confinement, log copied through a redacting
pipe) and once bare (the same argv and environment, a plain child of this process, on the same
cores), each driven by our client at the same levels, alternating which goes first; prints
actor / bare for output tok/s and mean TPOT per level (goal: within 2% at saturation).

    python -m evaluator.bench.fidelity --model models/tiny --data data/gsm8k_test.parquet --device cpu \
        --concurrency 4,16 --limit 64 --max-tokens 64 --repeats 2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

GOAL = 0.02
KEYS = ("output_tok_s", "mean_tpot_ms", "mean_ttft_ms")


def build_parser() -> argparse.ArgumentParser:
    from evaluator.bench.serving import build_parser as serving_parser
    p = serving_parser()
    p.prog = "python -m evaluator.bench.fidelity"
    p.description = ("The same server inside a Ray actor (as serving runs start it) and bare, driven by our client "
                     "at the same levels; actor / bare for output tok/s, mean TPOT and mean TTFT (goal within 2%).")
    return p


def start_bare(cfg, log: Path) -> tuple[subprocess.Popen, str, str]:
    """The server exactly as ServerReplica would start it, as a plain child on the same cores."""
    from evaluator.pool import actor_env, engine_spec
    from launchers.engines.base import free_port, server_launch
    spec = engine_spec(cfg)
    launch = server_launch(cfg.engine, spec, free_port(), "127.0.0.1")
    env = {**os.environ, **actor_env(cfg, 0), **launch.env}
    binding = env.get("VLLM_CPU_OMP_THREADS_BIND")
    cores = {int(c) for g in binding.split("|") for c in g.split(",")} if cfg.device == "cpu" and binding else None
    with open(log, "w") as f:
        proc = subprocess.Popen(launch.argv, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
                                start_new_session=True)
    url = f"http://127.0.0.1:{launch.port}"
    deadline = time.time() + 1800
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the bare server exited with {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(url + launch.health_path, timeout=2)
            return proc, url, launch.model_name
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the bare server did not answer within 1800 s; see {log}")


def measure(cfg, url: str, name: str, prompts, levels, repeats: int, console: Console, who: str) -> list[dict]:
    from evaluator.bench.serving import ours
    ours(cfg, url, name, prompts, int(max(levels)))                       # untimed warm-up
    rows = []
    for c in levels:
        for rep in range(1, repeats + 1):
            got = ours(cfg, url, name, prompts, int(c))
            console.print(f"{who} c={int(c)} repeat {rep}: " + ", ".join(f"{k} {got[k]:.2f}" for k in KEYS))
            rows.append({"who": who, "concurrency": int(c), "repeat": rep, **got})
    return rows


def run(args, out_dir: Path, console: Console) -> dict[str, Any]:
    from evaluator.bench.serving import _config
    from evaluator.data import load_prompts
    from evaluator.events import ignore
    from evaluator.hosts import host_facts
    from evaluator.pool import ReplicaPool, actor_env, engine_spec
    from launchers.replica import ServerReplica
    cfg = _config(args)
    prompts = load_prompts(cfg.data, cfg.model_folder, cfg.limit)
    host = host_facts(cfg.engine, cfg.device, cfg.cpu_cores_per_device)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    # bare first in odd repeats of the whole comparison, the actor first in even ones
    for rep in range(1, args.repeats + 1):
        order = ("bare", "actor") if rep % 2 else ("actor", "bare")
        for who in order:
            if who == "bare":
                proc, url, name = start_bare(cfg, out_dir / f"bare-{rep}.log")
                try:
                    rows += [dict(r, repeat=rep) for r in measure(cfg, url, name, prompts, args.concurrency, 1,
                                                                  console, who)]
                finally:
                    os.killpg(proc.pid, 15)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, 9)
                        proc.wait()
            else:
                spec = engine_spec(cfg)
                pool = ReplicaPool(cfg, ServerReplica, lambda rank: (rank, cfg.engine, spec, actor_env(cfg, rank),
                                                                     str(out_dir / f"actor-{rep}.log"),
                                                                     socket.gethostname()), ignore)
                try:
                    pool.start()
                    info = pool.members[0].info
                    rows += [dict(r, repeat=rep) for r in measure(cfg, info["url"], info["model_name"], prompts,
                                                                  args.concurrency, 1, console, who)]
                finally:
                    pool.close()
    ratios = {}
    for c in args.concurrency:
        level = f"c={int(c)}"
        ratios[level] = {}
        for k in KEYS:
            pairs = [(next(r[k] for r in rows if r["who"] == "actor" and r["repeat"] == rep and r["concurrency"] == int(c)),
                      next(r[k] for r in rows if r["who"] == "bare" and r["repeat"] == rep and r["concurrency"] == int(c)))
                     for rep in range(1, args.repeats + 1)]
            values = [a / b for a, b in pairs if b]
            ratios[level][k] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                                "values": values} if values else {}
    return {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "engine": cfg.engine,
            "model": cfg.model, "device_name": host.device_name, "versions": host.versions, "prompts": len(prompts),
            "max_tokens": cfg.sampling.max_tokens, "goal": GOAL, "measurements": rows, "actor_over_bare": ratios,
            "command": "python -m evaluator.bench.fidelity " + " ".join(sys.argv[1:])}


def main(argv: list[str] | None = None) -> int:
    from evaluator.bench.serving import bench_main
    done = bench_main(build_parser(), argv, run, "fidelity", "bench-fidelity.json")
    if done is None:
        return 1
    report, path = done
    for level, by in report["actor_over_bare"].items():
        for k, s in by.items():
            if s:
                goal = "" if k == "mean_ttft_ms" else f"; goal within {GOAL:.0%}: " + \
                    ("met" if abs(s["median"] - 1) <= GOAL else "missed")
                print(f"server fidelity {level}: {k} actor/bare {s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f}){goal}")
    print(json.dumps({"bench": str(path), **{f"{lv}.{k}": round(s["median"], 4) for lv, by in report["actor_over_bare"].items()
                                             for k, s in by.items() if s}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
