"""The Ray actor that owns one engine (one DP replica of tp devices) for the whole run.

The actor makes itself the leader of a new process group before it builds the engine, so the
engine's own processes (vLLM's EngineCore and TP workers, SGLang's scheduler) share that group:
the driver can then end every one of them with one killpg even when the actor itself was killed
(SIGTERM alone did not stop vLLM's engine core here).

    python -m evaluator --engine vllm --mode dp --gpus 2   # starts two of these
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

from evaluator.records import SamplingConfig
from launchers.engines.base import EngineSpec, build


# Watches the actor from outside its process group; once the actor is gone (closed, killed by
# the driver, or taken down with a SIGKILLed driver by Ray), it SIGKILLs what is left of the group,
# i.e. the engine's processes, which would otherwise live on holding their memory.
REAPER = """
import os, signal, sys, time
pid, pgid = int(sys.argv[1]), int(sys.argv[2])
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[21] == sys.argv[3]
    except OSError:
        return False
while alive():
    time.sleep(0.5)
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
"""


def start_reaper() -> None:
    pid = os.getpid()
    with open(f"/proc/{pid}/stat") as f:
        started = f.read().split()[21]
    subprocess.Popen([sys.executable, "-c", REAPER, str(pid), str(os.getpgid(0)), started],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)


def confine_to_devices(spec: EngineSpec) -> None:
    """On CPU hosts, keep this process and everything it starts on its devices' cores
    (VLLM_CPU_OMP_THREADS_BIND, already in the environment). A CPU "device" is its cores, for the
    whole replica: vLLM pins only its model threads, and the scheduler and front end of a 1-device
    engine would otherwise use the other devices' cores for free, flattering single against dp."""
    binding = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if spec.device == "cpu" and binding and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for group in binding.split("|") for c in group.split(",")})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """Plain class; evaluator.run wraps it with ray.remote and the replica's resources."""

    def __init__(self, rank: int, engine: str, spec: EngineSpec, env: dict[str, str]):
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # already a group leader: the group is still ours alone
        # only a group of our own may be killed wholesale (never Ray's or the driver's)
        self.own_group = os.getpgid(0) == os.getpid()
        if self.own_group and os.path.exists(f"/proc/{os.getpid()}/stat"):
            start_reaper()
        os.environ.update(env)
        confine_to_devices(spec)
        self.rank, self.engine_name, self.spec = rank, engine, spec
        self.engine = None
        self.first_start = self.last_end = None
        self.busy_s = 0.0

    def info(self) -> dict[str, Any]:
        return {"rank": self.rank, "pid": os.getpid(), "pgid": os.getpgid(0) if self.own_group else None, "host": socket.gethostname(),
                "devices": self.devices()}

    def devices(self) -> str:
        if self.spec.device == "cuda":
            return "cuda:" + os.environ.get("CUDA_VISIBLE_DEVICES", "?")
        return "cpu:" + os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "?")

    def start(self) -> dict[str, Any]:
        """Build the engine; returns its construction time (the replica's start-up)."""
        spec = self.spec
        if self.engine_name == "sglang":
            # a free port per engine, so two runs (or two replicas) on one node do not collide on
            # SGLang's fixed default; its NCCL ports it already picks free itself, one per DP rank
            # (a fixed nccl_port made its native DP fail: every rank tried to bind the same one)
            kwargs = {"port": free_port(), **spec.engine_kwargs}
            spec = EngineSpec(**{**spec.__dict__, "engine_kwargs": kwargs})
        t0 = time.perf_counter()
        self.engine = build(self.engine_name, spec)
        return {**self.info(), "startup_s": time.perf_counter() - t0}

    def generate(self, chunk_id: int, prompts: list[str], params: SamplingConfig,
                 seeds: list[int] | None) -> dict[str, Any]:
        t0 = time.time()
        completions = self.engine.generate(prompts, params, seeds)
        t1 = time.time()
        self.first_start = self.first_start or t0
        self.last_end = t1
        self.busy_s += t1 - t0
        return {"chunk_id": chunk_id, "completions": completions, "start": t0, "end": t1}

    def window(self) -> dict[str, Any]:
        return {"first_start": self.first_start, "last_end": self.last_end, "busy_s": self.busy_s}

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
