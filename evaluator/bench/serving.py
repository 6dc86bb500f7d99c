"""python -m evaluator.bench.serving: our load client beside the engine's own (`vllm bench serve`)
and a referee (AIPerf) on the same server, the same kind of prompts and the same concurrency, back
to back, as ratios. The client must not be the bottleneck or bend the numbers: ours / theirs should
be ~1 for output tok/s, mean TTFT and mean TPOT.

One server is started through the same ServerReplica as a serving run and warmed by an untimed
level of our client first (the first requests after a start are slower: a first measured client
would pay for it); each repeat and level then runs every client once, the order rotating between
repeats. Every run (the warm-up included) sends --limit GSM8K prompts that no other run sent: the
next unused rows of --data, so that prefix caching favours no client (a run that re-sent what the
one before it sent would time cached prefills). Answers are --max-tokens long (ignore_eos), so every
client times the same work. Beside the clients' figures the server's own mean TTFT over the same
requests, from its Prometheus histogram (vllm:time_to_first_token_seconds, read before and after
each client), is a further referee: a client whose TTFT sits far above the server's is timing
itself. --trust-env runs our client once more with aiohttp's trust_env=True, as `vllm bench serve`'s
session has it (netrc and proxy lookups per request, inside the TTFT clock). The referee runs from
its own venv (`make referee`; evaluator/bench/referee.py says why AIPerf); --referee none skips it.

    python -m evaluator.bench.serving --model models/tiny --data data/gsm8k_test.parquet \
        --concurrency 4,16 --limit 32 --max-tokens 64 --repeats 3
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
CLIENTS = ("theirs", "ours", "referee")      # the order of a level's first repeat; it rotates after


def build_parser() -> argparse.ArgumentParser:
    from evaluator.cli import levels
    p = argparse.ArgumentParser(
        prog="python -m evaluator.bench.serving",
        description="Our serving load client against vLLM's own (vllm bench serve) and a referee (AIPerf) on one "
                    "vLLM server: the same kind of prompts (GSM8K chat messages, fresh ones for every client's run), "
                    "same concurrency, greedy, back to back; prints ours/theirs and ours/referee for output tok/s, "
                    "mean TTFT, mean TPOT and mean ITL.",
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


def add_referee_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The referee's flags, this bench's only (evaluator.bench.fidelity shares build_parser)."""
    from evaluator.bench.referee import REFEREES
    p.add_argument("--referee", choices=REFEREES, default="aiperf",
                   help="a second peer client run beside ours and vllm bench serve's on fresh prompts of the same "
                        "shape (AIPerf, from .venv-referee: `make referee`); none: no referee")
    p.add_argument("--referee-bin", metavar="PATH",
                   help="the referee's executable; unset: .venv-referee/bin/aiperf in this checkout, else aiperf "
                        "on PATH")
    return p


def plan_runs(levels, repeats: int, warmup: bool, clients: tuple[str, ...]) -> list[tuple[str, int, int, str]]:
    """Every client run of the bench in the order it happens, as (tag, level, repeat, who): the
    warm-up (level 0), then per level and repeat each client once, the order rotating by one per
    repeat so that each goes first as often as the others; ours_trust_env (when asked) goes last."""
    runs = [("warmup", 0, 0, "warmup")] if warmup else []
    for level in levels:
        c = int(level)
        for rep in range(1, repeats + 1):
            first = [w for w in clients if w != "ours_trust_env"]
            k = (rep - 1) % len(first)
            order = first[k:] + first[:k] + [w for w in clients if w == "ours_trust_env"]
            runs += [(f"{who}-c{c}-r{rep}", c, rep, who) for who in order]
    return runs


def _clients(args) -> tuple[str, ...]:
    clients = [w for w in CLIENTS if w != "referee" or getattr(args, "referee", "none") != "none"]
    return tuple(clients + (["ours_trust_env"] if args.trust_env else []))


def check(args) -> None:
    """What this bench needs beyond the shared flags, checked before any engine starts (UsageError):
    enough unused prompts in --data for every run's fresh ones, and the referee on this machine."""
    from evaluator.bench.referee import RefereeError, find_referee
    from evaluator.data import read_rows
    from evaluator.errors import UsageError
    levels = args.concurrency
    if any(c == float("inf") or c != int(c) or c < 1 for c in levels) or len(set(levels)) < len(levels):
        raise UsageError(f"--concurrency {','.join(f'{c:g}' for c in levels)}: the levels must be distinct whole numbers "
                         "of requests in flight, at least 1")
    runs = plan_runs(levels, args.repeats, not args.no_warmup, _clients(args))
    need, have = len(runs) * args.limit, len(read_rows(args.data))
    if need > have:
        raise UsageError(f"--data {args.data} has {have} prompts; {len(runs)} client runs (warm-up, {len(args.concurrency)} "
                         f"level(s) x {args.repeats} repeat(s) x {len(_clients(args))} client(s)) x --limit {args.limit} "
                         f"need {need} that no run re-sends: lower --limit or --repeats")
    try:
        find_referee(args.referee, args.referee_bin)
    except RefereeError as e:
        raise UsageError(str(e)) from None


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
    data = work / f"{tag}-prompts.jsonl"
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


def referee(ref, cfg, url: str, model_name: str, prompts, concurrency: int, work: Path, tag: str) -> dict[str, float]:
    """The referee's figures over one run of `prompts` (each prompt's user message, as theirs)."""
    from evaluator.bench.referee import run_referee
    return run_referee(ref, work, tag, [p.messages[-1]["content"] for p in prompts], url=url, model_name=model_name,
                       tokenizer=cfg.model, concurrency=concurrency, max_tokens=cfg.sampling.max_tokens,
                       ignore_eos=cfg.sampling.ignore_eos)


def run(args, out_dir: Path, console: Console) -> dict[str, Any]:
    from evaluator.bench.referee import find_referee
    from evaluator.data import load_prompts
    from evaluator.events import ignore
    from evaluator.hosts import host_facts
    from evaluator.pool import ReplicaPool, actor_env, engine_spec
    from launchers.replica import ServerReplica
    import socket
    cfg = _config(args)
    ref = find_referee(getattr(args, "referee", "none"), getattr(args, "referee_bin", None))
    runs = plan_runs(args.concurrency, args.repeats, not args.no_warmup, _clients(args))
    # fresh prompts for every run: run k takes rows k*limit .. (k+1)*limit - 1 (check() made sure they exist)
    prompts = load_prompts(cfg.data, cfg.model_folder, len(runs) * args.limit)
    fresh = {tag: prompts[k * args.limit:(k + 1) * args.limit] for k, (tag, *_) in enumerate(runs)}
    host = host_facts(cfg.engine, cfg.device, cfg.cpu_cores_per_device)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = engine_spec(cfg)
    pool = ReplicaPool(cfg, ServerReplica, lambda rank: (rank, cfg.engine, spec, actor_env(cfg, rank),
                                                          str(out_dir / "server.log"), socket.gethostname()), ignore)
    rows = {}
    try:
        pool.start()
        info = pool.members[0].info
        url, name = info["url"], info["model_name"]
        console.print(f"server up in {info['startup_s']:.1f} s at {url}")
        for tag, c, rep, who in runs:
            mine = fresh[tag]
            if who == "warmup":
                c = int(max(args.concurrency))
                console.print(f"warm-up (untimed): our client at c={c}")
                ours(cfg, url, name, mine, c)
                continue
            if who == "theirs":
                measure = lambda: theirs(cfg, url, name, mine, c, out_dir, f"vllm-c{c}-r{rep}")
            elif who == "referee":
                measure = lambda: referee(ref, cfg, url, name, mine, c, out_dir, f"{ref.name}-c{c}-r{rep}")
            else:
                measure = lambda: ours(cfg, url, name, mine, c, trust_env=who == "ours_trust_env")
            row = rows.setdefault((c, rep), {"concurrency": c, "repeat": rep, "order": []})
            row["order"].append(who)
            row[who] = refereed(measure, url)
            console.print(f"c={c} repeat {rep} {who}: " + ", ".join(f"{k} {v:.1f}" for k, v in row[who].items()
                                                                    if isinstance(v, float)))
    finally:
        pool.close()
    rows = list(rows.values())
    ratios, by_referee = {}, {}
    for level in args.concurrency:
        mine = [r for r in rows if r["concurrency"] == int(level)]
        ratios[f"c={int(level)}"] = _ratios(mine, "theirs")
        if ref:
            by_referee[f"c={int(level)}"] = _ratios(mine, "referee")
        # each client's mean TTFT over the server's own for the same requests (1 = no client cost)
        for who in ("ours", "theirs", "referee", "ours_trust_env"):
            values = [r[who]["mean_ttft_ms"] / r[who]["server_mean_ttft_ms"] for r in mine
                      if who in r and r[who].get("server_mean_ttft_ms")]
            if values:
                ratios[f"c={int(level)}"][f"{who}_ttft_over_server"] = _stat(values)
    return {"bench_id": out_dir.name, "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "engine": cfg.engine, "model": cfg.model, "device_name": host.device_name, "versions": host.versions,
            "prompts": args.limit, "max_tokens": cfg.sampling.max_tokens, "ignore_eos": cfg.sampling.ignore_eos,
            "server_startup_s": info["startup_s"], "warmup": not args.no_warmup, "trust_env": args.trust_env,
            "referee": {"name": ref.name, "version": ref.version} if ref else None,
            # which prompts (extra_info.index of --data) each run sent: no index is in two runs
            "fresh_prompts": {tag: [p.index for p in fresh[tag]] for tag, *_ in runs},
            "measurements": rows, "ours_over_theirs": ratios, "ours_over_referee": by_referee,
            "command": "python -m evaluator.bench.serving " + " ".join(sys.argv[1:])}


def _ratios(rows: list[dict], other: str) -> dict[str, Any]:
    """ours / other per metric over the repeats that have both (median, min, max, values)."""
    return {k: _stat([r["ours"][k] / r[other][k] for r in rows if other in r and r[other][k]]) for k, _ in METRICS}


def _stat(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values} if values else {}


def print_report(report: dict[str, Any], console: Console) -> None:
    ref = (report.get("referee") or {}).get("name")
    t = Table(title=f"Our client / {report['engine']}'s own (vllm bench serve)" + (f" and / {ref}" if ref else "")
                    + f", same server, fresh prompts per run: {report['prompts']} prompts x {report['max_tokens']} "
                    f"tokens on {report['device_name']}")
    cols = ["level", "quantity", "ours / theirs (median)", "min–max"]
    cols += [f"ours / {ref} (median)", "min–max "] if ref else []
    cols += ["ours", "theirs"] + ([ref] if ref else [])
    for col in cols:
        t.add_column(col, justify="left" if col in ("level", "quantity") else "right")
    for level, by in report["ours_over_theirs"].items():
        mine = [r for r in report["measurements"] if f"c={r['concurrency']}" == level]
        for k, _ in METRICS:
            s = by[k]
            if not s:
                continue
            cells = [level, k, f"{s['median']:.3f}", f"{s['min']:.3f}–{s['max']:.3f}"]
            if ref:
                v = report["ours_over_referee"][level][k]
                cells += [f"{v['median']:.3f}", f"{v['min']:.3f}–{v['max']:.3f}"] if v else ["", ""]
            for who in ("ours", "theirs") + (("referee",) if ref else ()):
                cells.append(f"{statistics.median(r[who][k] for r in mine if who in r):.1f}")
            t.add_row(*cells)
        for who in ("ours", "theirs", "referee", "ours_trust_env"):
            s = by.get(f"{who}_ttft_over_server")
            if s:
                name = ref if who == "referee" else who
                t.add_row(level, f"{name} mean TTFT / server's", f"{s['median']:.3f}", f"{s['min']:.3f}–{s['max']:.3f}",
                          *[""] * (len(cols) - 4))
    console.print(t)
    for level, by in report["ours_over_theirs"].items():
        for k, s in by.items():
            if s:
                what = f"{k} ours/theirs" if k in dict(METRICS) else k.replace("referee_", f"{ref}_")
                print(f"serving client {level}: {what} {s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})")
        for k, s in report.get("ours_over_referee", {}).get(level, {}).items():
            if s:
                print(f"serving client {level}: {k} ours/{ref} {s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})")


def bench_main(parser: argparse.ArgumentParser, argv: list[str] | None, run, suffix: str,
               filename: str, check=None) -> tuple[dict[str, Any], Path] | None:
    """The shared life of a serving bench (this one, evaluator.bench.fidelity): flags checked
    before any engine starts (exit 2; `check(args)` raises UsageError for a bench's own), the run,
    its report written atomically; None when it failed (the error already printed)."""
    from evaluator.data import DataError
    from evaluator.errors import RunFailed, UsageError
    from evaluator.store import atomic_write
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    if args.repeats < 1 or args.limit is None or args.limit < 1:
        parser.exit(2, "error: --repeats and --limit must be at least 1\n")
    try:
        if check:
            check(args)
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
    done = bench_main(add_referee_flags(build_parser()), argv, run, "serving-client", "bench-serving.json", check)
    if done is None:
        return 1
    report, path = done
    print_report(report, Console(width=140))
    ref = (report["referee"] or {}).get("name")
    print(json.dumps({"bench": str(path), **{f"{lv}.{k}": round(s["median"], 4) for lv, by in report["ours_over_theirs"].items()
                                             for k, s in by.items() if s},
                      **{f"{lv}.{k}.ours/{ref}": round(s["median"], 4) for lv, by in report["ours_over_referee"].items()
                         for k, s in by.items() if s}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
