"""The replicas of one run as Ray actors, for every driver (offline batch, serving, benchmark):
start Ray, place one actor per replica with its devices, build them concurrently, mark dead ones,
and end them all cleanly, also when the run fails. A router layout's pool also owns the engine's
router (launchers.router), started once its servers are healthy and closed before them: the
client sends to it (senders), the servers' metrics are read from each server (metric_urls).

A successful run ends its actors the way Ray means actors to end (exit_actor through
__ray_terminate__), so Ray prints no "worker died ... SYSTEM_ERROR" for them: an error line must
mean an error. ray.kill and the process-group SIGKILL are for actors that do not go.

    python -m evaluator --engine vllm --mode dp --gpus 2   # a pool of two Replica actors
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evaluator.errors import RunFailed, UsageError
from evaluator.events import Listener, ReplicaFailed, ReplicaReady, ReplicaStarting, Warning
from evaluator.hosts import cpu_thread_binding, usable_cpus
from evaluator.records import RunConfig
from launchers.engines.base import EngineSpec

CLOSE_TIMEOUT_S = 120
EXIT_TIMEOUT_S = 30
ROUTER_RANK = -1          # the router's place where a replica's rank would be (a request's "replica")


def engine_spec(cfg: RunConfig) -> EngineSpec:
    fraction = None
    if cfg.device == "cpu":
        # every CPU engine takes its fraction of RAM whether it needs it or not: split the budget
        fraction = round(cfg.cpu_memory_fraction / cfg.layout.devices, 4)
    return EngineSpec(model=cfg.model, tp=cfg.tp, device=cfg.device, seed=cfg.sampling.seed,
                      max_model_len=cfg.max_model_len, native_dp=cfg.layout.engine_dp, cpu_memory_fraction=fraction,
                      engine_kwargs=dict(cfg.engine_kwargs), deterministic=cfg.deterministic, tokenizer=cfg.tokenizer)


def actor_env(cfg: RunConfig, rank: int) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if cfg.device == "cpu":
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(rank, cfg.layout.engine_devices, cfg.cpu_cores_per_device)
    return env


def actor_resources(cfg: RunConfig) -> dict[str, Any]:
    """What Ray reserves for one replica: tp GPUs (Ray sets CUDA_VISIBLE_DEVICES) or tp devices'
    worth of CPU cores. A native-DP engine is one replica holding all dp x tp devices."""
    devices = cfg.layout.engine_devices
    if cfg.device == "cuda":
        return {"num_gpus": devices, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": devices * cfg.cpu_cores_per_device}


def replica_count(cfg: RunConfig) -> int:
    """Engines or servers the run starts (a router is not one)."""
    return cfg.layout.replicas


@dataclass
class Member:
    rank: int
    actor: Any
    alive: bool = True
    failed: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def startup_s(self) -> float:
        return self.info.get("startup_s", 0.0)


def reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # Ray wraps the remote traceback; its last line names the real error
    return (text[-1] if text else type(e).__name__)[:300]


def one_line(e: BaseException) -> str:
    """An engine's own error as one line (a server's message keeps its log tail on stderr)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:400]


def refused_settings(e: BaseException) -> bool:
    """The engine said its settings are wrong (an unknown or invalid engine argument; a server
    that exited with argparse's usage code 2), as opposed to dying of something else."""
    from launchers.replica import ServerFailed
    if isinstance(e, ServerFailed):
        return e.exit_code == 2
    return isinstance(e, (TypeError, ValueError))


def cause(e: BaseException) -> BaseException:
    """The exception a Ray task raised remotely (RayTaskError.cause), or e itself."""
    return getattr(e, "cause", None) or e


class ReplicaPool:
    """Owns the Ray actors of one run and guarantees they end."""

    def __init__(self, cfg: RunConfig, actor_cls: type, actor_args: Callable[[int], tuple],
                 listener: Listener, on_placed: Callable[[list[dict]], None] = lambda placed: None):
        self.cfg, self.actor_cls, self.actor_args = cfg, actor_cls, actor_args
        self.listener, self.on_placed = listener, on_placed
        self.members: list[Member] = []
        self.failures: list[str] = []
        self.started_ray = False
        self.head_lost: str | None = None      # why the Ray cluster we joined is gone, once it is
        self._watch_stop = threading.Event()
        self.router = None                     # launchers.router.RouterProcess, router layouts only
        self.router_member: Member | None = None

    def _init_ray(self) -> None:
        ray_auth_default(self.cfg)
        import ray
        if ray.is_initialized():
            return
        logs = self.cfg.engine_logs
        if self.cfg.ray_address:
            ray.init(address=self.cfg.ray_address, log_to_driver=logs)
            self.started_ray = True
            threading.Thread(target=self._watch_head, daemon=True).start()
            return
        # address="local": a Ray of our own even where a `ray start` cluster runs on this machine
        # (plain ray.init() would join it, and refuse the CPU count)
        if self.cfg.device == "cpu":
            ray.init(address="local", num_cpus=len(usable_cpus()), num_gpus=0, include_dashboard=False,
                     log_to_driver=logs)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=logs)
        self.started_ray = True

    def check_placement(self) -> None:
        """A replica's devices must be on one node (tensor parallelism never spans nodes here),
        and the cluster must have them all: refuse at once rather than wait forever for Ray."""
        import ray
        need = actor_resources(self.cfg)
        kind = "GPU" if self.cfg.device == "cuda" else "CPU"
        per = need["num_gpus"] if kind == "GPU" else need["num_cpus"]
        nodes = [n["Resources"].get(kind, 0) for n in ray.nodes() if n.get("Alive")]
        if not nodes or max(nodes) < per:
            raise UsageError(f"a replica needs {per:g} {kind}(s) on one node, and the largest node of the Ray "
                             f"cluster has {max(nodes, default=0):g}; use a smaller --tp")
        if sum(int(n // per) for n in nodes) < self.cfg.layout.replicas:
            raise UsageError(f"the Ray cluster's nodes hold {sum(int(n // per) for n in nodes)} replica(s) of "
                             f"{per:g} {kind}(s), the layout needs {self.cfg.layout.replicas}")

    def start(self) -> None:
        """Start every replica concurrently; one that fails or outlasts --replica-timeout is dead
        from the start. Raises RunFailed when none started, and UsageError at once when the
        engine refused its settings (they are the same for every replica) or the cluster cannot
        place the replicas."""
        ray_auth_default(self.cfg)
        import ray
        self._init_ray()
        self.check_placement()
        cls = ray.remote(self.actor_cls)
        for rank in range(self.cfg.layout.replicas):
            actor = cls.options(max_restarts=0, max_task_retries=0, **actor_resources(self.cfg)).remote(
                *self.actor_args(rank))
            self.members.append(Member(rank, actor))
            self.listener(ReplicaStarting(rank))
        refs = {m.actor.start.remote(): m for m in self.members}
        timeout_s = self.cfg.replica_timeout_s
        deadline = time.monotonic() + timeout_s if timeout_s else None
        pending = list(refs)
        while pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait)
            if not ready:
                for ref in pending:
                    self.fail(refs[ref], f"start-up exceeded --replica-timeout {timeout_s:g} s")
                break
            m = refs[ready[0]]
            try:
                m.info = ray.get(ready[0])
            except Exception as e:  # RayActorError / RayTaskError: this replica could not start
                self.fail(m, f"start-up failed: {reason(e)}")
                if refused_settings(cause(e)):
                    raise UsageError(f"the engine refused its settings: {one_line(cause(e))}") from None
                continue
            self.on_placed([{**x.info, "rank": x.rank} for x in self.members if x.info])
            self.listener(ReplicaReady(m.rank, m.startup_s, m.info["devices"], m.info.get("compile", "unknown")))
        if not self.alive():
            raise RunFailed("no replica started: " + "; ".join(self.failures))
        if self.cfg.layout.routed:
            self.start_router()

    def start_router(self) -> None:
        """The engine's own router in front of the live servers, owned by this process (the
        driver): it dies with the run (launchers.router.RouterProcess)."""
        from launchers.engines.base import router_of
        from launchers.router import RouterFailed, RouterProcess
        live = self.alive()
        log = Path(live[0].info.get("log") or "router.log")
        timeout_s = self.cfg.serve.request_timeout_s if self.cfg.serve else 600.0
        self.router = RouterProcess(router_of(self.cfg.engine), self.cfg.layout.router_policy,
                                    [m.info["url"] for m in live],
                                    log.parent / log.name.replace(f"server-{live[0].rank}-", "router-"),
                                    request_timeout_s=timeout_s)
        try:
            url = self.router.start()
        except RouterFailed as e:
            self.failures.append(f"router: {one_line(e)}")
            raise RunFailed(f"the router did not start: {e}") from None
        self.router_member = Member(ROUTER_RANK, None, info={"url": url, "model_name": live[0].info["model_name"]})
        self._placed_with_router()

    def _placed_with_router(self, routed: dict[str, float] | None = None) -> None:
        """replicas.json: the servers, then the router (rank -1) and, at the end, what it routed where."""
        self.on_placed([{**x.info, "rank": x.rank} for x in self.members if x.info]
                       + [{**self.router.record(routed), "rank": ROUTER_RANK}])

    def senders(self) -> list[Member]:
        """Where the load client sends: the live servers, or the router in front of them."""
        if self.router_member is not None:
            return [self.router_member] if self.router_member.alive else []
        return self.alive()

    def metric_urls(self) -> list[str]:
        """Whose /metrics are scraped: every server that started (behind a router too: its workers),
        in rank order (a dead one's scrape finds nothing)."""
        return [m.info["url"] for m in self.members if m.info.get("url")]

    def peak_memory(self) -> dict[int, float]:
        """rank -> GiB at each live replica's peak (its processes' device memory on GPUs, resident
        memory on CPU hosts), asked before the replicas close."""
        import ray
        refs = {m.actor.peak_memory.remote(): m.rank for m in self.alive()}
        if not refs:
            return {}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=30)
        out = {}
        for ref in ready:
            try:
                value = ray.get(ref)
            except Exception:
                continue
            if value is not None:
                out[refs[ref]] = value
        return out

    def _head_answers(self) -> Exception | None:
        """None where the joined cluster's GCS port takes a connection, else why not."""
        host, _, port = self.cfg.ray_address.removeprefix("ray://").rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
                return None
        except (OSError, ValueError) as e:
            return e

    def _watch_head(self, every_s: float = 1.0, misses: int = 3) -> None:
        """A cluster we joined (--ray-address) can lose its head; Ray's own client would then stall,
        and end the process a minute later without a word. Its GCS port is asked every second; three
        refusals running mark the head lost (check_head raises it)."""
        failed = 0
        while not self._watch_stop.wait(every_s):
            why = self._head_answers()
            failed = failed + 1 if why else 0
            if failed >= misses:
                self._lose_head(why)
                return

    def _lose_head(self, why: Exception) -> None:
        self.head_lost = f"the Ray cluster's head at {self.cfg.ray_address} stopped answering ({why})"

    def check_head(self, confirm: bool = False) -> None:
        """Raise where the joined cluster's head is gone. confirm: ask it now (three tries, half a
        second apart) rather than wait for the watcher; a replica that dies with its head (the
        actor's socket closes within a second, before the watcher's third miss) is the head's
        failure, not the replica's."""
        if confirm and self.cfg.ray_address and not self.head_lost:
            for attempt in range(3):
                if attempt:
                    time.sleep(0.5)
                why = self._head_answers()
                if why is None:
                    break
            else:
                self._lose_head(why)
        if self.head_lost:
            raise RunFailed(f"{self.head_lost}; its replicas are gone with it")

    def alive(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    def fail(self, m: Member, why: str, requeued: int = 0) -> None:
        """Mark a replica (or the router) dead and end its processes."""
        if not m.alive:
            return
        if m is self.router_member:
            m.alive, m.failed = False, why
            self.failures.append(f"router: {why}")
            self.listener(Warning(f"the router failed: {why}"))
            self.router.close()
            return
        self.check_head(confirm=True)     # a replica lost with the cluster's head is told as the head's loss
        m.alive, m.failed = False, why
        self.failures.append(f"replica {m.rank}: {why}" + (f"; {requeued} re-queued" if requeued else ""))
        self.listener(ReplicaFailed(m.rank, why, requeued))
        self._kill(m)

    def _kill(self, m: Member) -> None:
        import ray
        try:
            ray.kill(m.actor, no_restart=True)
        except Exception:
            pass  # the actor may already be gone; its process group is still ended below
        kill_group(m.info)

    def close(self) -> None:
        """Close every engine, let the actors exit, then end anything left in their process groups.
        With the cluster's head gone there is no Ray to ask: the groups on this host are ended."""
        import ray
        self._watch_stop.set()
        if self.router is not None:       # first: nothing may route to servers that are closing
            self._placed_with_router(self.router.routed())
            self.router.close()
        if self.head_lost:
            for m in self.members:
                m.alive = False
                kill_group(m.info)
            return
        if not ray.is_initialized():
            return
        closing = {m.actor.close.remote(): m for m in self.members if m.alive}
        if closing:
            ready, _ = ray.wait(list(closing), num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as e:
                    self.listener(Warning(f"replica {closing[ref].rank} close failed: {reason(e)}"))
        exiting = {m.actor.__ray_terminate__.remote(): m for m in self.members if m.alive}
        done: list = []
        if exiting:
            done, _ = ray.wait(list(exiting), num_returns=len(exiting), timeout=EXIT_TIMEOUT_S)
        for m in self.members:
            if not m.alive:
                continue
            m.alive = False
            if not any(exiting[ref] is m for ref in done):
                self._kill(m)
            kill_group(m.info)     # anything the engine left behind in the replica's group
        if self.started_ray:
            ray.shutdown()


def ray_auth_default(cfg: RunConfig) -> None:
    """A Ray of our own keeps Ray's token authentication (a Ray cluster runs whatever code it is
    sent), asked for explicitly so Ray does not print its notice about that default on every run;
    the user's RAY_AUTH_MODE wins, and a cluster we join (--ray-address) decides for itself. Set
    before Ray is first imported: it reads the mode once, at import."""
    import sys
    if not cfg.ray_address and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def kill_group(info: dict) -> None:
    """SIGKILL the replica's process group (engine processes included), if it lives on this host."""
    pgid = info.get("pgid")
    if not pgid or info.get("host") != socket.gethostname() or pgid == os.getpgid(0):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
