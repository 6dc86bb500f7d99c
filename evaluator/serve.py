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
from evaluator.serving.client import Endpoints, LevelSupply, run_level_sync
from evaluator.serving.metrics import level_figures, window_results
from evaluator.serving.records import ChatRequest, Level, RequestResult
from evaluator.serving.scrape import Scraper
from evaluator.serving.supply import WARMUP_OUTPUT_TOKENS, Pool, PoolExhausted, check_plan, level_planned
from evaluator.signals import sigterm_raises
from evaluator.store import RunDir
from evaluator.summary import attempts_of
from evaluator.traffic_synthetic import SyntheticTraffic

def levels_of(serve: ServeConfig) -> list[Level]:
    return [Level(serve.level_kind, v) for v in serve.levels]


def _chat(t, seed: int | None, fixed: bool) -> ChatRequest:
    """A traffic request (a file's line, a synthetic draw) as the client sends it."""
    return ChatRequest(t.index, t.messages, seed, max_tokens=t.max_tokens,
                       ignore_eos=True if fixed and t.max_tokens else None,
                       session=None if t.session is None else str(t.session), turn=t.turn, at_s=t.timestamp_s,
                       prompt_tokens=t.prompt_tokens if t.turn == 0 else None)


class Workload:
    """The requests the levels send: the GSM8K prompts (scored) or the run's traffic (timed only),
    fresh at every level (evaluator.serving.supply), a warm-up of its own, and what each request
    asked for, to check the servers' usage against."""

    def __init__(self, cfg: RunConfig, prompts: list[Prompt], traffic=None, tokenizer=None):
        self.cfg, self.prompts, self.traffic = cfg, prompts, traffic
        self._tokenizer = tokenizer
        s, sv = cfg.sampling, cfg.serve
        self.synthetic = traffic if isinstance(traffic, SyntheticTraffic) else None
        seed_of = (lambda i: s.seed + i) if s.temperature > 0 else (lambda i: None)
        if traffic is None:
            # the server renders the messages itself: its usage must count the tokens the offline
            # engines are given (Prompt.token_ids), or the two paths answered different inputs
            requests = [ChatRequest(p.index, p.messages, seed_of(p.index), prompt_tokens=p.prompt_tokens)
                        for p in prompts]
        elif self.synthetic is None:
            requests = [_chat(t, seed_of(t.index), traffic.fixed_output) for t in traffic.requests]
        else:
            requests = None
        self.pool = Pool(requests, sv.reuse_requests) if requests is not None else None
        self.golds = {p.index: p.gold for p in prompts} if traffic is None else {}

    @property
    def scored(self) -> bool:
        return self.traffic is None

    @property
    def requests(self) -> list[ChatRequest]:
        """Every request of a finite traffic, in order (the benches send them as one level)."""
        if self.pool is None:
            return [_chat(t, None, True) for t in self.synthetic.requests]
        return [r for u in self.pool.units for r in u.requests]

    @property
    def available(self) -> int:
        """What `--level-prompts all` sends: the pool's size, or a synthetic shape's n."""
        return self.pool.size if self.pool is not None else self.synthetic.n

    def name(self) -> str:
        return "gsm8k" if self.traffic is None else self.traffic.name

    def tokenizer(self):
        if self._tokenizer is None:
            if self.synthetic is not None:
                self._tokenizer = self.synthetic.tokenizer
            else:
                from evaluator.data import load_tokenizer
                self._tokenizer = load_tokenizer(self.cfg.model_folder)
        return self._tokenizer

    def planned(self, level: Level) -> int:
        return level_planned(self.cfg.serve.level_prompts, level, self.available, self.cfg.serve.capacity)

    def plan_problem(self) -> str | None:
        """Fixed levels that would need more fresh requests than a finite traffic holds."""
        sv = self.cfg.serve
        if sv.capacity or self.pool is None:
            return None
        problem = check_plan(levels_of(sv), sv.level_prompts, self.pool.size, sv.reuse_requests)
        return problem.message(self.name() + (f" (--limit {self.cfg.limit})" if self.cfg.limit else "")) \
            if problem else None

    def supply(self, level: Level, later: int = 0) -> LevelSupply:
        """The level's planned requests, and a way to more while it is shorter than --level-min-s;
        later: requests the levels after this one are promised (a pool keeps them back)."""
        planned, sv = self.planned(level), self.cfg.serve
        if self.pool is not None:
            self.pool.reserved = later
            requests = self.pool.take(planned)
            if not requests:
                raise PoolExhausted(f"{self.name()} has no fresh request left for {level.label} (its {self.pool.size:,} "
                                    f"were all sent; --reuse-requests re-sends them, marked)")
            taken = {r.index for r in requests}
            more = lambda: self.pool.spare(taken)
        else:
            stream = self.synthetic.stream(level.label)
            requests = [_chat(t, None, True) for t in stream.take(planned)]
            more = lambda: [_chat(t, None, True) for t in stream.take(1)]
        fits = self.fits if any(r.session is not None for r in requests) else None
        return LevelSupply(requests, more, min_s=sv.level_min_s, fits=fits)

    def fits(self, messages: list[dict], max_tokens: int) -> int | None:
        """None when a conversation (the answers so far included) fits the context with
        max_tokens new tokens, else its prompt tokens."""
        from evaluator.modelinfo import context_length
        limit = context_length(self.cfg)
        if not limit:
            return None
        tok = self.tokenizer()
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        return n if n + max_tokens > limit else None

    def warmup(self, n: int) -> list[ChatRequest]:
        """n requests of random tokens of the traffic's typical prompt length, made only for the
        warm-up (no level sends them), WARMUP_OUTPUT_TOKENS new tokens each."""
        if n <= 0:
            return []
        if self.synthetic is not None:
            length = self.synthetic.shape()["prompt_tokens_p50"]
        elif self.traffic is not None:
            firsts = [t.prompt_tokens for t in self.traffic.requests if t.turn == 0]
            length = sum(firsts) / len(firsts)
        else:
            length = sum(p.prompt_tokens for p in self.prompts) / len(self.prompts)
        out = max(1, min(WARMUP_OUTPUT_TOKENS, self.cfg.sampling.max_tokens))
        shape = SyntheticTraffic(f"synthetic:n={n},in={max(1, round(length))},out={out},seed={self.cfg.sampling.seed}",
                                 self.tokenizer(), 0, None)
        least = shape.builder.overhead + 1
        if round(length) < least:
            shape = SyntheticTraffic(f"synthetic:n={n},in={least},out={out},seed={self.cfg.sampling.seed}",
                                     self.tokenizer(), 0, None)
        return [_chat(t, None, True) for t in shape.stream("warmup").take(n)]

    def template_share(self, requests: list[ChatRequest]) -> float | None:
        """The share of a level's prompt tokens that all its first turns have in common (the chat
        template's header): the prefix-cache hits the traffic itself explains."""
        firsts = [r for r in requests if r.turn == 0 and r.prompt_tokens][:64]
        if len(firsts) < 2:
            return None
        tok = self.tokenizer()
        texts = [tok.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True) for r in firsts]
        common = texts[0]
        for t in texts[1:]:
            k = 0
            while k < min(len(common), len(t)) and common[k] == t[k]:
                k += 1
            common = common[:k]
        header = len(tok(common, add_special_tokens=False)["input_ids"]) if common else 0
        return header / (sum(r.prompt_tokens for r in firsts) / len(firsts))

    def repeats(self) -> bool:
        """Whether the traffic repeats itself by design (shared prefixes, sessions)."""
        if self.synthetic is not None:
            return self.synthetic.prefix_tokens > 0
        return self.traffic is not None and self.traffic.has_sessions

    def mismatches(self, requests: list[ChatRequest], results: list[RequestResult]) -> dict[str, int]:
        """How many ok requests' usage differs from what the traffic asked for."""
        want = {r.index: (r.prompt_tokens, r.max_tokens if self.traffic is not None and self.traffic.fixed_output
                          else None) for r in requests}
        prompt = output = 0
        for r in results:
            want_in, want_out = want.get(r.index, (None, None))
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
        return {"name": self.traffic.name, **self.traffic.shape(), "fresh_per_level": self.synthetic is not None}


def check_serving_plan(cfg: RunConfig, prompts: list[Prompt], traffic=None) -> None:
    """What a serving run's levels need, checked before anything is written or started: fixed
    levels that would re-send requests without --reuse-requests (UsageError)."""
    if cfg.workload != "serve":
        return
    problem = Workload(cfg, prompts, traffic).plan_problem()
    if problem:
        raise UsageError(problem)


def scored(results: list[RequestResult], golds: dict[int, str]) -> list[Sample]:
    """A failed request counts as a wrong, empty answer: nothing is dropped from the accuracy."""
    rows = [(r.replica, r.index, {"texts": [r.text], "prompt_tokens": r.prompt_tokens,
                                  "completion_tokens": r.completion_tokens}) for r in results if not r.skipped]
    return score_samples(rows, golds)


def level_record(results: list[RequestResult], duration_s: float, cfg: RunConfig, work: Workload,
                 note: dict | None) -> dict:
    """One level's row: the client's statistics over the steady-state window (the whole level's
    beside them), what the servers said, whether the usage matched the traffic, and (GSM8K) the
    accuracy of the level's own answers."""
    sv, note = cfg.serve, note or {}
    stats = level_figures(results, duration_s, cfg.dp * cfg.tp, sv.slo_ttft_ms, sv.slo_tpot_ms)
    extra = {k: note.get(k) for k in ("prompt_tokens_mismatch", "output_tokens_mismatch", "planned",
                                      "template_share", "traffic_repeats", "warmup")}
    rec = {**stats, **{k: v for k, v in extra.items() if v is not None}, "server": note.get("server") or {}}
    rec.setdefault("prompt_tokens_mismatch", 0)
    rec.setdefault("output_tokens_mismatch", 0)
    if not work.scored:
        return {**rec, "strict_accuracy": None, "flexible_accuracy": None, "strict_ci": None, "flexible_ci": None}
    samples = scored(results, work.golds)
    n, strict, flexible = len(samples), sum(s.strict_correct for s in samples), sum(s.flexible_correct for s in samples)
    return {**rec, "strict_accuracy": strict / n if n else 0.0, "flexible_accuracy": flexible / n if n else 0.0,
            "strict_ci": wilson_interval(strict, n), "flexible_ci": wilson_interval(flexible, n)}


def finished_levels(run_dir: RunDir) -> dict[str, tuple[int, float, dict]]:
    """level label -> (attempt that finished it, its duration_s, its notes: server metrics and
    what the level asked for), from earlier attempts."""
    out = {}
    for k, note in sorted(run_dir.read_attempts().items()):
        notes = note.get("level_notes") or {label: {"server": m} for label, m in note.get("level_metrics", {}).items()}
        for label, duration_s in note.get("levels_done", {}).items():
            out[label] = (k, duration_s, notes.get(label, {}))
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
    writes it, and notes it in the attempt: the unit of resume. The servers start, and are warmed
    up, before the first level this attempt runs."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, attempt: int, pool: ReplicaPool, work: Workload,
                 listener: Listener, api_key: str, total: int):
        self.cfg, self.run_dir, self.attempt, self.pool, self.work = cfg, run_dir, attempt, pool, work
        self.listener, self.total, self.headers = listener, total, {"Authorization": f"Bearer {api_key}"}
        self.earlier = finished_levels(run_dir)
        self.earlier_results = requests_of(run_dir, self.earlier)
        if work.pool is not None:      # what finished levels sent is not fresh for the levels still to run
            work.pool.mark_sent({r.index for rs in self.earlier_results.values() for r in rs})
        self.done: dict[str, float] = {}
        self.notes: dict[str, dict] = {}
        self.served: dict[int, list[RequestResult]] = {}
        self.position = 0
        self.live: list = []
        self.endpoints: Endpoints | None = None
        self.model = ""
        self.warmup_note: dict = {}

    def connect(self) -> None:
        self.live = self.pool.senders()         # the servers, or (router layouts) the router in front of them
        self.endpoints = Endpoints([m.info["url"] for m in self.live])
        self.model = self.live[0].info["model_name"]

    def warm_up(self) -> None:
        """Untimed requests on every server before the first measured level (first-request costs:
        CUDA graphs or kernels picked, caches touched), none of which any level sends. They go to
        each engine server directly, not through a router (whose policy may send them all to one)."""
        n, sv = self.cfg.serve.warmup_requests, self.cfg.serve
        if n <= 0:
            return
        requests = self.work.warmup(n)
        servers = self.pool.alive()     # the engines' servers themselves, behind a router too
        t0 = time.perf_counter()
        self.listener(LevelStarted("warm-up", 0, self.total, n * len(servers)))

        async def all_servers():
            import asyncio
            from evaluator.serving.client import run_level
            return await asyncio.gather(*(run_level(Endpoints([url]), requests, Level("concurrency", n),
                                                    self.cfg.sampling, self.model, request_timeout_s=sv.request_timeout_s,
                                                    headers=self.headers, health_interval_s=None,
                                                    on_result=lambda r, rank=m.rank: self.listener(RequestDone(rank, r.ok)))
                                          for url, m in ((m.info["url"], m) for m in servers)))
        import asyncio
        done = asyncio.run(all_servers())
        errors = sum(not r.ok for results, _ in done for r in results)
        self.warmup_note = {"requests": n * len(done), "per_server": n, "seconds": round(time.perf_counter() - t0, 3),
                            "errors": errors}
        self.run_dir.note_attempt(self.attempt, warmup=self.warmup_note)
        self.listener(LevelDone("warm-up", f"{n} request(s) per server in {self.warmup_note['seconds']:.1f} s, "
                                           f"{errors} errors (untimed)"))

    def run(self, level: Level, later: int = 0) -> tuple[list[RequestResult], float]:
        self.position += 1
        if level.label in self.earlier:
            return self.earlier_results.get(level.label, []), self.earlier[level.label][1]
        supply = self.work.supply(level, later)       # PoolExhausted before any server starts
        if self.endpoints is None:
            self.pool.start()
            self.run_dir.note_attempt(self.attempt, startup_s=max(m.startup_s for m in self.pool.members))
            self.connect()
            self.warm_up()
        live, endpoints, sv = self.live, self.endpoints, self.cfg.serve
        self.listener(LevelStarted(level.label, self.position, self.total, len(supply.requests)))
        scraper = Scraper(self.pool.metric_urls(), self.pool_metrics(), headers=self.headers)
        results, duration_s = run_level_sync(
            endpoints, supply, level, self.cfg.sampling, self.model,
            on_result=lambda r: self.listener(RequestDone(live[r.replica].rank if r.replica >= 0 else -1, r.ok)),
            seed=self.cfg.sampling.seed, request_timeout_s=sv.request_timeout_s, max_concurrency=sv.max_concurrency,
            headers=self.headers, monitor=scraper, health_interval_s=sv.health_interval_s or None)
        results = [dataclasses.replace(r, replica=live[r.replica].rank if r.replica >= 0 else -1) for r in results]
        self.pool.check_head()
        for pos, why in endpoints.dead.items():   # a server the client found dead: end it
            self.pool.fail(live[pos], f"server stopped answering: {why}")
        self.refuse_rejected(results)
        self.notes[level.label] = {"server": scraper.summary(), **self.work.mismatches(supply.requests, results),
                                   "planned": len(supply.requests), "template_share": self.work.template_share(supply.requests),
                                   "traffic_repeats": self.work.repeats(), "warmup": self.warmup_note or None}
        self.done[level.label] = duration_s
        # the level's requests, then at once the note that it finished (what a resume keeps): nothing
        # slow between the two, so a kill between them is unlikely (and then costs only this level)
        self.run_dir.append_requests([{**r.to_dict(), "attempt": self.attempt} for r in results])
        self.run_dir.note_attempt(self.attempt, levels_done={**self.done}, level_notes={**self.notes})
        rec = level_record(results, duration_s, self.cfg, self.work, self.notes[level.label])
        self.listener(LevelDone(level.label, f"{rec['request_per_s']:.2f} req/s, {rec['output_tokens_per_s']:.0f} tok/s "
                                             f"(steady state), {rec['requests']} sent, {rec['errors']} errors, "
                                             f"{rec['retries']} retries"))
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


def capacity_search(cfg: RunConfig, run: Callable[..., tuple[list[RequestResult], float]]) -> tuple[list[Level], str | None]:
    """Probe rates until the bracket is narrow enough or the budget is spent, repeating an unsure
    probe with fresh requests; (the levels run, why the search stopped early or None)."""
    sv = cfg.serve
    probes, levels = [], []
    while True:
        rate = search.next_rate(probes, sv.capacity_start, sv.capacity_levels, sv.capacity_tolerance)
        if rate is None:
            return levels, None
        runs = []
        for repeat in range(sv.capacity_repeats + 1):
            level = Level("rate", rate, repeat)
            try:
                results, duration_s = run(level)
            except PoolExhausted as e:
                if runs:
                    probes.append(probe)
                return levels, str(e)
            levels.append(level)
            runs.append(window_results(results, duration_s))
            probe = search.judge(runs, rate, duration_s, sv.slo_percentile, sv.slo_ttft_ms, sv.slo_tpot_ms,
                                 sv.slo_confidence)
            spent = sum(p.runs for p in probes) + len(runs)
            if probe.verdict != "unsure" or spent >= sv.capacity_levels:
                break
        probes.append(probe)


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
    stopped = None
    with sigterm_raises(), run_dir.heartbeat(attempt):
        try:
            if cfg.serve.capacity:
                levels, stopped = capacity_search(cfg, runner.run)
            else:
                levels = levels_of(cfg.serve)
                planned = [work.planned(lv) for lv in levels]
                for k, level in enumerate(levels):
                    runner.run(level, later=sum(planned[k + 1:]))
            memory = pool.peak_memory() if runner.endpoints is not None else {}
        finally:
            pool.close()
    listener(EnginesClosed())
    wall_s = time.perf_counter() - t0
    run_dir.note_attempt(attempt, finished=True, wall_s=wall_s)
    return _summary(cfg, run_id, run_dir, attempt, levels, work, pool, runner.served, memory, started_at, wall_s, host,
                    stopped)


def scored_levels(levels: list[Level], by_level: dict[str, list[RequestResult]]) -> tuple[list[Level], str]:
    """The levels whose answers make the run's accuracy: those where every request sent was
    answered (an overloaded level's timeouts would count as wrong answers), lightest load first;
    all of them, said so, when none was clean."""
    order = sorted(levels, key=lambda lv: (lv.value, lv.repeat))
    clean = [lv for lv in order if all(r.ok for r in by_level[lv.label] if not r.skipped)]
    if clean:
        left = [lv.label for lv in order if lv not in clean]
        return clean, ("" if not left else f"levels with failed requests left out: {', '.join(left)}")
    return order, "every level had failed requests, counted as wrong answers"


def capacity_record(cfg: RunConfig, levels: list[Level], by_level, keep, records: list[dict],
                    stopped: str | None) -> dict:
    """The capacity of a finished search: the highest rate held (at the confidence), the bracket,
    the estimate and its bootstrap interval, every probe (repeats pooled)."""
    sv, gpus = cfg.serve, cfg.dp * cfg.tp
    by_rate: dict[float, list[Level]] = {}
    for lv in levels:
        by_rate.setdefault(lv.value, []).append(lv)
    record_of = {lv.label: rec for lv, rec in zip(levels, records)}
    probes, samples = [], {}
    for rate, runs in by_rate.items():
        windows = [window_results(by_level[lv.label], keep[lv.label][1]) for lv in runs]
        tok_s = sum(record_of[lv.label]["output_tokens_per_s"] for lv in runs) / len(runs)
        settled = [(record_of[lv.label].get("window") or {}).get("settled") for lv in runs]
        probe = search.judge(windows, rate, keep[runs[0].label][1], sv.slo_percentile, sv.slo_ttft_ms,
                             sv.slo_tpot_ms, sv.slo_confidence, output_tokens_per_s=tok_s)
        probes.append(dataclasses.replace(probe, settled=None if None in settled else all(settled)))
        samples[rate] = [r for w in windows for r in w]
    cap = search.capacity(probes, sv.capacity_tolerance, samples, sv.slo_percentile, sv.slo_ttft_ms, sv.slo_tpot_ms,
                          sv.slo_confidence, seed=cfg.sampling.seed)
    held = next((p for p in probes if p.rate == cap.rate), None)
    low, high = cap.ci if cap.ci else (None, None)
    return {"rate": cap.rate, "lowest_failed": cap.lowest_failed, "converged": cap.converged,
            "per_gpu": cap.rate / gpus if cap.rate else None,
            # the held rate's output (rate x tokens per request): the cost per million tokens reads it
            "output_tokens_per_s": held.sustained_tokens_per_s if held else None,
            "output_tokens_per_s_streamed": held.output_tokens_per_s if held else None,
            "percentile": sv.slo_percentile, "confidence": sv.slo_confidence,
            "estimate": cap.estimate, "ci_low": low, "ci_high": high, "above_range": cap.above_range,
            "repeats": cap.repeats, "runs": len(levels), "stopped": stopped,
            "probes": [dataclasses.asdict(p) for p in sorted(probes, key=lambda p: p.rate)]}


def _summary(cfg, run_id, run_dir, attempt, levels, work, pool, served, memory, started_at, wall_s, host,
             stopped: str | None = None) -> RunSummary:
    """Per level: throughput, latency percentiles, goodput, server metrics and (GSM8K) accuracy.
    The run's accuracy and samples.jsonl are the answers of the levels that were not overloaded
    (scored_levels: each prompt once, from the lightest load that sent it), so --compare pairs them
    with the offline run of the same prompts."""
    from launchers.engines.base import engine_env
    keep = finished_levels(run_dir)
    by_level = requests_of(run_dir, keep)
    records = [level_record(by_level[lv.label], keep[lv.label][1], cfg, work, keep[lv.label][2]) for lv in levels]
    load_s = sum(keep[lv.label][1] for lv in levels)
    tokens = sum(r.completion_tokens for rs in by_level.values() for r in rs if r.ok)
    scored_from = None
    if work.scored:
        chosen, why = scored_levels(levels, by_level)
        answers: dict[int, RequestResult] = {}
        for lv in chosen:                      # each prompt's answer at the lightest load that sent it
            for r in by_level[lv.label]:
                answers.setdefault(r.index, r)
        first = scored(sorted(answers.values(), key=lambda r: r.index), work.golds)
        scored_from = {"levels": [lv.label for lv in chosen], "prompts": len(first), "note": why}
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
                              weights_gib=m.info.get("weights_gib"), peak_memory_gib=memory.get(m.rank),
                              settings=m.info.get("settings"))
                for m in pool.members]
    resumed = sum(len(by_level[lv.label]) for lv in levels if keep[lv.label][0] != attempt)
    found = capacity_record(cfg, levels, by_level, keep, records, stopped) if cfg.serve.capacity and levels else None
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
        capacity=found, memory=predict_for(cfg), scored_from=scored_from)
    run_dir.write_summary(summary)
    return summary
