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
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from evaluator.records import SamplingConfig
from launchers.engine_host import EngineHost, compile_state, confine_to_devices, merge_start_facts, root_cause
from launchers.engines.base import EngineSpec, cache_dirs, files_under, free_port, read_log, redact, server_launch

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


def start_reaper(watch_pid: int | None = None, pgid: int | None = None) -> None:
    """A reaper that SIGKILLs process group pgid once process watch_pid is gone (default: this
    process and its own group, as a replica actor uses it; the run's router: the driver and the
    router's group)."""
    watch_pid = os.getpid() if watch_pid is None else watch_pid
    pgid = os.getpgid(0) if pgid is None else pgid
    subprocess.run([sys.executable, "-c", LAUNCH, REAPER, str(watch_pid), str(pgid)],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   close_fds=True, check=True)


class MemorySampler:
    """The replica's processes (the actor and everything under it: the engine host, vLLM's
    EngineCore and TP workers, a server and its children) sampled every interval in a thread:
    on GPUs the device memory NVML says those processes use, on CPU hosts their resident memory
    (RSS from /proc/PID/statm: shared pages, torch's libraries in each process, count in each).
    peak_gib() is the largest total seen. Cheap on purpose: it runs on the replica's own cores
    (reading /proc/PID/smaps_rollup for PSS every second slowed a one-core engine's generation by
    9-27%, measured with evaluator.bench; statm costs microseconds)."""

    def __init__(self, device: str, interval_s: float | None = None):
        if interval_s is None:
            interval_s = float(os.environ.get("EVALUATOR_MEMORY_SAMPLE_S", "1.0"))
        self.device, self.interval_s, self.peak = device, interval_s, 0
        self.stop = threading.Event()
        if interval_s > 0:          # 0: no sampling (to measure what sampling costs)
            threading.Thread(target=self._loop, daemon=True).start()

    def _tree(self):
        """The actor and its descendants, looked up again every 5th sample (processes come and go
        mostly at start-up)."""
        import psutil
        self._n = getattr(self, "_n", 0) + 1
        if self._n % 5 == 1 or not getattr(self, "_procs", None):
            me = psutil.Process(os.getpid())
            try:
                self._procs = [me, *me.children(recursive=True)]
            except psutil.Error:
                self._procs = [me]
        return self._procs

    def _used(self) -> int:
        procs = self._tree()
        if self.device != "cuda":
            total = 0
            for p in procs:
                try:
                    total += rss_bytes(p.pid)
                except (OSError, ValueError):
                    pass
            return total
        from evaluator.hosts import gpu_process_memory
        return gpu_process_memory({p.pid for p in procs})

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, self._used())
            except Exception:       # a sample that fails (a process gone mid-read) is skipped
                pass

    def peak_gib(self) -> float | None:
        return self.peak / 2**30 if self.peak else None


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int:
    """A process's resident set size from /proc/PID/statm (its second field, in pages)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


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
        self.memory = MemorySampler(spec.device)

    def peak_memory(self) -> float | None:
        """GiB at the replica's peak so far (device memory on GPUs, resident memory on CPU)."""
        return self.memory.peak_gib()

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

    def start(self) -> dict[str, Any]:
        """Build the engine; returns where it runs, its construction time and compile state
        (measured in the engine's process, as the benchmark's bare engine measures them)."""
        self.engine = EngineHost(self.engine_name, self.spec)
        return {**self.info(), **self.engine.start()}

    def generate(self, chunk_id: int, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: list[int] | None) -> dict[str, Any]:
        """prompts: each prompt's token ids (the Engine protocol's input)."""
        t0 = time.time()
        completions = self.engine.generate(prompts, params, seeds)
        return {"chunk_id": chunk_id, "completions": completions, "start": t0, "end": time.time()}

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


def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(log_lines(path)[-lines:])


def start_failure(what: str, path: Path) -> str:
    """'<what>: <the engine's own root cause>; <log> ends: <tail>': the first line names the cause
    (vLLM's 'Engine core initialization failed. See root cause above' points at a log nobody saw)."""
    cause = root_cause(log_lines(path))
    return f"{what}" + (f": {cause}" if cause else "") + f"; {path} ends:\n{log_tail(path)}"


class ServerReplica(_ReplicaBase):
    """One engine server process on a free port. start() returns once GET health_path answers 200;
    start-up = process start until then."""

    def __init__(self, rank: int, engine: str, spec: EngineSpec, env: dict[str, str], log_path: str,
                 driver_host: str, start_timeout_s: float = 1800.0, api_key: str | None = None):
        super().__init__(rank, engine, spec, env)
        self.log_path, self.driver_host, self.start_timeout_s = Path(log_path), driver_host, start_timeout_s
        self.api_key = api_key
        self.proc: subprocess.Popen | None = None

    def _host(self) -> str:
        # loopback when the driver (the load client) is on this node; the node's address otherwise
        if socket.gethostname() == self.driver_host:
            return "127.0.0.1"
        import ray
        return ray.util.get_node_ip_address()

    def start(self) -> dict[str, Any]:
        host = self._host()
        launch = server_launch(self.engine_name, self.spec, free_port(), host, self.api_key)
        url = f"http://{host}:{launch.port}"

        def run():
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env}, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            # the server's log goes to its file through us, so the API key (an engine may print its
            # own flags) never reaches the disk
            threading.Thread(target=copy_redacted, args=(self.proc.stdout, self.log_path, self.api_key),
                             daemon=True).start()
            deadline = time.monotonic() + self.start_timeout_s
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerFailed(start_failure(f"{self.engine_name} server exited with code {rc} before it "
                                                     f"answered {launch.health_path}", self.log_path), rc)
                if _healthy(url + launch.health_path):
                    return {"url": url, "model_name": launch.model_name, "server_pid": self.proc.pid,
                            "argv": list(launch.redacted_argv), "log": str(self.log_path)}
                if time.monotonic() > deadline:
                    raise ServerFailed(start_failure(f"{self.engine_name} server did not answer {launch.health_path} "
                                                     f"within {self.start_timeout_s:g} s", self.log_path))
                time.sleep(0.5)
        started = self._timed_start(run)
        return merge_start_facts(started, read_log(self.engine_name, log_lines(self.log_path), self.spec))

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


def copy_redacted(pipe, path: Path, secret: str | None) -> None:
    """Every line of pipe into path as it comes (line-buffered), the secret replaced by ***."""
    with open(path, "w", buffering=1, errors="replace") as log:
        for raw in iter(pipe.readline, b""):
            log.write(redact(raw.decode("utf-8", "replace"), secret))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
