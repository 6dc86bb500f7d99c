"""python -m evaluator.bench.client: the load client measured on its own, against fast fake servers
(evaluator.bench.fakeserver, separate processes) or, for the soak, a real serving run.

  lag    send lag at rising request rates: how late each request goes out against its Poisson
         schedule (p50/p99); the highest rate whose p99 stays under --max-lag-ms is how far the
         client keeps up (every rate of a measurement must be well below it)
  soak   many requests over many levels, with this process's resident memory, open file
         descriptors, threads and child processes sampled before, during and after: the growth per
         1,000 requests (goal: none beyond noise) and what is left afterwards. --real runs a whole
         serving run of the evaluator (flags after --) instead of the bare client on fakes.

    python -m evaluator.bench.client lag --rates 100,200,500,1000,2000 --requests 2000
    python -m evaluator.bench.client soak --requests 2000 --levels 10
    python -m evaluator.bench.client soak --real -- --engine vllm --device cpu --model models/tiny \
        --data data/gsm8k_test.parquet --max-tokens 4 --concurrency 2,4,6,8,10,12,14,16,18,20
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil


@contextlib.contextmanager
def fake_servers(n: int, tokens: int = 4, ttft_s: float = 0.0, gap_s: float = 0.0):
    """n fake servers in processes of their own; yields their base URLs."""
    from evaluator.bench.fakeserver import free_port
    procs, urls = [], []
    try:
        for _ in range(n):
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "evaluator.bench.fakeserver", "--port", str(port),
                                           "--tokens", str(tokens), "--ttft-s", str(ttft_s), "--gap-s", str(gap_s)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.time() + 30
        for url in urls:
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=1)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"fake server {url} did not start")
                    time.sleep(0.1)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def requests(n: int, start: int = 0):
    from evaluator.serving.records import ChatRequest
    return [ChatRequest(start + i, ({"role": "user", "content": f"question {start + i}"},)) for i in range(n)]


def lag(args) -> dict[str, Any]:
    from evaluator.records import SamplingConfig
    from evaluator.serving.client import Endpoints, run_level_sync
    from evaluator.serving.metrics import level_stats
    from evaluator.serving.records import Level
    out = []
    with fake_servers(args.servers) as urls:
        for rate in args.rates:
            n = args.requests
            results, duration_s = run_level_sync(Endpoints(urls), requests(n), Level("rate", rate),
                                                 SamplingConfig(max_tokens=4), "fake", seed=1, health_interval_s=None)
            s = level_stats(results, duration_s, 1, None, None)
            out.append({"rate": rate, "requests": n, "ok": s.ok, "send_lag_ms_p50": s.send_lag_ms_p50,
                        "send_lag_ms_p99": s.send_lag_ms_p99, "achieved_rps": s.request_per_s})
            print(f"rate {rate:g}/s: send lag p50 {s.send_lag_ms_p50:.2f} ms, p99 {s.send_lag_ms_p99:.2f} ms, "
                  f"{s.ok}/{n} ok, {s.request_per_s:.0f} req/s achieved", flush=True)
    kept = [r["rate"] for r in out if r["send_lag_ms_p99"] is not None and r["send_lag_ms_p99"] < args.max_lag_ms]
    return {"kind": "lag", "servers": args.servers, "max_lag_ms": args.max_lag_ms, "levels": out,
            "highest_rate_within": max(kept) if kept else None}


class Sampler:
    """This process's RSS, open fds, threads and children, every interval, with a request count."""

    def __init__(self, interval_s: float = 0.5):
        self.me, self.interval_s, self.done = psutil.Process(), interval_s, 0
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict:
        return {"t": time.time(), "requests": self.done, "rss_mb": self.me.memory_info().rss / 2**20,
                "fds": self.me.num_fds(), "threads": self.me.num_threads(),
                "children": len(self.me.children(recursive=True))}

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.samples.append(self.sample())

    def __enter__(self):
        self.before = self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def growth_per_1000(samples: list[dict], key: str, skip_first: int) -> float | None:
    """Least-squares slope of key against requests done, per 1,000 requests, after the first
    skip_first requests (the first level warms caches and pools). Where levels' ends were sampled,
    only those count: mid-level, open connections and their fds rise with each level's concurrency
    by design, and a leak is what stays once a level is over."""
    ends = [s for s in samples if s.get("level_end")]
    pts = [(s["requests"], s[key]) for s in (ends or samples) if s["requests"] >= skip_first]
    if len({x for x, _ in pts}) < 2:
        return None
    mx, my = statistics.mean(x for x, _ in pts), statistics.mean(y for _, y in pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return 1000 * sum((x - mx) * (y - my) for x, y in pts) / var


def soak(args, passthrough: list[str]) -> dict[str, Any]:
    per_level = max(1, args.requests // args.levels)
    with Sampler() as sampler:
        if args.real:
            run = soak_real(passthrough, sampler)
        else:
            from evaluator.records import SamplingConfig
            from evaluator.serving.client import Endpoints, run_level_sync
            from evaluator.serving.records import Level
            with fake_servers(args.servers) as urls:
                endpoints = Endpoints(urls)
                for k in range(args.levels):
                    def count(r):
                        sampler.done += 1
                    run_level_sync(endpoints, requests(per_level, k * per_level), Level("concurrency", 2 + 2 * k),
                                   SamplingConfig(max_tokens=4), "fake", on_result=count)
                    sampler.samples.append(sampler.sample() | {"level_end": True})
            run = {"levels": args.levels, "requests": sampler.done}
    time.sleep(1.0)                    # the sampler's own thread has ended: what is left is the run's
    after = sampler.sample()
    before = sampler.before
    out = {"kind": "soak", "real": args.real, **run, "before": before, "after": after,
           "samples": sampler.samples,
           "growth_per_1000": {k: growth_per_1000(sampler.samples, k, per_level) for k in ("rss_mb", "fds", "threads")},
           "left_after": {k: after[k] - before[k] for k in ("rss_mb", "fds", "threads", "children")}}
    return out


def soak_real(passthrough: list[str], sampler: Sampler) -> dict:
    """A whole serving run of the evaluator in this process (its flags after --), counting requests."""
    from evaluator.cli import parse_flags, new_run
    from evaluator.data import load_prompts
    from evaluator.events import RequestDone
    from evaluator.hosts import host_facts
    from evaluator.serve import execute
    from evaluator.store import RunDir
    args = parse_flags(["--workload", "serve", *passthrough])
    cfg, run_id, path = new_run(args)
    prompts = load_prompts(cfg.data, cfg.model_folder, cfg.limit)
    run_dir = RunDir(path)
    run_dir.write_config(cfg, {"run_id": run_id})

    def listen(event):
        if isinstance(event, RequestDone):
            sampler.done += 1
    summary = execute(cfg, run_id, run_dir, prompts, host_facts(cfg.engine, cfg.device, cfg.cpu_cores_per_device),
                      listener=listen)
    return {"levels": len(summary.levels), "requests": sum(l["requests"] for l in summary.levels),
            "run": str(path), "errors": sum(l["errors"] for l in summary.levels)}


def main(argv: list[str] | None = None) -> int:
    from evaluator.cli import levels, split_passthrough
    argv, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m evaluator.bench.client", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("lag", help="send lag at rising request rates against fake servers")
    a.add_argument("--rates", type=levels, default=(100, 200, 500, 1000, 2000), help="requests/s")
    a.add_argument("--requests", type=int, default=2000, help="requests per rate")
    a.add_argument("--max-lag-ms", type=float, default=5.0, help="the p99 send lag the client must stay under")
    a.add_argument("--servers", type=int, default=2, help="fake servers (replicas) to route over")
    b = sub.add_parser("soak", help="many requests over many levels; this process's resources sampled")
    b.add_argument("--requests", type=int, default=2000)
    b.add_argument("--levels", type=int, default=10)
    b.add_argument("--servers", type=int, default=2)
    b.add_argument("--real", action="store_true", help="a real serving run (evaluator flags after --) instead of fakes")
    for q in (a, b):
        q.add_argument("--out", default="results/bench", help="writes OUT/client-<what>-<time>.json")
    args = p.parse_args(argv)
    report = lag(args) if args.what == "lag" else soak(args, passthrough)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"client-{args.what}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    if args.what == "soak":
        g, left = report["growth_per_1000"], report["left_after"]
        print(f"soak: {report['requests']} requests over {report['levels']} levels; growth per 1,000 requests: "
              + ", ".join(f"{k} {v:+.2f}" if v is not None else f"{k} -" for k, v in g.items())
              + "; left after the run: " + ", ".join(f"{k} {v:+.1f}" for k, v in left.items()))
    else:
        print(f"send lag p99 under {args.max_lag_ms:g} ms up to {report['highest_rate_within']} req/s "
              f"({args.servers} fake servers)")
    print(json.dumps({"report": str(path), **({"growth_per_1000": report["growth_per_1000"],
                                               "left_after": report["left_after"]} if args.what == "soak"
                                              else {"highest_rate_within": report["highest_rate_within"]})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
