"""The serving driver: each replica runs the engine's own OpenAI-compatible server (a ServerReplica
actor starts it on a free port, with a random API key of this run, and waits for its health
check); the load client sends the run's traffic as streamed chat requests at each load level,
routing every request to the replica with the fewest in flight, while the servers' own metrics are
sampled. GSM8K traffic (the default) is scored like an offline run; other traffic (the user's
requests, synthetic shapes) measures speed only, and says what it was.

A level is the unit of resume: its requests are written (requests.jsonl) when it ends, and a
resumed run re-runs only the levels it had not finished; a capacity search is a pure function of
its probes, so a resumed one replays the finished probes from disk. A server that dies mid-level:
its requests are retried on the others (counted as retries), and its processes are ended.

    python -m evaluator --engine vllm --mode dp --gpus 2 --workload serve --concurrency 1,4,16,64
    python -m evaluator --engine vllm --workload serve --traffic synthetic:in=2000,out=200 --capacity \
        --slo-ttft-ms 1000 --slo-tpot-ms 50
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import secrets
import socket
import time
from typing import Any, Callable

from evaluator.errors import RunFailed, UsageError
from evaluator.events import EnginesClosed, LevelDone, LevelStarted, Listener, RequestDone, ignore
from evaluator.hosts import HostFacts
from evaluator.intervals import wilson_interval
from evaluator.pool import ReplicaPool, actor_env, engine_spec
from evaluator.records import Prompt, ReplicaTiming, RunConfig, RunSummary, Sample, ServeConfig
from evaluator.scoring import score_samples
from evaluator.serving import capacity as search
from evaluator.serving.client import Endpoints, run_level_sync
from evaluator.serving.metrics import level_stats
from evaluator.serving.records import ChatRequest, Level, RequestResult
from evaluator.serving.scrape import Scraper
from evaluator.signals import sigterm_raises
from evaluator.store import RunDir
from evaluator.summary import attempts_of

MIN_PROBE_REQUESTS = 20


def levels_of(serve: ServeConfig) -> list[Level]:
    return [Level(serve.level_kind, v) for v in serve.levels]


def level_count(serve: ServeConfig, level: Level, available: int) -> int:
    """all, the first N, or N x the level's value (at most all); a capacity probe sends at least
    MIN_PROBE_REQUESTS (a percentile of fewer says little)."""
    spec = serve.level_prompts
    if spec == "all":
        n = available
    elif spec.endswith("x"):
        n = available if math.isinf(level.value) else int(spec[:-1]) * math.ceil(level.value)
    else:
        n = int(spec)
    if serve.capacity:
        n = max(n, MIN_PROBE_REQUESTS)
    return max(1, min(n, available))


class Workload:
    """The requests a level sends: the GSM8K prompts (scored) or the run's traffic (timed only),
    and what each request asked for, to check the servers' usage against."""

    def __init__(self, cfg: RunConfig, prompts: list[Prompt], traffic=None):
        self.cfg, self.prompts, self.traffic = cfg, prompts, traffic
        s = cfg.sampling
        if traffic is None:
            self.requests = [ChatRequest(p.index, p.messages, s.seed + p.index if s.temperature > 0 else None)
                             for p in prompts]
            self.expected: dict[int, tuple[int | None, int | None]] = {}
        else:
            fixed = True if traffic.fixed_output else None
            self.requests = [ChatRequest(t.index, t.messages, s.seed + t.index if s.temperature > 0 else None,
                                         max_tokens=t.max_tokens, ignore_eos=fixed if t.max_tokens else None,
                                         session=None if t.session is None else str(t.session), turn=t.turn,
                                         at_s=t.timestamp_s) for t in traffic.requests]
            # what the server's usage must say: the prompt (known for first turns only: later ones
            # carry the answers generated live) and, where the traffic fixes it, the output length
            self.expected = {t.index: (t.prompt_tokens if t.turn == 0 else None,
                                       t.max_tokens if traffic.fixed_output else None) for t in traffic.requests}
        self.golds = {p.index: p.gold for p in prompts} if traffic is None else {}

    @property
    def scored(self) -> bool:
        return self.traffic is None

    def name(self) -> str:
        return "gsm8k" if self.traffic is None else self.traffic.name

    def for_level(self, level: Level) -> list[ChatRequest]:
        n = level_count(self.cfg.serve, level, len(self.requests))
        chosen = self.requests[:n]
        # a session is sent whole or not at all (its later turns need the earlier ones)
        keep = {(r.session, r.turn) for r in chosen}
        return [r for r in chosen if r.session is None or all((r.session, t) in keep for t in range(r.turn))]

    def mismatches(self, results: list[RequestResult]) -> dict[str, int]:
        """How many ok requests' usage differs from what the traffic asked for."""
        prompt = output = 0
        for r in results:
            want_in, want_out = self.expected.get(r.index, (None, None))
            if not r.ok:
                continue
            prompt += want_in is not None and r.prompt_tokens != want_in
            output += want_out is not None and r.completion_tokens != want_out
        return {"prompt_tokens_mismatch": prompt, "output_tokens_mismatch": output}

    def shape(self) -> dict[str, Any]:
        if self.traffic is None:
            counts = sorted(p.prompt_tokens for p in self.prompts)
            mean = sum(counts) / len(counts) if counts else None
            return {"name": "gsm8k", "requests": len(counts), "prompt_tokens_mean": mean,
                    "output_tokens": f"up to {self.cfg.sampling.max_tokens}"}
        return {"name": self.traffic.name, **self.traffic.shape()}


def scored(results: list[RequestResult], golds: dict[int, str]) -> list[Sample]:
    """A failed request counts as a wrong, empty answer: nothing is dropped from the accuracy."""
    rows = [(r.replica, r.index, {"texts": [r.text], "prompt_tokens": r.prompt_tokens,
                                  "completion_tokens": r.completion_tokens}) for r in results]
    return score_samples(rows, golds)


def level_record(results: list[RequestResult], duration_s: float, cfg: RunConfig, work: Workload,
                 metrics: dict | None) -> dict:
    """One level's row: the client's statistics, what the servers said (metrics), whether the usage
    matched the traffic, and (GSM8K) accuracy."""
    sv = cfg.serve
    stats = level_stats(results, duration_s, cfg.dp * cfg.tp, sv.slo_ttft_ms, sv.slo_tpot_ms).to_dict()
    rec = {**stats, **work.mismatches(results), "server": metrics or {}}
    if not work.scored:
        return {**rec, "strict_accuracy": None, "flexible_accuracy": None, "strict_ci": None, "flexible_ci": None}
    samples = scored(results, work.golds)
    n, strict, flexible = len(samples), sum(s.strict_correct for s in samples), sum(s.flexible_correct for s in samples)
    return {**rec, "strict_accuracy": strict / n if n else 0.0, "flexible_accuracy": flexible / n if n else 0.0,
            "strict_ci": wilson_interval(strict, n), "flexible_ci": wilson_interval(flexible, n)}


def finished_levels(run_dir: RunDir) -> dict[str, tuple[int, float, dict]]:
    """level label -> (attempt that finished it, its duration_s, its server metrics), from earlier attempts."""
    out = {}
    for k, note in sorted(run_dir.read_attempts().items()):
        metrics = note.get("level_metrics", {})
        for label, duration_s in note.get("levels_done", {}).items():
            out[label] = (k, duration_s, metrics.get(label, {}))
    return out


def requests_of(run_dir: RunDir, keep: dict[str, tuple]) -> dict[str, list[RequestResult]]:
    """Each finished level's results, as written by the attempt that finished it."""
    by_level: dict[str, list[RequestResult]] = {}
    for line in run_dir.read_requests():
        line = dict(line)
        written_by = line.pop("attempt")
        r = RequestResult.from_dict(line)
        if keep.get(r.level, (None,))[0] == written_by:
            by_level.setdefault(r.level, []).append(r)
    return by_level


class LevelRunner:
    """Runs one level on the live servers (or hands back a level an earlier attempt finished),
    writes it, and notes it in the attempt: the unit of resume."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, attempt: int, pool: ReplicaPool, work: Workload,
                 listener: Listener, api_key: str, total: int):
        self.cfg, self.run_dir, self.attempt, self.pool, self.work = cfg, run_dir, attempt, pool, work
        self.listener, self.total, self.headers = listener, total, {"Authorization": f"Bearer {api_key}"}
        self.earlier = finished_levels(run_dir)
        self.earlier_results = requests_of(run_dir, self.earlier)
        self.done: dict[str, float] = {}
        self.metrics: dict[str, dict] = {}
        self.served: dict[int, list[RequestResult]] = {}
        self.position = 0
        self.live: list = []
        self.endpoints: Endpoints | None = None
        self.model = ""

    def connect(self) -> None:
        self.live = self.pool.senders()         # the servers, or (router layouts) the router in front of them
        self.endpoints = Endpoints([m.info["url"] for m in self.live])
        self.model = self.live[0].info["model_name"]

    def run(self, level: Level) -> tuple[list[RequestResult], float]:
        self.position += 1
        if level.label in self.earlier:
            return self.earlier_results.get(level.label, []), self.earlier[level.label][1]
        if self.endpoints is None:
            self.pool.start()
            self.run_dir.note_attempt(self.attempt, startup_s=max(m.startup_s for m in self.pool.members))
            self.connect()
        live, endpoints, sv = self.live, self.endpoints, self.cfg.serve
        requests = self.work.for_level(level)
        self.listener(LevelStarted(level.label, self.position, self.total, len(requests)))
        scraper = Scraper(self.pool.metric_urls(), self.pool_metrics(), headers=self.headers)
        results, duration_s = run_level_sync(
            endpoints, requests, level, self.cfg.sampling, self.model,
            on_result=lambda r: self.listener(RequestDone(live[r.replica].rank if r.replica >= 0 else -1, r.ok)),
            seed=self.cfg.sampling.seed, request_timeout_s=sv.request_timeout_s, max_concurrency=sv.max_concurrency,
            headers=self.headers, monitor=scraper, health_interval_s=sv.health_interval_s or None)
        results = [dataclasses.replace(r, replica=live[r.replica].rank if r.replica >= 0 else -1) for r in results]
        self.pool.check_head()
        for pos, why in endpoints.dead.items():   # a server the client found dead: end it
            self.pool.fail(live[pos], f"server stopped answering: {why}")
        self.refuse_rejected(results)
        self.run_dir.append_requests([{**r.to_dict(), "attempt": self.attempt} for r in results])
        self.done[level.label] = duration_s
        self.metrics[level.label] = scraper.summary()
        self.run_dir.note_attempt(self.attempt, levels_done={**self.done}, level_metrics={**self.metrics})
        rec = level_record(results, duration_s, self.cfg, self.work, self.metrics[level.label])
        self.listener(LevelDone(level.label, f"{rec['request_per_s']:.2f} req/s, {rec['output_tokens_per_s']:.0f} tok/s, "
                                             f"{rec['errors']} errors, {rec['retries']} retries"))
        for r in results:
            self.served.setdefault(r.replica, []).append(r)
        if not endpoints.alive():
            raise RunFailed("every server died: " + "; ".join(self.pool.failures))
        return results, duration_s

    def pool_metrics(self) -> dict:
        from launchers.engines.base import capabilities
        return capabilities(self.cfg.engine).metrics

    def refuse_rejected(self, results: list[RequestResult]) -> None:
        rejected = [r for r in results if r.rejected]
        if not rejected:
            return
        not_found = [r for r in rejected if r.status == 404]
        if not_found:
            raise UsageError(f"the server does not serve the model name {self.model!r} the requests carry "
                             f"({not_found[0].error}); a configuration error, not bad traffic")
        raise UsageError(f"the server refused {len(rejected)} request(s) as invalid: {rejected[0].error}")


def capacity_search(cfg: RunConfig, run: Callable[[Level], tuple[list[RequestResult], float]]) -> list[Level]:
    """Probe rates until the bracket is narrow enough or the budget is spent; the probes run."""
    sv = cfg.serve
    probes, levels = [], []
    while True:
        rate = search.next_rate(probes, sv.capacity_start, sv.capacity_levels, sv.capacity_tolerance)
        if rate is None:
            return levels
        level = Level("rate", rate)
        results, duration_s = run(level)
        levels.append(level)
        probes.append(search.judge(results, rate, duration_s, sv.slo_percentile, sv.slo_ttft_ms, sv.slo_tpot_ms))


def execute(cfg: RunConfig, run_id: str, run_dir: RunDir, prompts: list[Prompt], host: HostFacts,
            listener: Listener = ignore, actor_cls: type | None = None, traffic=None) -> RunSummary:
    from launchers.replica import ServerReplica
    t0 = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    work = Workload(cfg, prompts, traffic)
    attempt = run_dir.begin_attempt(started_at)
    spec, me = engine_spec(cfg), socket.gethostname()
    # every run's servers take a key of its own: a server bound off the loopback (multi-node) is
    # otherwise open to anyone on the cluster network; the key is never written down
    api_key = secrets.token_urlsafe(24)
    pool = ReplicaPool(cfg, actor_cls or ServerReplica,
                       lambda rank: (rank, cfg.engine, spec, actor_env(cfg, rank),
                                     str(run_dir.log_path(f"server-{rank}-attempt{attempt}.log")), me, 1800.0, api_key),
                       listener, on_placed=run_dir.write_replicas)
    total = cfg.serve.capacity_levels if cfg.serve.capacity else len(cfg.serve.levels)
    runner = LevelRunner(cfg, run_dir, attempt, pool, work, listener, api_key, total)
    with sigterm_raises(), run_dir.heartbeat(attempt):
        try:
            levels = capacity_search(cfg, runner.run) if cfg.serve.capacity else levels_of(cfg.serve)
            if not cfg.serve.capacity:
                for level in levels:
                    runner.run(level)
            memory = pool.peak_memory() if runner.endpoints is not None else {}
        finally:
            pool.close()
    listener(EnginesClosed())
    wall_s = time.perf_counter() - t0
    run_dir.note_attempt(attempt, finished=True, wall_s=wall_s)
    return _summary(cfg, run_id, run_dir, attempt, levels, work, pool, runner.served, memory, started_at, wall_s, host)


def _summary(cfg, run_id, run_dir, attempt, levels, work, pool, served, memory, started_at, wall_s, host) -> RunSummary:
    """Per level: throughput, latency percentiles, goodput, server metrics and (GSM8K) accuracy.
    The run's accuracy and samples.jsonl are the answers of the level that sent the most prompts
    (the first such level), so --compare pairs them with any other run of the same prompts."""
    from launchers.engines.base import engine_env
    keep = finished_levels(run_dir)
    by_level = requests_of(run_dir, keep)
    records = [level_record(by_level[lv.label], keep[lv.label][1], cfg, work, keep[lv.label][2]) for lv in levels]
    load_s = sum(keep[lv.label][1] for lv in levels)
    tokens = sum(r.completion_tokens for rs in by_level.values() for r in rs if r.ok)
    if work.scored:
        widest = max(levels, key=lambda lv: len(by_level[lv.label]))     # max keeps the first of equals
        first = scored(by_level[widest.label], work.golds)
        run_dir.write_samples(first)
        n = len(first)
        strict, flexible = sum(s.strict_correct for s in first), sum(s.flexible_correct for s in first)
        accuracy = dict(strict_accuracy=strict / n if n else 0.0, flexible_accuracy=flexible / n if n else 0.0,
                        strict_ci=wilson_interval(strict, n), flexible_ci=wilson_interval(flexible, n))
        prompt_tokens, completion_tokens = sum(s.prompt_tokens for s in first), sum(s.completion_tokens for s in first)
    else:
        n = max((len(by_level[lv.label]) for lv in levels), default=0)
        accuracy = dict(strict_accuracy=None, flexible_accuracy=None, strict_ci=None, flexible_ci=None)
        prompt_tokens = sum(r.prompt_tokens for rs in by_level.values() for r in rs)
        completion_tokens = tokens
    replicas = [ReplicaTiming(rank=m.rank, devices=m.info.get("devices", "?"), startup_s=m.startup_s,
                              generate_s=load_s, prompts=sum(r.ok for r in served.get(m.rank, [])),
                              prompt_tokens=sum(r.prompt_tokens for r in served.get(m.rank, [])),
                              completion_tokens=sum(r.completion_tokens for r in served.get(m.rank, [])),
                              failed=m.failed, compile=m.info.get("compile", "unknown"),
                              kv_cache_tokens=m.info.get("kv_cache_tokens"), max_concurrency=m.info.get("max_concurrency"),
                              weights_gib=m.info.get("weights_gib"), peak_memory_gib=memory.get(m.rank))
                for m in pool.members]
    resumed = sum(len(by_level[lv.label]) for lv in levels if keep[lv.label][0] != attempt)
    found = None
    if cfg.serve.capacity:
        sv = cfg.serve
        probes = [search.judge(by_level[lv.label], lv.value, keep[lv.label][1], sv.slo_percentile, sv.slo_ttft_ms,
                               sv.slo_tpot_ms) for lv in levels]
        cap = search.capacity(probes, sv.capacity_tolerance)
        held = next((p for p in probes if p.rate == cap.rate), None)
        found = {"rate": cap.rate, "lowest_failed": cap.lowest_failed, "converged": cap.converged,
                 "per_gpu": cap.rate / (cfg.dp * cfg.tp) if cap.rate else None,
                 "output_tokens_per_s": held.output_tokens_per_s if held else None,
                 "percentile": sv.slo_percentile, "probes": [dataclasses.asdict(p) for p in probes]}
    from evaluator.memory import predict_for
    summary = RunSummary(
        run_id=run_id, config=cfg, prompts=n, wall_s=wall_s,
        startup_s=max((m.startup_s for m in pool.members), default=0.0), generate_s=load_s,
        output_tokens_per_s=tokens / load_s if load_s else 0.0,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, **accuracy,
        replicas=tuple(replicas), versions=host.versions, device_name=host.device_name, started_at=started_at,
        failures=tuple(pool.failures), rerun_prompts=sum(r.retries for rs in by_level.values() for r in rs),
        resumed_prompts=resumed, timed_prompts=sum(len(rs) for rs in by_level.values()) - resumed,
        timed_completion_tokens=tokens, attempts=attempts_of(run_dir),
        engine_env=engine_env(cfg.engine, engine_spec(cfg), serving=True), levels=tuple(records), traffic=work.shape(),
        capacity=found, memory=predict_for(cfg))
    run_dir.write_summary(summary)
    return summary
