"""The Ray actors that own one replica (dp rank of tp devices) for the whole run: Replica owns an
offline engine (launchers.engines build), ServerReplica the engine's OpenAI-compatible server
process (launchers.engines server_launch).

Each actor makes itself the leader of a new process group before it starts anything, so the
engine's processes (vLLM's EngineCore and TP workers, SGLang's scheduler, a server and its
children) share that group, and starts a reaper outside the group that SIGKILLs the group once
the actor is gone, however it went (closed, killed, or taken down with a SIGKILLed driver).
The reaper is not the actor's child (Ray kills a dying worker's children, not their children).

    python -m evaluator --engine vllm --mode dp --gpus 2                     # two Replica actors
    python -m evaluator --engine vllm --mode dp --gpus 2 --workload serve    # two ServerReplica actors
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from evaluator.records import SamplingConfig
from launchers.engine_host import EngineHost, compile_state, confine_to_devices
from launchers.engines.base import EngineSpec, cache_dirs, files_under, free_port, server_launch

# psutil.Process.wait() on a process that is not our child polls until it is gone; pid reuse in
# that half-second is the only way this could kill a stranger's group, and the group is ours.
REAPER = """
import os, signal, sys, psutil
try:
    psutil.Process(int(sys.argv[1])).wait()
except psutil.Error:
    pass
try:
    os.killpg(int(sys.argv[2]), signal.SIGKILL)
except OSError:
    pass
"""


# Started through a launcher that exits at once, so the reaper is not the actor's child: a Ray
# worker that exits kills its direct children (the reaper was one, and the engine outlived it).
LAUNCH = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
"""


def start_reaper() -> None:
    subprocess.run([sys.executable, "-c", LAUNCH, REAPER, str(os.getpid()), str(os.getpgid(0))],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   close_fds=True, check=True)


class _ReplicaBase:
    """Process group, reaper, environment and core confinement shared by both actors."""

    def __init__(self, rank: int, engine: str, spec: EngineSpec, env: dict[str, str]):
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # already a group leader: the group is still ours alone
        # only a group of our own may be killed wholesale (never Ray's or the driver's)
        self.own_group = os.getpgid(0) == os.getpid()
        if self.own_group:
            start_reaper()
        for key in [k for k in os.environ if k.startswith("VLLM_DP_")]:
            del os.environ[key]     # the replica owns data parallelism; stale ones make vLLM wait for peers
        os.environ.update(env)
        confine_to_devices(spec)
        self.rank, self.engine_name, self.spec = rank, engine, spec

    def info(self) -> dict[str, Any]:
        import ray
        return {"rank": self.rank, "pid": os.getpid(), "pgid": os.getpgid(0) if self.own_group else None,
                "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(),
                "devices": self.devices()}

    def devices(self) -> str:
        if self.spec.device == "cuda":
            return "cuda:" + os.environ.get("CUDA_VISIBLE_DEVICES", "?")
        return "cpu:" + os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "?")

    def _timed_start(self, start) -> dict[str, Any]:
        """Run start() and time it; say whether it compiled (cold) or reused a cache (warm)."""
        dirs = cache_dirs(self.engine_name, self.spec)
        before = files_under(dirs)
        t0 = time.perf_counter()
        extra = start()
        startup_s = time.perf_counter() - t0
        return {**self.info(), **extra, "startup_s": startup_s, "compile": compile_state(before, files_under(dirs))}


class Replica(_ReplicaBase):
    """One offline engine, kept in a plain child process (launchers.engine_host says why). Plain
    class; the driver wraps it with ray.remote and its resources."""

    def __init__(self, rank: int, engine: str, spec: EngineSpec, env: dict[str, str]):
        super().__init__(rank, engine, spec, env)
        self.engine: EngineHost | None = None
        self.first_start = self.last_end = None
        self.busy_s = 0.0

    def start(self) -> dict[str, Any]:
        """Build the engine; returns where it runs, its construction time and compile state
        (measured in the engine's process, as the benchmark's bare engine measures them)."""
        self.engine = EngineHost(self.engine_name, self.spec)
        return {**self.info(), **self.engine.start()}

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


class ServerFailed(RuntimeError):
    """The server exited or never answered its health check; the message ends with its log tail.
    exit_code 2 is argparse's: the server refused its flags."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):        # keep exit_code when Ray pickles it back to the driver
        return (ServerFailed, (str(self), self.exit_code))


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerReplica(_ReplicaBase):
    """One engine server process on a free port. start() returns once GET health_path answers 200;
    start-up = process start until then."""

    def __init__(self, rank: int, engine: str, spec: EngineSpec, env: dict[str, str], log_path: str,
                 driver_host: str, start_timeout_s: float = 1800.0):
        super().__init__(rank, engine, spec, env)
        self.log_path, self.driver_host, self.start_timeout_s = Path(log_path), driver_host, start_timeout_s
        self.proc: subprocess.Popen | None = None

    def _host(self) -> str:
        # loopback when the driver (the load client) is on this node; the node's address otherwise
        if socket.gethostname() == self.driver_host:
            return "127.0.0.1"
        import ray
        return ray.util.get_node_ip_address()

    def start(self) -> dict[str, Any]:
        host = self._host()
        launch = server_launch(self.engine_name, self.spec, free_port(), host)
        url = f"http://{host}:{launch.port}"

        def run():
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env}, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + self.start_timeout_s
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerFailed(f"{self.engine_name} server exited with code {rc} before it answered "
                                       f"{launch.health_path}; {self.log_path} ends:\n{log_tail(self.log_path)}", rc)
                if _healthy(url + launch.health_path):
                    return {"url": url, "model_name": launch.model_name, "server_pid": self.proc.pid,
                            "argv": list(launch.argv)}
                if time.monotonic() > deadline:
                    raise ServerFailed(f"{self.engine_name} server did not answer {launch.health_path} within "
                                       f"{self.start_timeout_s:g} s; {self.log_path} ends:\n{log_tail(self.log_path)}")
                time.sleep(0.5)
        return self._timed_start(run)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """SIGTERM lets the server shut its engine down; what is left after 30 s is SIGKILLed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        import psutil
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
