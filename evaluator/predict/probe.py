"""The devices without a model: one device's memory bandwidth (a timed read of a large tensor), and
the all-reduce between tp devices at the sizes a tensor-parallel step sends (torch.distributed: NCCL
between GPUs, gloo between CPU devices, each process on its own device: one GPU, or its group of
cores). Seconds, not minutes; no engine, no model.

    python -m evaluator.predict.probe --device cpu --devices 2 --bytes 512,65536,1048576
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from evaluator.predict.records import AllReducePoint

ROOT = Path(__file__).resolve().parents[2]
BANDWIDTH_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
TIMED_S = 0.2                         # the bandwidth read is repeated until this much time (3 to 50 times)


def repeats(nbytes: int) -> int:
    """All-reduces per size: the same count on every rank (a count taken from each rank's own clock
    would leave one rank waiting in a collective the others never start)."""
    return 20 if nbytes <= 2**20 else 5


def message_sizes(hidden_bytes: int, most_tokens: int) -> list[int]:
    """The all-reduce payloads of steps of 1, 2, 4, ... tokens up to most_tokens (a step sends hidden
    x dtype bytes per token)."""
    out, tokens = [], 1
    while tokens < most_tokens:
        out.append(tokens * hidden_bytes)
        tokens *= 2
    return out + [most_tokens * hidden_bytes]


def _timed(fn, sync, count: int | None = None) -> float:
    """Median seconds of fn() after one untimed call: `count` times, else as often as fills TIMED_S."""
    fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < (count or 3) or (count is None and time.perf_counter() - start < TIMED_S and len(times) < 50):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _worker(rank: int, world: int, port: int, device: str, cores: list[int], sizes: list[int], bandwidth: bool) -> dict:
    import torch
    import torch.distributed as dist
    if device == "cpu":
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cores))
        torch.set_num_threads(max(1, len(cores)))
        where, sync = torch.device("cpu"), (lambda: None)
    else:
        torch.cuda.set_device(rank)
        where, sync = torch.device("cuda", rank), torch.cuda.synchronize
    out: dict = {}
    if bandwidth and rank == 0:
        # one device alone, as the profile's engine ran: every other rank waits at the barrier below
        x = torch.ones(BANDWIDTH_BYTES[device] // 4, dtype=torch.float32, device=where)
        out["bandwidth_bytes_per_s"] = x.numel() * 4 / _timed(lambda: x.sum(), sync)
        del x
    if world > 1:
        dist.init_process_group("gloo" if device == "cpu" else "nccl", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world)
        dist.barrier()
        points = []
        for n in sizes:
            t = torch.ones(max(1, n // 4), dtype=torch.float32, device=where)
            points.append({"devices": world, "bytes": n, "seconds": _timed(lambda: dist.all_reduce(t), sync, repeats(n))})
        dist.barrier()
        dist.destroy_process_group()
        out["allreduce"] = points
    return out


def probe(device: str, devices: int, sizes: list[int], cores_per_device: int = 1, timeout_s: float = 300
          ) -> tuple[float | None, list[AllReducePoint], str]:
    """(one device's bandwidth in bytes/s, all-reduce points between `devices` devices, the backend);
    every rank is a process of its own on its own device, started from here."""
    from evaluator.hosts import usable_cpus
    from launchers.engines.base import free_port
    cpus = usable_cpus()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = []
    for rank in range(max(1, devices)):
        cores = cpus[rank * cores_per_device:(rank + 1) * cores_per_device] if device == "cpu" else []
        argv = [sys.executable, "-m", "evaluator.predict.probe", "--worker", "--rank", str(rank), "--world",
                str(max(1, devices)), "--port", str(port), "--device", device, "--cores", ",".join(map(str, cores)),
                "--bytes", ",".join(map(str, sizes))]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results, errors = [], []
    deadline = time.time() + timeout_s
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError(f"the collective probe did not finish in {timeout_s:.0f} s") from None
        if p.returncode != 0:
            errors.append((err.strip().splitlines() or [f"exit {p.returncode}"])[-1])
        else:
            results.append(json.loads(out.strip().splitlines()[-1]))
    if errors:
        raise RuntimeError(f"the collective probe failed: {errors[0]}")
    first = results[0]
    points = [AllReducePoint(**p) for p in first.get("allreduce", [])]
    return first.get("bandwidth_bytes_per_s"), points, ("gloo" if device == "cpu" else "nccl")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluator.predict.probe",
                                description="One device's memory bandwidth and the all-reduce between devices, "
                                            "as JSON on the last stdout line.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--devices", type=int, default=2, help="devices in the all-reduce (1: bandwidth only)")
    p.add_argument("--cpu-cores-per-device", type=int, default=1)
    p.add_argument("--bytes", default="512,65536,1048576", help="comma-separated all-reduce payloads in bytes")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cores", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        sizes = [int(x) for x in args.bytes.split(",") if x.strip()]
    except ValueError:
        p.exit(2, f"error: --bytes {args.bytes!r}: give comma-separated whole numbers\n")
    if args.worker:
        cores = [int(c) for c in args.cores.split(",") if c.strip()]
        print(json.dumps(_worker(args.rank, args.world, args.port, args.device, cores, sizes, True)))
        return 0
    if args.devices < 1 or any(n < 1 for n in sizes):
        p.exit(2, "error: --devices and every --bytes value must be at least 1\n")
    bw, points, backend = probe(args.device, args.devices, sizes, args.cpu_cores_per_device)
    print(json.dumps({"bandwidth_bytes_per_s": bw, "backend": backend, "allreduce": [p.__dict__ for p in points]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
