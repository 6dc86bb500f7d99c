"""python -m evaluator.bench.serving: our load client beside the engine's own (`vllm bench serve`)
on the same server, the same prompts and the same concurrency, back to back, as ratios. The client
must not be the bottleneck or bend the numbers: ours / theirs should be ~1 for output tok/s, mean
TTFT and mean TPOT.

One server is started through the same ServerReplica as a serving run and warmed by an untimed
level of our client first (the first requests after a start are slower: a first measured client
would pay for it); each repeat and level then runs theirs then ours (the order alternates between
repeats). Beside both clients' figures the server's own mean TTFT over the same requests, from its
Prometheus histogram (vllm:time_to_first_token_seconds, read before and after each client), is the
referee: a client whose TTFT sits far above the server's is timing itself. --trust-env runs our
client a third time with aiohttp's trust_env=True, as `vllm bench serve`'s session has it (netrc and
proxy lookups per request, inside the TTFT clock).

    python -m evaluator.bench.serving --model models/tiny --data data/gsm8k_test.parquet \
        --concurrency 4 --limit 32 --max-tokens 64 --repeats 2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METRICS = (("output_tok_s", "output_throughput"), ("mean_ttft_ms", "mean_ttft_ms"),
           ("mean_tpot_ms", "mean_tpot_ms"), ("mean_itl_ms", "mean_itl_ms"))


def build_parser() -> argparse.ArgumentParser:
    from evaluator.cli import levels
    p = argparse.ArgumentParser(
        prog="python -m evaluator.bench.serving",
        description="Our serving load client against vLLM's own (vllm bench serve) on one vLLM server: same "
                    "prompts (the GSM8K chat messages), same concurrency, greedy, back to back; prints ours/theirs "
                    "for output tok/s, mean TTFT, mean TPOT and mean ITL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engine", choices=("vllm",), default="vllm", help="the engine whose own client is the peer")
    p.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct", help="local model folder or hub id")
    p.add_argument("--data", default="data/gsm8k_test.parquet", help="parquet made by python -m datasets_prep gsm8k")
    p.add_argument("--limit", type=int, default=64, help="prompts per level")
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens per answer")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="let answers end at EOS (default: every answer is --max-tokens long, so both clients "
                        "time the same work)")
    p.add_argument("--concurrency", type=levels, default=(4,), metavar="N,N,...", help="levels, requests in flight")
    p.add_argument("--repeats", type=int, default=2, help="times each level is measured per client")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--gpus", type=int, default=1, help="tensor-parallel size of the one server")
    p.add_argument("--cpu-memory-fraction", type=float, default=0.2, help="CPU hosts: the server's KV cache share of RAM")
    p.add_argument("--max-model-len", type=int, help="engine context length")
    p.add_argument("--engine-kwargs", default="{}", metavar="JSON", help="engine arguments in the engine's own names")
    p.add_argument("--trust-env", action="store_true",
                   help="also run our client with aiohttp trust_env=True (what vllm bench serve's session does), "
                        "to measure what that costs inside the TTFT clock")
    p.add_argument("--no-warmup", action="store_true", help="no untimed warm-up level before the first measured client")
    p.add_argument("--out", default="results/bench", help="report to OUT/BENCH_ID/bench-serving.json")
    return p


def _config(args):
    from evaluator.cli import build_parser as evaluator_parser, config_from_args
    mode = "single" if args.gpus == 1 else "tp"
    argv = ["--engine", args.engine, "--mode", mode, "--gpus", str(args.gpus), "--device", args.device,
            "--model", args.model, "--data", args.data, "--limit", str(args.limit), "--max-tokens",
            str(args.max_tokens), "--engine-kwargs", args.engine_kwargs, "--workload", "serve",
            "--concurrency", ",".join(f"{c:g}" for c in args.concurrency),
            "--cpu-memory-fraction", str(args.cpu_memory_fraction), "--output-dir", args.out]
    argv += [] if args.no_ignore_eos else ["--ignore-eos"]
    argv += ["--max-model-len", str(args.max_model_len)] if args.max_model_len else []
    return config_from_args(evaluator_parser().parse_args(argv))


def theirs(cfg, url: str, model_name: str, prompts, concurrency: int, work: Path, tag: str) -> dict[str, float]:
    from launchers.engines.base import load_client_argv
    data = work / "prompts.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": p.messages[-1]["content"]}) + "\n" for p in prompts))
    argv = load_client_argv(cfg.engine, base_url=url, model=model_name, tokenizer=cfg.model,
                            prompts_jsonl=str(data), num_prompts=len(prompts), max_concurrency=concurrency,
                            max_tokens=cfg.sampling.max_tokens, ignore_eos=cfg.sampling.ignore_eos,
                            result_dir=str(work), result_filename=f"{tag}.json")
    with open(work / f"{tag}.log", "w") as log:
        rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{cfg.engine}'s own load client exited {rc}; see {work / (tag + '.log')}")
    result = json.loads((work / f"{tag}.json").read_text())
    return ({ours: float(result[key]) for ours, key in METRICS}
            | {"completed": result.get("completed"), "output_tokens": result.get("total_output_tokens")})


def ours(cfg, url: str, model_name: str, prompts, concurrency: int, trust_env: bool = False) -> dict[str, float]:
    from evaluator.serve import Workload
    from evaluator.serving.client import Endpoints, run_level_sync
    from evaluator.serving.metrics import level_stats
    from evaluator.serving.records import Level
    results, duration_s = run_level_sync(Endpoints([url]), Workload(cfg, prompts).requests,
                                         Level("concurrency", concurrency), cfg.sampling, model_name,
                                         trust_env=trust_env, health_interval_s=None)
    s = level_stats(results, duration_s, 1, None, None)
    return {"output_tok_s": s.output_tokens_per_s, "mean_ttft_ms": s.ttft_ms_mean, "mean_tpot_ms": s.tpot_ms_mean,
            "mean_itl_ms": s.itl_ms_mean, "completed": s.ok, "output_tokens": sum(r.completion_tokens for r in results if r.ok)}


def server_ttft(url: str) -> tuple[float, float] | None:
    """(sum of seconds, count) of the server's own TTFT histogram, vllm:time_to_first_token_seconds."""
    import urllib.request
    from evaluator.serving.scrape import total
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    except OSError:
        return None
    count = total(text, "vllm:time_to_first_token_seconds_count")
    return None if count is None else (total(text, "vllm:time_to_first_token_seconds_sum") or 0.0, count)


def refereed(measure, url: str) -> dict[str, float]:
    """A client's figures with the server's own mean TTFT over exactly its requests beside them."""
    before = server_ttft(url)
    got = measure()
    after = server_ttft(url)
    if before and after and after[1] > before[1]:
        got["server_mean_ttft_ms"] = 1000 * (after[0] - before[0]) / (after[1] - before[1])
    return got


def run(args, out_dir: Path, console: Console) -> dict[str, Any]:
    from evaluator.data import load_prompts
    from evaluator.events import ignore
    from evaluator.hosts import host_facts
    from evaluator.pool import ReplicaPool, actor_env, engine_spec
    from launchers.replica import ServerReplica
    import socket
    cfg = _config(args)
    prompts = load_prompts(cfg.data, cfg.model_folder, cfg.limit)
    host = host_facts(cfg.engine, cfg.device, cfg.cpu_cores_per_device)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = engine_spec(cfg)
    pool = ReplicaPool(cfg, ServerReplica, lambda rank: (rank, cfg.engine, spec, actor_env(cfg, rank),
                                                          str(out_dir / "server.log"), socket.gethostname()), ignore)
    rows = []
    try:
        pool.start()
        info = pool.members[0].info
        url, name = info["url"], info["model_name"]
        console.print(f"server up in {info['startup_s']:.1f} s at {url}")
        if not args.no_warmup:
            c = int(max(args.concurrency))
            console.print(f"warm-up (untimed): our client at c={c}")
            ours(cfg, url, name, prompts, c)
        for level in args.concurrency:
            c = int(level)
            for rep in range(1, args.repeats + 1):
                order = ("theirs", "ours") if rep % 2 else ("ours", "theirs")
                if args.trust_env:
                    order += ("ours_trust_env",)
                got = {}
                for who in order:
                    if who == "theirs":
                        measure = lambda: theirs(cfg, url, name, prompts, c, out_dir, f"vllm-c{c}-r{rep}")
                    else:
                        measure = lambda: ours(cfg, url, name, prompts, c, trust_env=who == "ours_trust_env")
                    got[who] = refereed(measure, url)
                    console.print(f"c={c} repeat {rep} {who}: " + ", ".join(f"{k} {v:.1f}" for k, v in got[who].items()
                                                                            if isinstance(v, float)))
                rows.append({"concurrency": c, "repeat": rep, "order": list(order), **{w: got[w] for w in got}})
    finally:
        pool.close()
    ratios = {}
    for level in args.concurrency:
        mine = [r for r in rows if r["concurrency"] == int(level)]
        ratios[f"c={int(level)}"] = {k: _stat([r["ours"][k] / r["theirs"][k] for r in mine if r["theirs"][k]])
                                     for k, _ in METRICS}
        # each client's mean TTFT over the server's own for the same requests (1 = no client cost)
        for who in ("ours", "theirs", "ours_trust_env"):
            values = [r[who]["mean_ttft_ms"] / r[who]["server_mean_ttft_ms"] for r in mine
                      if who in r and r[who].get("server_mean_ttft_ms")]
            if values:
                ratios[f"c={int(level)}"][f"{who}_ttft_over_server"] = _stat(values)
    return {"bench_id": out_dir.name, "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "engine": cfg.engine, "model": cfg.model, "device_name": host.device_name, "versions": host.versions,
            "prompts": len(prompts), "max_tokens": cfg.sampling.max_tokens, "ignore_eos": cfg.sampling.ignore_eos,
            "server_startup_s": info["startup_s"], "warmup": not args.no_warmup, "trust_env": args.trust_env,
            "measurements": rows, "ours_over_theirs": ratios,
            "command": "python -m evaluator.bench.serving " + " ".join(sys.argv[1:])}


def _stat(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values} if values else {}


def print_report(report: dict[str, Any], console: Console) -> None:
    t = Table(title=f"Our client / {report['engine']}'s own (vllm bench serve), same server: {report['prompts']} prompts "
                    f"x {report['max_tokens']} tokens on {report['device_name']}")
    for col in ("level", "quantity", "ours / theirs (median)", "min–max", "ours", "theirs"):
        t.add_column(col, justify="left" if col in ("level", "quantity") else "right")
    for level, by in report["ours_over_theirs"].items():
        mine = [r for r in report["measurements"] if f"c={r['concurrency']}" == level]
        for k, _ in METRICS:
            s = by[k]
            if not s:
                continue
            t.add_row(level, k, f"{s['median']:.3f}", f"{s['min']:.3f}–{s['max']:.3f}",
                      f"{statistics.median(r['ours'][k] for r in mine):.1f}",
                      f"{statistics.median(r['theirs'][k] for r in mine):.1f}")
        for who in ("ours", "theirs", "ours_trust_env"):
            s = by.get(f"{who}_ttft_over_server")
            if s:
                t.add_row(level, f"{who} mean TTFT / server's", f"{s['median']:.3f}", f"{s['min']:.3f}–{s['max']:.3f}",
                          "", "")
    console.print(t)
    for level, by in report["ours_over_theirs"].items():
        for k, s in by.items():
            if s:
                print(f"serving client {level}: {k} ours/theirs {s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})")


def bench_main(parser: argparse.ArgumentParser, argv: list[str] | None, run, suffix: str,
               filename: str) -> tuple[dict[str, Any], Path] | None:
    """The shared life of a serving bench (this one, evaluator.bench.fidelity): flags checked
    before any engine starts (exit 2), the run, its report written atomically; None when it failed
    (the error already printed)."""
    from evaluator.data import DataError
    from evaluator.errors import RunFailed, UsageError
    from evaluator.store import atomic_write
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    if args.repeats < 1 or args.limit is None or args.limit < 1:
        parser.exit(2, "error: --repeats and --limit must be at least 1\n")
    try:
        _config(args)
    except (UsageError, DataError) as e:
        parser.exit(2, f"error: {e}\n")
    out_dir = Path(args.out) / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{args.engine}-{suffix}"
    try:
        report = run(args, out_dir, err)
    except (RunFailed, UsageError, RuntimeError) as e:
        err.print(f"error: {e}", markup=False)
        return None
    path = out_dir / filename
    atomic_write(path, json.dumps(report, indent=2) + "\n")
    return report, path


def main(argv: list[str] | None = None) -> int:
    done = bench_main(build_parser(), argv, run, "serving-client", "bench-serving.json")
    if done is None:
        return 1
    report, path = done
    print_report(report, Console(width=140))
    print(json.dumps({"bench": str(path), **{f"{lv}.{k}": round(s["median"], 4) for lv, by in report["ours_over_theirs"].items()
                                             for k, s in by.items() if s}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
