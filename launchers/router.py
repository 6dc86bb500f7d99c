"""The engines' own routers from PyPI, as a layout's data parallelism: N servers of one engine
behind the router its makers ship (`vllm-router` in front of vLLM servers, `sglang-router` in
front of SGLang servers), routing every request by a policy in the router's own name. The run's
driver starts the router once its servers are healthy (evaluator.pool), the load client sends to
the router only, and the servers' own /metrics are still scraped from each server.

    python -m evaluator --engine vllm --mode dp --gpus 2 --workload serve --dp-backend router \
        --router-policy round_robin --concurrency 1,4
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launchers.router_kinds import RouterKind


def router_argv(kind: RouterKind, worker_urls: list[str], policy: str, host: str, port: int, metrics_port: int,
                request_timeout_s: float) -> list[str]:
    """`python -m <router>.launch_router` in front of the workers, with the flags both routers
    share: where it listens, its workers, its policy, its own Prometheus port (default 29000 in both:
    two runs on one host would collide), and a request timeout no shorter than the client's."""
    return [sys.executable, "-m", kind.module, "--host", host, "--port", str(port), "--worker-urls", *worker_urls,
            "--policy", policy, "--prometheus-host", host, "--prometheus-port", str(metrics_port),
            "--request-timeout-secs", str(math.ceil(request_timeout_s) + 60)]


class RouterFailed(RuntimeError):
    """The router exited or never answered its health check; the message ends with its log tail."""


class RouterProcess:
    """One router process owned by the run's driver, started once the servers are healthy. It
    leads a process group of its own, and a reaper outside the driver's process tree SIGKILLs that
    group once the driver is gone, however it went (closed, Ctrl-C, or SIGKILLed): the router
    never outlives its run. Requests go to url; the workers' own /metrics stay where they were."""

    def __init__(self, kind: RouterKind, policy: str, worker_urls: list[str], log_path: str | Path,
                 host: str = "127.0.0.1", request_timeout_s: float = 600.0):
        from launchers.engines.base import free_port
        self.kind, self.policy, self.worker_urls = kind, policy, list(worker_urls)
        self.log_path, self.host = Path(log_path), host
        self.port, self.metrics_port = free_port(), free_port()
        self.argv = router_argv(kind, self.worker_urls, policy, host, self.port, self.metrics_port, request_timeout_s)
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the router and wait until its /health answers 200 (it checks its workers first);
        RouterFailed with its log tail when it exits or does not answer in time."""
        from launchers.replica import _healthy, log_tail, start_reaper
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "w") as log:
            # its own group: a terminal's Ctrl-C reaches the driver only, which then closes it in order
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         process_group=0)
        start_reaper(watch_pid=os.getpid(), pgid=self.proc.pid)
        deadline = time.monotonic() + timeout_s
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise RouterFailed(f"{self.kind.name} exited with code {rc} before it answered /health"
                                   f"{self._last_line()}; {self.log_path} ends:\n{log_tail(self.log_path)}")
            if _healthy(self.url + "/health"):
                self.startup_s = time.perf_counter() - t0
                return self.url
            if time.monotonic() > deadline:
                self.close()
                raise RouterFailed(f"{self.kind.name} did not answer /health within {timeout_s:g} s; "
                                   f"{self.log_path} ends:\n{log_tail(self.log_path)}")
            time.sleep(0.2)

    def _last_line(self) -> str:
        """': <the log's last line>', which is the router's own reason where it stopped itself."""
        from launchers.replica import log_lines
        lines = [line.strip() for line in log_lines(self.log_path) if line.strip()]
        return f": {lines[-1][:300]}" if lines else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """SIGTERM to its group, SIGKILL after 10 s; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # whatever the router left in its group
        except ProcessLookupError:
            pass

    def routed(self) -> dict[str, float] | None:
        """Requests the router sent to each worker so far, by worker URL, from its own Prometheus
        counter (None where it does not answer)."""
        import urllib.error
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError):
            return None
        out: dict[str, float] = {url: 0.0 for url in self.worker_urls}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == self.kind.routed_metric and "worker" in sample.labels:
                    worker = sample.labels["worker"].rstrip("/")
                    out[worker] = out.get(worker, 0.0) + sample.value
        return out

    def record(self, routed: dict[str, float] | None = None) -> dict:
        """What the run keeps about its router (replicas.json): which, where, how it routed and,
        once the run is over, how many requests it sent to each worker."""
        return {"router": self.kind.name, "policy": self.policy, "url": self.url, "metrics_port": self.metrics_port,
                "workers": self.worker_urls, "startup_s": self.startup_s,
                "pid": self.proc.pid if self.proc else None, "routed": routed}
