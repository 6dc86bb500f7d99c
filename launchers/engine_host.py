"""One offline engine in a plain child process, driven over a pipe: build it, generate, close.

Why a child: vLLM forces the `spawn` start method for its EngineCore inside a Ray actor (forking
a Ray worker is unsafe), so an engine built in the actor itself imports torch and vLLM a second
time in the EngineCore (~15 s on one CPU core), which a plain process skips (it forks). The Ray
actor (launchers.replica.Replica) therefore keeps the engine here, and the benchmark's bare worker
is this same host without Ray: both build through launchers.engines.base.build and time only
engine.generate, so the benchmark measures what Ray and the driver add, nothing else.

    python -c "from launchers.engine_host import EngineHost"   # used by Replica and evaluator.bench
"""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

from launchers.engines.base import EngineSpec, StartFacts, build, cache_dirs, files_under, read_log

ROOT = Path(__file__).resolve().parents[1]


def confine_to_devices(spec: EngineSpec) -> None:
    """On CPU hosts, keep this process and everything it starts on its devices' cores
    (VLLM_CPU_OMP_THREADS_BIND, already in the environment). A CPU "device" is its cores, for the
    whole replica: vLLM pins only its model threads, and the scheduler and front end of a 1-device
    engine would otherwise use the other devices' cores for free, flattering single against dp."""
    binding = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if spec.device == "cpu" and binding and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for group in binding.split("|") for c in group.split(",")})


class EngineHostDied(RuntimeError):
    """The child process ended without answering (killed, or crashed hard)."""


# "(EngineCore pid=7) ERROR 12-01 00:05:08 [core.py:1510] ValueError: To serve ..." -> the error itself
_LOG_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?(?:[A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\]\s*)?")
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): \S")


def root_cause(log_lines: list[str]) -> str | None:
    """The last "SomethingError: message" line an engine's processes wrote to stderr (vLLM's
    "Engine core initialization failed. See root cause above" points there), without log prefixes."""
    for line in reversed(log_lines):
        text = _LOG_PREFIX.sub("", line.strip())
        if _ERROR_LINE.match(text) and "See root cause above" not in text:
            return text
    return None


def compile_state(before: set[str], after: set[str]) -> str:
    """cold: the start wrote compiled artifacts under a new name (a configuration it had not
    compiled before); warm: it found the cache and added nothing (engines may touch existing files
    on a warm load); none: the engine keeps no compile cache for this start (eager mode)."""
    if after - before:
        return "cold"
    return "warm" if before else "none"


def engine_facts(engine: Any) -> dict[str, Any]:
    """What an engine reports about its start through its own API (an optional start_facts(): SGLang's
    get_server_info), for what its log may not say; the compile state stays the log's or the folders'."""
    report = getattr(engine, "start_facts", None)
    return {k: v for k, v in report().to_dict().items() if k != "compile"} if report else {}


def merge_start_facts(measured: dict[str, Any], facts: StartFacts) -> dict[str, Any]:
    """A start's record: what we measured, with the engine's own word on its compile state where it
    gave one, and its KV-cache and weights figures."""
    out = {**measured, **{k: v for k, v in facts.to_dict().items() if k != "compile"}}
    if facts.compile is not None:
        out["compile"] = facts.compile
    return out


class EngineHost:
    """The parent's handle. Every call returns the child's answer or raises the child's exception
    (RequestRejected included), or EngineHostDied."""

    def __init__(self, engine: str, spec: EngineSpec, env: dict[str, str | None] | None = None):
        """env: added to this process's environment for the child; None as a value unsets it."""
        full = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
        # this checkout first on the child's path, wherever the parent (a Ray worker) was started
        full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full.get("PYTHONPATH")]))
        r_parent, w_child = os.pipe()
        r_child, w_parent = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "launchers.engine_host", str(r_child), str(w_child)],
                                     pass_fds=(r_child, w_child), env=full, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # the engine's output (its processes' too) still goes where ours goes, stdout to stdout (vLLM
        # logs there) and stderr to stderr; its tail is kept so the start can be read from the
        # engine's own words (compile state, KV cache, a failed start's root cause) even when nobody
        # streams the engine's log
        self.log_tail: deque[str] = deque(maxlen=2000)
        for pipe, dest in ((self.proc.stdout, sys.stdout), (self.proc.stderr, sys.stderr)):
            threading.Thread(target=self._pump, args=(pipe, dest), daemon=True).start()
        os.close(r_child)
        os.close(w_child)
        self.conn_in, self.conn_out = Connection(r_parent, writable=False), Connection(w_parent, readable=False)
        self.engine, self.spec = engine, spec

    def _call(self, *message: Any) -> Any:
        try:
            self.conn_out.send(message)
            kind, value = self.conn_in.recv()
        except (EOFError, OSError, BrokenPipeError):
            rc = self.proc.wait()
            raise EngineHostDied(f"the engine process ended with code {rc}") from None
        if kind == "error":
            raise value
        return value

    def _pump(self, pipe, dest) -> None:
        out = getattr(dest, "buffer", None)
        for raw in iter(pipe.readline, b""):
            self.log_tail.append(raw.decode("utf-8", "replace"))
            try:
                if out is not None:
                    out.write(raw)
                    out.flush()
                else:
                    dest.write(raw.decode("utf-8", "replace"))
            except (OSError, ValueError):
                pass

    def start(self) -> dict[str, Any]:
        """Build the engine: {"startup_s", "compile", ...} as the child measured them, with what the
        engine's own start-up log says (launchers.engines.base.read_log: its compile state, which
        wins over the cache folders' (a sibling replica's new files are not this engine's compile),
        KV-cache tokens, weights). A failure names the root cause from the engine's log when the
        exception itself does not."""
        try:
            answer = self._call("build", self.engine, self.spec)
            time.sleep(0.2)                 # the engine's last start-up lines may still be in the pipe
            return merge_start_facts(answer, read_log(self.engine, list(self.log_tail), self.spec))
        except Exception as e:
            time.sleep(0.5)                 # the engine's last lines may still be in the pipe
            cause, said = root_cause(list(self.log_tail)), str(e).strip()
            if cause is None or cause in said:
                raise
            message = f"{cause} (from the engine's log; {said.splitlines()[0] if said else type(e).__name__})"
            try:
                better = type(e)(message)
            except Exception:
                better = RuntimeError(message)
            raise better from e

    def generate(self, prompts: Sequence[Sequence[int]], params, seeds=None):
        """prompts: each prompt's token ids (launchers.engines.base.Engine.generate)."""
        return self._call("generate", prompts, params, seeds)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call("close")
            except EngineHostDied:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.conn_in.close()
        self.conn_out.close()


def serve(conn_in: Connection, conn_out: Connection) -> None:
    """Child side: answer build / generate / close until told to close or the parent goes."""
    engine = None
    while True:
        try:
            message = conn_in.recv()
        except EOFError:            # the parent is gone: end the engine with it
            break
        op = message[0]
        try:
            if op == "build":
                _, name, spec = message
                confine_to_devices(spec)
                dirs = cache_dirs(name, spec)
                before, t0 = files_under(dirs), time.perf_counter()
                engine = build(name, spec)
                answer = {"startup_s": time.perf_counter() - t0, "compile": compile_state(before, files_under(dirs)),
                          **engine_facts(engine)}
            elif op == "generate":
                answer = engine.generate(*message[1:])
            elif op == "close":
                if engine is not None:
                    engine.close()
                engine = None
                conn_out.send(("ok", None))
                break
            else:
                raise ValueError(f"unknown operation {op!r}")
            conn_out.send(("ok", answer))
        except Exception as e:      # sent to the parent, which raises it: nothing is swallowed
            try:
                pickle.dumps(e)
            except Exception:
                e = RuntimeError(f"{type(e).__name__}: {e}")
            conn_out.send(("error", e))
    if engine is not None:
        engine.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
