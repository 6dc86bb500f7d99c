"""The offline driver: one batch of prompts through the replicas' engines. Hand out chunks, survive
dying replicas, flush every finished chunk to disk, then merge, score, store and summarise.

Start-up and generation are timed apart: every replica builds its engine concurrently, the run
waits until all are ready (or dead), and only then hands out prompts. A resumed run (--resume)
generates only what is missing; its speed figures cover what this attempt generated, and each
attempt is recorded (attempts.jsonl) with what it generated and in how long.

    python -m evaluator --engine vllm --mode dp --gpus 2 --model models/qwen2.5-coder-0.5b-instruct
"""
from __future__ import annotations

import datetime as dt
import time
from collections import deque
from dataclasses import dataclass, field

from evaluator.collector import merge
from evaluator.errors import RunFailed, UsageError
from evaluator.events import ChunkDone, EnginesClosed, GenerationStarted, Listener, ignore
from evaluator.hosts import HostFacts
from evaluator.pool import ReplicaPool, actor_env, cause, engine_spec, reason, replica_count
from evaluator.records import Completion, Prompt, ReplicaTiming, RunConfig, RunSummary, Sample
from evaluator.scoring import score_samples
from evaluator.sharding import Chunk, make_chunks
from evaluator.store import RunDir
from evaluator.summary import attempts_of, summarize
from launchers.engines.base import RequestRejected


@dataclass
class Work:
    """The driver's side of one replica: what it is meant to do and what it did."""
    planned: deque = field(default_factory=deque)   # chunks meant for this replica
    inflight: dict = field(default_factory=dict)    # ObjectRef -> (chunk, sent_at)
    done_prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0
    window: dict = field(default_factory=dict)


class OfflineDriver:
    def __init__(self, cfg: RunConfig, run_dir: RunDir, attempt: int, listener: Listener, actor_cls: type,
                 golds: dict[int, str] | None = None):
        self.cfg, self.run_dir, self.attempt, self.listener = cfg, run_dir, attempt, listener
        self.golds = golds or {}
        spec = engine_spec(cfg)
        self.pool = ReplicaPool(cfg, actor_cls, lambda rank: (rank, cfg.engine, spec, actor_env(cfg, rank)),
                                listener, on_placed=run_dir.write_replicas)
        self.work: dict[int, Work] = {}
        self.shared: deque[Chunk] = deque()
        self.rerun_prompts = 0
        self.results: dict[int, dict[int, Sample]] = {}   # rank -> index -> its scored answer

    def start(self) -> None:
        self.pool.start()
        self.work = {m.rank: Work() for m in self.pool.members}

    def _send(self, rank: int, chunk: Chunk) -> None:
        s = self.cfg.sampling
        seeds = [s.seed + p.index for p in chunk.prompts] if s.temperature > 0 else None
        # token ids, not text: every engine sees the tokens the servers and the reference engine see
        ref = self.pool.members[rank].actor.generate.remote(chunk.chunk_id, [p.token_ids for p in chunk.prompts],
                                                             s, seeds)
        self.work[rank].inflight[ref] = (chunk, time.monotonic())

    def _next_chunk(self, w: Work) -> Chunk | None:
        if w.planned:
            return w.planned.popleft()
        return self.shared.popleft() if self.shared else None

    def _fail(self, rank: int, why: str) -> None:
        """The replica is dead: its unfinished chunks go to the shared queue (or the run stops)."""
        m, w = self.pool.members[rank], self.work[rank]
        orphans = [c for c, _ in w.inflight.values()] + list(w.planned)
        w.inflight.clear()
        w.planned.clear()
        lost = sum(len(c.prompts) for c in orphans)
        self.pool.fail(m, why, requeued=lost)
        if self.cfg.on_replica_failure == "fail":
            raise RunFailed(f"replica {rank} failed ({why}); stopping as --on-replica-failure fail asks. "
                            f"Finished chunks are kept: resume with --resume {self.run_dir.path}")
        self.rerun_prompts += lost
        self.shared.extendleft(reversed(orphans))

    def _record(self, rank: int, chunk: Chunk, out: dict) -> None:
        completions: list[Completion] = out["completions"]
        if len(completions) != len(chunk.prompts):
            raise RunFailed(f"replica {rank} returned {len(completions)} answers for {len(chunk.prompts)} prompts")
        records = [{"index": p.index, "rank": rank, "chunk_id": chunk.chunk_id, "attempt": self.attempt,
                    "texts": list(c.texts), "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                    "start": out["start"], "end": out["end"]}
                   for p, c in zip(chunk.prompts, completions)]
        self.run_dir.append_chunk(records)
        # scored as it lands, while the other replicas still generate: after the last chunk only
        # the merge and the final write are left (they were ~1 s of 1319 answers after the engine)
        for sample in score_samples([(rank, rec["index"], rec) for rec in records], self.golds):
            self.results.setdefault(rank, {})[sample.index] = sample
        w = self.work[rank]
        # the replica's window from its own chunk clocks, kept by the driver as each chunk lands: a
        # replica that dies later still has the window of the chunks it finished (asking the actor at
        # the end would leave it empty and read as a 100% straggler gap)
        w.window = {"first_start": min(w.window.get("first_start", out["start"]), out["start"]),
                    "last_end": max(w.window.get("last_end", out["end"]), out["end"]),
                    "busy_s": w.window.get("busy_s", 0.0) + out["end"] - out["start"]}
        w.done_prompts += len(records)
        w.chunks += 1
        w.prompt_tokens += sum(c.prompt_tokens for c in completions)
        tokens = sum(c.completion_tokens for c in completions)
        w.completion_tokens += tokens
        self.listener(ChunkDone(rank, len(records), tokens))

    def generate(self, chunks: list[Chunk]) -> None:
        import ray
        for c in chunks:
            owner = self.pool.members[c.owner] if c.owner is not None and c.owner < len(self.pool.members) else None
            if owner is not None and owner.alive:
                self.work[owner.rank].planned.append(c)
            else:
                self.shared.append(c)
        self.listener(GenerationStarted({m.rank: sum(len(c.prompts) for c in self.work[m.rank].planned)
                                         for m in self.pool.alive()}))
        while True:
            for m in self.pool.alive():
                w = self.work[m.rank]
                if not w.inflight:
                    chunk = self._next_chunk(w)
                    if chunk is not None:
                        self._send(m.rank, chunk)
            inflight = {ref: rank for rank, w in self.work.items() for ref in w.inflight}
            if not inflight:
                if self.shared:
                    raise RunFailed("every replica died; unfinished prompts remain: " + "; ".join(self.pool.failures))
                return
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            self.pool.check_head()
            for ref in ready:
                rank = inflight[ref]
                chunk, _ = self.work[rank].inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as e:
                    if isinstance(cause(e), RequestRejected):
                        # the engine's own validation: the same prompts would be refused anywhere
                        raise UsageError(f"{cause(e)} (prompts {chunk.indices[0]}..{chunk.indices[-1]})") from None
                    self.work[rank].inflight[ref] = (chunk, 0.0)   # so _fail re-queues it with the rest
                    self._fail(rank, f"died during generation: {reason(e)}")
                    continue
                self._record(rank, chunk, out)
            timeout_s = self.cfg.replica_timeout_s
            if timeout_s:
                now = time.monotonic()
                for m in self.pool.alive():
                    if any(now - sent > timeout_s for _, sent in self.work[m.rank].inflight.values()):
                        self._fail(m.rank, f"a chunk exceeded --replica-timeout {timeout_s:g} s")

    def timings(self, memory: dict[int, float] | None = None) -> list[ReplicaTiming]:
        windows = [w.window for w in self.work.values()]
        last_end = max((x.get("last_end") or 0 for x in windows), default=0)
        out = []
        for m in self.pool.members:
            w = self.work.get(m.rank, Work())
            win = w.window
            out.append(ReplicaTiming(
                rank=m.rank, devices=m.info.get("devices", "?"), startup_s=m.startup_s,
                generate_s=(win["last_end"] - win["first_start"]) if win.get("first_start") else 0.0,
                prompts=w.done_prompts, prompt_tokens=w.prompt_tokens, completion_tokens=w.completion_tokens,
                idle_after_finish_s=(last_end - win["last_end"]) if win.get("last_end") else 0.0,
                chunks=w.chunks, failed=m.failed, compile=m.info.get("compile", "unknown"),
                kv_cache_tokens=m.info.get("kv_cache_tokens"), max_concurrency=m.info.get("max_concurrency"),
                weights_gib=m.info.get("weights_gib"), peak_memory_gib=(memory or {}).get(m.rank),
                settings=m.info.get("settings")))
        return out


def execute(cfg: RunConfig, run_id: str, run_dir: RunDir, prompts: list[Prompt], host: HostFacts,
            listener: Listener = ignore, actor_cls: type | None = None) -> RunSummary:
    """The whole run. Prompts already in partial.jsonl (an interrupted earlier attempt) are not
    generated again. Raises RunFailed / Interrupted / UsageError with partial.jsonl intact."""
    from evaluator.signals import sigterm_raises
    from launchers.replica import Replica
    t0 = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    done = run_dir.read_partial()
    wanted = {p.index for p in prompts}
    done = {i: rec for i, rec in done.items() if i in wanted}
    attempt = run_dir.begin_attempt(started_at)
    # Chunks are cut from the whole prompt list, so a resumed or re-run chunk batches exactly the
    # prompts it would have batched in an uninterrupted run.
    chunks = []
    for c in make_chunks(prompts, replica_count(cfg), cfg.sharding, cfg.chunk_size):
        missing = tuple(p for p in c.prompts if p.index not in done)
        if missing:
            chunks.append(Chunk(c.chunk_id, c.owner, missing))
    golds = {p.index: p.gold for p in prompts}
    driver = OfflineDriver(cfg, run_dir, attempt, listener, actor_cls or Replica, golds)
    memory: dict[int, float] = {}
    with sigterm_raises(), run_dir.heartbeat(attempt):
        try:
            if chunks:
                driver.start()
                run_dir.note_attempt(attempt, startup_s=max((m.startup_s for m in driver.pool.members), default=0.0))
                driver.generate(chunks)
                memory = driver.pool.peak_memory()
        finally:
            driver.pool.close()
    listener(EnginesClosed())
    by_rank: dict[int, list] = {}
    for rank, scored in driver.results.items():
        by_rank.setdefault(rank, []).extend(scored.items())
    for sample in score_samples([(rec["rank"], i, rec) for i, rec in done.items()], golds):
        by_rank.setdefault(sample.rank, []).append((sample.index, sample))
    samples = [sample for _, _, sample in merge(by_rank, wanted)]
    wall_s = time.perf_counter() - t0
    run_dir.note_attempt(attempt, finished=True, wall_s=wall_s)
    summary = summarize(run_id, cfg, samples, driver.timings(memory), wall_s, started_at, driver.pool.failures,
                        driver.rerun_prompts, len(done), host, attempts_of(run_dir))
    run_dir.write_samples(samples)
    run_dir.write_summary(summary)
    return summary
