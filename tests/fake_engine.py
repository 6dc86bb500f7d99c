"""A hand-written fake engine for fast orchestration tests (failures, re-runs, timeouts, resume).

It implements the same protocol as the real backends and runs inside the real Replica actor on
real Ray; only the engine is fake. It never stands in for vLLM in an end-to-end test. Its
"tokenizer" is UTF-8: a prompt's token ids are the bytes of its text (tests.fake_engine.byte_ids).
Behaviour comes from the run's engine_kwargs, e.g. {"die_rank": 1, "die_after_chunks": 1}.

Its answers depend on the batch they were generated in (the batch size and the position in it
are part of the text), as a real engine's may: a resumed run only equals an uninterrupted one if
it batches the missing prompts exactly as the uninterrupted run did. With {"answer": "gold"} it
answers "question number N" correctly in Markdown (bold, a list) unless N % 3 == 0, so the
scorer's end-to-end accuracy is known in advance.
"""
from __future__ import annotations

import os
import re
import time

from evaluator.records import Completion, SamplingConfig
from launchers.replica import Replica, ServerReplica


def byte_ids(text: str) -> tuple[int, ...]:
    """The fake engine's token ids of a text: its UTF-8 bytes."""
    return tuple(text.encode())


class FakeEngine:
    def __init__(self, rank: int, behaviour: dict):
        self.rank, self.b, self.calls = rank, behaviour, 0

    def generate(self, token_ids, params: SamplingConfig, seeds=None) -> list[Completion]:
        prompts = [bytes(ids).decode() for ids in token_ids]
        b = self.b
        if b.get("die_rank") == self.rank and self.calls >= b.get("die_after_chunks", 0):
            os._exit(1)                     # like a process killed mid-generation
        if b.get("raise_rank") == self.rank and self.calls >= b.get("raise_after_chunks", 0):
            raise RuntimeError("fake engine exploded")
        if b.get("hang_rank") == self.rank:
            time.sleep(3600)
        self.calls += 1
        time.sleep(b.get("delay_s", 0.0) * (b.get("slow_factor", 1.0) if b.get("slow_rank") == self.rank else 1.0))
        if b.get("answer") == "gold":
            return [self._gold(p) for p in prompts]
        # distinct per index, and per batch: a prompt batched differently answers differently
        return [Completion(texts=(f"{p[-40:]} batch {k}/{len(prompts)} #### {len(p)}",), prompt_tokens=len(p.split()),
                           completion_tokens=5) for k, p in enumerate(prompts)]

    @staticmethod
    def _gold(prompt: str) -> Completion:
        n = int(re.search(r"question number (\d+)", prompt).group(1))
        answer = n if n % 3 else n + 1
        text = f"Let's count.\n- first: {n} - 1 = {n - 1}\n- so the answer is **{answer}**\n\n#### **{answer}**"
        return Completion(texts=(text,), prompt_tokens=len(prompt.split()), completion_tokens=12)

    def close(self) -> None:
        pass


class FakeReplica(Replica):
    def start(self):
        b = self.spec.engine_kwargs
        if b.get("fail_start_rank") == self.rank:
            raise RuntimeError("fake engine could not start")
        if b.get("hang_start_rank") == self.rank:
            time.sleep(3600)
        t0 = time.perf_counter()
        self.engine = FakeEngine(self.rank, b)
        return {**self.info(), "startup_s": time.perf_counter() - t0}


class FakeServerReplica(ServerReplica):
    """A real HTTP server with a fake engine behind it (evaluator.bench.fakeserver) in place of
    the engine's own server, for fast tests of the serving driver: fresh requests, warm-up,
    windows, capacity probes. engine_kwargs: tokens, ttft_s, gap_s, ttft_per_inflight_s, log (a
    file each request's messages are appended to)."""

    def start(self):
        import subprocess
        import sys
        from evaluator.bench.fakeserver import free_port
        from launchers.replica import _healthy
        b = self.spec.engine_kwargs
        port = free_port()
        argv = [sys.executable, "-m", "evaluator.bench.fakeserver", "--port", str(port),
                "--tokens", str(b.get("tokens", 4)), "--ttft-s", str(b.get("ttft_s", 0.0)),
                "--gap-s", str(b.get("gap_s", 0.0)), "--ttft-per-inflight-s", str(b.get("ttft_per_inflight_s", 0.0))]
        if b.get("log"):
            argv += ["--log", b["log"]]
        url = f"http://127.0.0.1:{port}"

        def run():
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
            while not _healthy(url + "/health"):
                if self.proc.poll() is not None:
                    raise RuntimeError("the fake server exited")
                time.sleep(0.1)
            return {"url": url, "model_name": "fake", "server_pid": self.proc.pid, "argv": argv}
        return self._timed_start(run)
