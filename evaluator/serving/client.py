"""Load client for OpenAI-compatible servers (vLLM, SGLang): sends one level of chat requests
(N in flight, or Poisson arrivals at R/s) to one or more replica endpoints, streams every answer
and times it (TTFT, ITL, E2E) with time.perf_counter. Our equivalent of `vllm bench serve`'s client.

Routing: each request goes to the live endpoint with the fewest requests in flight. A failed
attempt (connection refused/reset, disconnect mid-stream, HTTP 5xx, a stream cut before [DONE])
asks the endpoint's /health, marks it dead when that fails too, and retries the request from
scratch on another live endpoint. HTTP 4xx is bad input: rejected, never retried.

    python -c "from evaluator.serving.client import run_level_sync, Endpoints; \
from evaluator.serving.records import ChatRequest, Level; from evaluator.records import SamplingConfig; \
r, s = run_level_sync(Endpoints(['http://127.0.0.1:8001']), [ChatRequest(0, ({'role': 'user', 'content': '2+2?'},))], \
Level('concurrency', 1), SamplingConfig(max_tokens=16), 'Qwen/Qwen2.5-7B-Instruct'); print(r[0].ttft_s, s)"
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Callable, Sequence

import aiohttp

from evaluator.records import SamplingConfig
from evaluator.serving.records import ChatRequest, Level, RequestResult

HEALTH_TIMEOUT_S = 2.0
ERROR_CHARS = 300


class NoEndpoint(RuntimeError):
    """Every endpoint has been marked dead."""


class Endpoints:
    """The router over replica base URLs ("http://127.0.0.1:8001", ...); rank = position in the
    list. Dead marks persist, so one Endpoints reused over several levels skips a dead replica."""

    def __init__(self, urls: Sequence[str]):
        if not urls:
            raise ValueError("Endpoints needs at least one base URL")
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.in_flight = [0] * len(self.urls)
        self.dead: dict[int, str] = {}            # rank -> why it was marked dead

    def __len__(self) -> int:
        return len(self.urls)

    def alive(self) -> list[int]:
        return [r for r in range(len(self.urls)) if r not in self.dead]

    def mark_dead(self, rank: int, reason: str) -> None:
        self.dead.setdefault(rank, reason)       # keep the first reason: later ones are echoes of it

    def acquire(self, avoid: frozenset[int] = frozenset()) -> int:
        """The live endpoint with the fewest requests in flight (ties: lowest rank), preferring
        ranks outside `avoid` (those that already failed this request); counts it as in flight."""
        live = self.alive()
        if not live:
            why = "; ".join(f"rank {r} ({self.urls[r]}): {m}" for r, m in sorted(self.dead.items()))
            raise NoEndpoint(f"no live endpoint left: {why}")
        candidates = [r for r in live if r not in avoid] or live
        rank = min(candidates, key=lambda r: (self.in_flight[r], r))
        self.in_flight[rank] += 1
        return rank

    def release(self, rank: int) -> None:
        self.in_flight[rank] -= 1


def arrival_offsets_s(n: int, rate: float, seed: int) -> list[float]:
    """Send times of n Poisson arrivals at `rate` requests/s, from level start: the first at 0,
    then exponential gaps drawn from random.Random(seed). rate=inf: all at 0."""
    if rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


def request_body(model: str, request: ChatRequest, sampling: SamplingConfig) -> dict[str, Any]:
    """The JSON of one streamed chat completion. Every sampling value is sent, top_k and
    repetition_penalty (vLLM/SGLang extensions) included: a field left out takes the model's
    generation_config.json default on these servers (Qwen2.5: repetition_penalty 1.05, top_k 20),
    where an offline run uses exactly what it was given, and the two would answer differently.
    The seed is the request's own (sampling.seed is the offline runs' engine seed)."""
    body: dict[str, Any] = {
        "model": model, "messages": list(request.messages), "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature, "top_p": sampling.top_p,
        "top_k": sampling.top_k, "repetition_penalty": sampling.repetition_penalty,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    if request.seed is not None:
        body["seed"] = request.seed
    return body


class _AttemptFailed(Exception):
    def __init__(self, message: str, rejected: bool = False):
        super().__init__(message)
        self.rejected = rejected


def _server_message(body: str) -> str:
    """vLLM and SGLang put the reason in {"message": ...} or {"error": {"message": ...}}."""
    try:
        d = json.loads(body)
    except ValueError:
        return body
    if isinstance(d, dict):
        inner = d.get("error") if isinstance(d.get("error"), dict) else d
        if isinstance(inner.get("message"), str):
            return inner["message"]
    return body


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, first_send: float) -> dict:
    """One attempt: POST, then read the SSE stream to [DONE]. Raises _AttemptFailed."""
    text, itl, ttft, last, usage = [], [], None, 0.0, None
    try:
        async with session.post(url, json=body) as resp:
            if resp.status >= 400:
                message = _server_message(await resp.text())[:ERROR_CHARS]
                raise _AttemptFailed(f"HTTP {resp.status}: {message}", rejected=resp.status < 500)
            async for raw in resp.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue                       # blank separators, ": keep-alive" comments
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return {"text": "".join(text), "ttft_s": ttft, "itl_s": tuple(itl),
                            "e2e_s": time.perf_counter() - first_send, "usage": usage}
                try:
                    chunk = json.loads(data)
                except ValueError as e:
                    raise _AttemptFailed(f"bad SSE chunk {data[:80]!r}: {e}") from e
                if "error" in chunk or chunk.get("object") == "error":
                    # a server error after the 200 header went out: 4xx is still bad input
                    err = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
                    code = err.get("code")
                    rejected = isinstance(code, int) and 400 <= code < 500
                    raise _AttemptFailed(f"error in stream: {str(err.get('message', err))[:ERROR_CHARS]}", rejected)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices") or []
                content = (choices[0].get("delta") or {}).get("content") if choices else None
                if content:
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = now - first_send
                    else:
                        itl.append(now - last)
                    last = now
                    text.append(content)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise _AttemptFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
    raise _AttemptFailed("stream ended without [DONE]")


async def _health_problem(session: aiohttp.ClientSession, base: str) -> str | None:
    """None when GET {base}/health answers 200 within 2 s, else what went wrong."""
    try:
        async with session.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as r:
            return None if r.status == 200 else f"/health answered HTTP {r.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return f"/health failed: {type(e).__name__}: {e}"


async def _send(session: aiohttp.ClientSession, endpoints: Endpoints, request: ChatRequest, label: str,
                body: dict, level_start: float) -> RequestResult:
    """One request to completion: attempts on endpoints until one succeeds, it is rejected,
    retries run out (2 per endpoint) or no endpoint is left. Always returns a result."""
    max_retries = 2 * len(endpoints)
    first_send, retries, tried, last_error, rank = None, 0, set(), None, -1

    def failed(error: str, rejected: bool = False) -> RequestResult:
        sent = (first_send if first_send is not None else time.perf_counter()) - level_start
        return RequestResult(request.index, label, rank, False, error, rejected, retries, sent,
                             None, (), None, 0, 0, "")

    while True:
        try:
            rank = endpoints.acquire(avoid=frozenset(tried))
        except NoEndpoint as e:
            return failed(f"{e} (last attempt: {last_error})" if last_error else str(e))
        if first_send is None:
            first_send = time.perf_counter()
        try:
            out = await _stream(session, f"{endpoints.urls[rank]}/v1/chat/completions", body, first_send)
        except _AttemptFailed as e:
            if e.rejected:
                return failed(str(e), rejected=True)
            last_error = f"rank {rank}: {e}"
            problem = await _health_problem(session, endpoints.urls[rank])
            if problem is not None:
                endpoints.mark_dead(rank, f"{e}; {problem}")
            tried.add(rank)
            if retries >= max_retries:
                return failed(f"gave up after {retries} retries; last: {last_error}")
            retries += 1
            continue
        finally:
            endpoints.release(rank)
        usage = out["usage"]
        # usage is the server's count; chunks are not tokens (a chunk may carry several, or none)
        error = None if usage else "no usage in stream"
        return RequestResult(
            request.index, label, rank, usage is not None, error, False, retries, first_send - level_start,
            out["ttft_s"], out["itl_s"], out["e2e_s"],
            int(usage["prompt_tokens"]) if usage else 0, int(usage["completion_tokens"]) if usage else 0,
            out["text"])


async def run_level(endpoints: Endpoints, requests: list[ChatRequest], level: Level, sampling: SamplingConfig,
                    model: str, on_result: Callable[[RequestResult], None] | None = None, seed: int = 0,
                    request_timeout_s: float = 600, max_concurrency: int | None = None,
                    ) -> tuple[list[RequestResult], float]:
    """Send every request at `level`; returns the results in index order (exactly one per
    request) and the level's duration_s (level start, i.e. the first send, to the last result).
    max_concurrency caps the requests in flight of a rate level (a concurrency level is its own cap)."""
    if sampling.n != 1:
        raise ValueError(f"the load client sends one completion per request; sampling.n={sampling.n}")
    indices = [r.index for r in requests]
    if len(set(indices)) != len(indices):
        raise ValueError("request indices must be unique")
    if level.kind == "concurrency":
        offsets, cap = [0.0] * len(requests), level.value
    else:
        offsets, cap = arrival_offsets_s(len(requests), level.value, seed), max_concurrency
    gate = asyncio.Semaphore(int(cap)) if cap is not None and cap != float("inf") else None
    bodies = {r.index: request_body(model, r, sampling) for r in requests}
    last_result = [0.0]

    async def one(session, request: ChatRequest, level_start: float) -> RequestResult:
        if gate is not None:
            async with gate:
                result = await _send(session, endpoints, request, level.label, bodies[request.index], level_start)
        else:
            result = await _send(session, endpoints, request, level.label, bodies[request.index], level_start)
        last_result[0] = time.perf_counter()
        if on_result is not None:
            on_result(result)
        return result

    # limit=0: no connection cap, the level alone decides how many requests are in flight
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=request_timeout_s)) as session:
        level_start, tasks = time.perf_counter(), []
        try:
            for request, offset in zip(requests, offsets):
                delay = level_start + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(session, request, level_start)))
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:               # an on_result error or a cancel: stop the rest too
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    duration_s = last_result[0] - level_start if results else 0.0
    return sorted(results, key=lambda r: r.index), duration_s


def run_level_sync(*args: Any, **kwargs: Any) -> tuple[list[RequestResult], float]:
    """run_level(...) from synchronous code: asyncio.run(run_level(...))."""
    return asyncio.run(run_level(*args, **kwargs))
