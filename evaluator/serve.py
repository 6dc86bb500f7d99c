"""The serving driver: each replica runs the engine's own OpenAI-compatible server (a ServerReplica
actor starts it on a free port and waits for its health check); the load client sends the GSM8K
prompts as streamed chat requests at each load level, routing every request to the replica with
the fewest in flight; every response is timed, kept and scored like an offline answer.

A level is the unit of resume: its requests are written (requests.jsonl) when it ends, and a
resumed run re-runs only the levels it had not finished. A server that dies mid-level: its
requests are retried on the others (counted as retries), and its processes are ended.

    python -m evaluator --engine vllm --mode dp --gpus 2 --workload serve --concurrency 1,4,16,64
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import socket
import time

from evaluator.errors import RunFailed, UsageError
from evaluator.events import EnginesClosed, LevelDone, LevelStarted, Listener, RequestDone, ignore
from evaluator.hosts import HostFacts
from evaluator.pool import ReplicaPool, actor_env, engine_spec
from evaluator.records import Prompt, ReplicaTiming, RunConfig, RunSummary, Sample, ServeConfig
from evaluator.intervals import wilson_interval
from evaluator.scoring import score_samples
from evaluator.serving.client import Endpoints, run_level_sync
from evaluator.serving.metrics import level_stats
from evaluator.serving.records import ChatRequest, Level, RequestResult
from evaluator.signals import sigterm_raises
from evaluator.store import RunDir
from evaluator.summary import attempts_of


def levels_of(serve: ServeConfig) -> list[Level]:
    return [Level(serve.level_kind, v) for v in serve.levels]


def level_prompts(prompts: list[Prompt], serve: ServeConfig, level: Level) -> list[Prompt]:
    """all, the first N, or N x the level's value (at most all)."""
    spec = serve.level_prompts
    if spec == "all":
        return prompts
    if spec.endswith("x"):
        n = len(prompts) if math.isinf(level.value) else int(spec[:-1]) * math.ceil(level.value)
    else:
        n = int(spec)
    return prompts[:max(1, n)]


def chat_requests(prompts: list[Prompt], cfg: RunConfig) -> list[ChatRequest]:
    s = cfg.sampling
    return [ChatRequest(p.index, p.messages, s.seed + p.index if s.temperature > 0 else None) for p in prompts]


def scored(results: list[RequestResult], golds: dict[int, str]) -> list[Sample]:
    """A failed request counts as a wrong, empty answer: nothing is dropped from the accuracy."""
    rows = [(r.replica, r.index, {"texts": [r.text], "prompt_tokens": r.prompt_tokens,
                                  "completion_tokens": r.completion_tokens}) for r in results]
    return score_samples(rows, golds)


def level_record(results: list[RequestResult], duration_s: float, cfg: RunConfig, golds: dict[int, str]) -> dict:
    sv = cfg.serve
    stats = level_stats(results, duration_s, cfg.dp * cfg.tp, sv.slo_ttft_ms, sv.slo_tpot_ms).to_dict()
    samples = scored(results, golds)
    n, strict, flexible = len(samples), sum(s.strict_correct for s in samples), sum(s.flexible_correct for s in samples)
    return {**stats, "strict_accuracy": strict / n if n else 0.0, "flexible_accuracy": flexible / n if n else 0.0,
            "strict_ci": wilson_interval(strict, n), "flexible_ci": wilson_interval(flexible, n)}


def finished_levels(run_dir: RunDir) -> dict[str, tuple[int, float]]:
    """level label -> (attempt that finished it, its duration_s), from earlier attempts."""
    out = {}
    for k, note in sorted(run_dir.read_attempts().items()):
        for label, duration_s in note.get("levels_done", {}).items():
            out[label] = (k, duration_s)
    return out


def execute(cfg: RunConfig, run_id: str, run_dir: RunDir, prompts: list[Prompt], host: HostFacts,
            listener: Listener = ignore, actor_cls: type | None = None) -> RunSummary:
    from launchers.replica import ServerReplica
    t0 = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    levels = levels_of(cfg.serve)
    earlier = finished_levels(run_dir)
    attempt = run_dir.begin_attempt(started_at)
    spec, me = engine_spec(cfg), socket.gethostname()
    pool = ReplicaPool(cfg, actor_cls or ServerReplica,
                       lambda rank: (rank, cfg.engine, spec, actor_env(cfg, rank),
                                     str(run_dir.log_path(f"server-{rank}-attempt{attempt}.log")), me),
                       listener, on_placed=run_dir.write_replicas)
    golds = {p.index: p.gold for p in prompts}
    done_now: dict[str, float] = {}
    served: dict[int, list[RequestResult]] = {}
    with sigterm_raises():
        try:
            if any(level.label not in earlier for level in levels):
                pool.start()
                run_dir.note_attempt(attempt, startup_s=max(m.startup_s for m in pool.members))
                live = pool.alive()
                endpoints = Endpoints([m.info["url"] for m in live])
                model = live[0].info["model_name"]
                for position, level in enumerate(levels, 1):
                    if level.label in earlier:
                        continue
                    requests = chat_requests(level_prompts(prompts, cfg.serve, level), cfg)
                    listener(LevelStarted(level.label, position, len(levels), len(requests)))
                    results, duration_s = run_level_sync(
                        endpoints, requests, level, cfg.sampling, model,
                        on_result=lambda r: listener(RequestDone(live[r.replica].rank if r.replica >= 0 else -1, r.ok)),
                        seed=cfg.sampling.seed, request_timeout_s=cfg.serve.request_timeout_s)
                    results = [dataclasses.replace(r, replica=live[r.replica].rank if r.replica >= 0 else -1)
                               for r in results]
                    for pos, why in endpoints.dead.items():   # a server the client found dead: end it
                        pool.fail(live[pos], f"server stopped answering: {why}")
                    rejected = [r for r in results if r.rejected]
                    if rejected:
                        raise UsageError(f"the server refused {len(rejected)} request(s) as invalid: {rejected[0].error}")
                    run_dir.append_requests([{**r.to_dict(), "attempt": attempt} for r in results])
                    done_now[level.label] = duration_s
                    run_dir.note_attempt(attempt, levels_done={**done_now})
                    rec = level_record(results, duration_s, cfg, golds)
                    listener(LevelDone(level.label, f"{rec['request_per_s']:.2f} req/s, "
                                                    f"{rec['output_tokens_per_s']:.0f} tok/s, "
                                                    f"{rec['errors']} errors, {rec['retries']} retries"))
                    for r in results:
                        served.setdefault(r.replica, []).append(r)
                    if not endpoints.alive():
                        raise RunFailed("every server died: " + "; ".join(pool.failures))
        finally:
            pool.close()
    listener(EnginesClosed())
    wall_s = time.perf_counter() - t0
    run_dir.note_attempt(attempt, finished=True, wall_s=wall_s)
    return _summary(cfg, run_id, run_dir, attempt, levels, golds, pool, served, started_at, wall_s, host)


def _summary(cfg, run_id, run_dir, attempt, levels, golds, pool, served, started_at, wall_s, host) -> RunSummary:
    """Per level: throughput, latency percentiles, goodput and accuracy. The run's accuracy and
    samples.jsonl are the answers of the level that sent the most prompts (the first such level),
    so --compare pairs them with any other run of the same prompts."""
    from launchers.engines.base import engine_env
    keep = finished_levels(run_dir)
    by_level: dict[str, list[RequestResult]] = {}
    for line in run_dir.read_requests():
        written_by = line.pop("attempt")
        r = RequestResult.from_dict(line)
        if keep.get(r.level, (None,))[0] == written_by:
            by_level.setdefault(r.level, []).append(r)
    records = [level_record(by_level[lv.label], keep[lv.label][1], cfg, golds) for lv in levels]
    widest = max(levels, key=lambda lv: len(by_level[lv.label]))     # max keeps the first of equals
    first = scored(by_level[widest.label], golds)
    run_dir.write_samples(first)
    n = len(first)
    strict, flexible = sum(s.strict_correct for s in first), sum(s.flexible_correct for s in first)
    load_s = sum(keep[lv.label][1] for lv in levels)
    tokens = sum(r.completion_tokens for rs in by_level.values() for r in rs if r.ok)
    replicas = [ReplicaTiming(rank=m.rank, devices=m.info.get("devices", "?"), startup_s=m.startup_s,
                              generate_s=load_s, prompts=sum(r.ok for r in served.get(m.rank, [])),
                              prompt_tokens=sum(r.prompt_tokens for r in served.get(m.rank, [])),
                              completion_tokens=sum(r.completion_tokens for r in served.get(m.rank, [])),
                              failed=m.failed, compile=m.info.get("compile", "unknown"))
                for m in pool.members]
    resumed = sum(len(by_level[lv.label]) for lv in levels if keep[lv.label][0] != attempt)
    summary = RunSummary(
        run_id=run_id, config=cfg, prompts=n, wall_s=wall_s,
        startup_s=max((m.startup_s for m in pool.members), default=0.0), generate_s=load_s,
        output_tokens_per_s=tokens / load_s if load_s else 0.0,
        prompt_tokens=sum(s.prompt_tokens for s in first), completion_tokens=sum(s.completion_tokens for s in first),
        strict_accuracy=strict / n if n else 0.0, flexible_accuracy=flexible / n if n else 0.0,
        strict_ci=wilson_interval(strict, n), flexible_ci=wilson_interval(flexible, n),
        replicas=tuple(replicas), versions=host.versions, device_name=host.device_name, started_at=started_at,
        failures=tuple(pool.failures), rerun_prompts=sum(r.retries for rs in by_level.values() for r in rs),
        resumed_prompts=resumed, timed_prompts=sum(len(rs) for rs in by_level.values()) - resumed,
        timed_completion_tokens=tokens, attempts=attempts_of(run_dir),
        engine_env=engine_env(cfg.engine, engine_spec(cfg)), levels=tuple(records))
    run_dir.write_summary(summary)
    return summary
