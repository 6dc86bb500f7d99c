"""Load client for OpenAI-compatible servers (vLLM, SGLang): sends one level of chat requests
(N in flight, Poisson arrivals at R/s, or a trace's own arrival times replayed) to one or more
replica endpoints, streams every answer and times it (TTFT, ITL, E2E) with time.perf_counter. Our
equivalent of `vllm bench serve`'s client.

Routing: each request goes to the live endpoint with the fewest requests in flight. What happens
when an attempt fails depends on why:
- connection refused or reset, a stream cut before [DONE], HTTP 5xx: ask the endpoint's /health;
  mark it dead when that fails too; retry the request from scratch on another live endpoint;
- HTTP 429 or 408 (the server is overloaded or rate-limits us): back off (its Retry-After, else
  0.25 s doubling to 8 s) and try again within the level, counted as `throttled`;
- no answer within the request timeout (or no byte for the stall timeout): if /health still
  answers, the request is recorded as timed out at this level and NOT re-sent (re-sending would add
  load to a saturated level); if it does not, the server is dead and the request goes elsewhere;
- any other HTTP 4xx is bad input: rejected, never retried (a 404 names a model the server does
  not serve: the caller reports that as a configuration error).

Sessions (multi-turn conversations): turn k of a session is sent once turn k-1's answer is back,
with the conversation so far before its own messages. Every request records when it was due and
when it went out, so the send lag shows whether the client kept up.

    python -c "from evaluator.serving.client import run_level_sync, Endpoints; \
from evaluator.serving.records import ChatRequest, Level; from evaluator.records import SamplingConfig; \
r, s = run_level_sync(Endpoints(['http://127.0.0.1:8001']), [ChatRequest(0, ({'role': 'user', 'content': '2+2?'},))], \
Level('concurrency', 1), SamplingConfig(max_tokens=16), 'Qwen/Qwen2.5-7B-Instruct'); print(r[0].ttft_s, s)"
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from typing import Any, Callable, Sequence

import aiohttp

from evaluator.records import SamplingConfig
from evaluator.serving.records import ChatRequest, Level, RequestResult

HEALTH_TIMEOUT_S = 2.0
ERROR_CHARS = 300
BACKOFF_FIRST_S, BACKOFF_MAX_S, THROTTLE_LIMIT = 0.25, 8.0, 30
THROTTLE_STATUSES = (408, 429)
# delta fields that carry tokens besides the answer: a reasoning model streams these first
TOKEN_DELTAS = ("reasoning_content", "reasoning", "tool_calls")


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
        self.attempts: dict[int, set[asyncio.Task]] = {}   # rank -> attempts in flight (the watchdog ends them)

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


def replay_offsets_s(requests: Sequence[ChatRequest], speed: float) -> list[float]:
    """A trace's arrival times from its first request, divided by the replay speed (2: twice as fast)."""
    times = [r.at_s for r in requests]
    if any(t is None for t in times):
        raise ValueError("a replay level needs every request's timestamp (at_s)")
    start = min(times, default=0.0)
    return [(t - start) / speed for t in times]


def request_body(model: str, request: ChatRequest, sampling: SamplingConfig,
                 history: Sequence[dict] = ()) -> dict[str, Any]:
    """The JSON of one streamed chat completion. Every sampling value is sent, top_k and
    repetition_penalty (vLLM/SGLang extensions) included: a field left out takes the model's
    generation_config.json default on these servers (Qwen2.5: repetition_penalty 1.05, top_k 20),
    where an offline run uses exactly what it was given, and the two would answer differently.
    The seed is the request's own (sampling.seed is the offline runs' engine seed); so is its
    output length when the traffic fixes one."""
    ignore_eos = sampling.ignore_eos if request.ignore_eos is None else request.ignore_eos
    body: dict[str, Any] = {
        "model": model, "messages": [*history, *request.messages],
        "max_tokens": request.max_tokens if request.max_tokens is not None else sampling.max_tokens,
        "temperature": sampling.temperature, "top_p": sampling.top_p,
        "top_k": sampling.top_k, "repetition_penalty": sampling.repetition_penalty,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    if request.seed is not None:
        body["seed"] = request.seed
    return body


class _AttemptFailed(Exception):
    def __init__(self, message: str, rejected: bool = False, status: int | None = None,
                 retry_after_s: float | None = None, timed_out: bool = False):
        super().__init__(message)
        self.rejected, self.status, self.retry_after_s, self.timed_out = rejected, status, retry_after_s, timed_out

    @property
    def throttled(self) -> bool:
        return self.status in THROTTLE_STATUSES


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
        if isinstance(d.get("error"), str):
            return d["error"]
    return body


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None                 # an HTTP date: back off on our own schedule


async def _lines(resp: aiohttp.ClientResponse):
    """The response body as text lines, however long a line is (aiohttp's own line reader raises
    LineTooLong past 512 KiB, which would cancel the whole level)."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").strip()
    if buf:
        yield buf.decode("utf-8", "replace").strip()


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, first_send: float,
                  headers: dict[str, str]) -> dict:
    """One attempt: POST, then read the SSE stream to [DONE]. Raises _AttemptFailed."""
    text, reasoning, itl, ttft, answer_at, last, usage = [], [], [], None, None, 0.0, None
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status >= 400:
                message = _server_message(await resp.text())[:ERROR_CHARS]
                throttled = resp.status in THROTTLE_STATUSES
                raise _AttemptFailed(f"HTTP {resp.status}: {message}", rejected=resp.status < 500 and not throttled,
                                     status=resp.status, retry_after_s=_retry_after(resp.headers.get("Retry-After")))
            async for line in _lines(resp):
                if not line.startswith("data:"):
                    continue                       # blank separators, ": keep-alive" comments
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return {"text": "".join(text), "reasoning": "".join(reasoning), "ttft_s": ttft,
                            "first_answer_s": answer_at, "itl_s": tuple(itl),
                            "e2e_s": time.perf_counter() - first_send, "usage": usage}
                try:
                    chunk = json.loads(data)
                except ValueError as e:
                    raise _AttemptFailed(f"bad SSE chunk {data[:80]!r}: {e}") from e
                if "error" in chunk or chunk.get("object") == "error":
                    # a server error after the 200 header went out: 4xx is still bad input
                    err = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
                    code = err.get("code")
                    rejected = isinstance(code, int) and 400 <= code < 500 and code not in THROTTLE_STATUSES
                    raise _AttemptFailed(f"error in stream: {str(err.get('message', err))[:ERROR_CHARS]}", rejected,
                                         status=code if isinstance(code, int) else None)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices") or []
                delta = (choices[0].get("delta") or {}) if choices else {}
                content = delta.get("content")
                other = [delta.get(k) for k in TOKEN_DELTAS if delta.get(k)]
                if content or other:
                    # the first token of any kind is the TTFT a user waits for; the first answer
                    # token is kept apart (a reasoning model streams its reasoning first)
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = now - first_send
                    else:
                        itl.append(now - last)
                    last = now
                    if content:
                        text.append(content)
                        if answer_at is None:
                            answer_at = now - first_send
                    for piece in other:
                        if isinstance(piece, str):
                            reasoning.append(piece)
    except asyncio.TimeoutError as e:
        raise _AttemptFailed(f"no answer in time ({type(e).__name__})", timed_out=True) from e
    except aiohttp.ClientError as e:
        raise _AttemptFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
    raise _AttemptFailed("stream ended without [DONE]")


async def _health_problem(session: aiohttp.ClientSession, base: str) -> str | None:
    """None when GET {base}/health answers 200 within 2 s, else what went wrong."""
    try:
        async with session.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as r:
            return None if r.status == 200 else f"/health answered HTTP {r.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return f"/health failed: {type(e).__name__}: {e}"


def backoff_s(throttled: int, retry_after_s: float | None) -> float:
    """The server's Retry-After when it gave one, else 0.25 s doubling up to 8 s."""
    if retry_after_s is not None:
        return min(retry_after_s, BACKOFF_MAX_S * 4)
    return min(BACKOFF_FIRST_S * 2 ** (throttled - 1), BACKOFF_MAX_S)


async def _send(session: aiohttp.ClientSession, endpoints: Endpoints, request: ChatRequest, label: str,
                body: dict, level_start: float, scheduled_s: float | None, headers: dict[str, str]) -> RequestResult:
    """One request to completion: attempts on endpoints until one succeeds, it is rejected or
    timed out, retries (2 per endpoint) or throttling (30 back-offs) run out, or no endpoint is
    left. Always returns a result."""
    max_retries = 2 * len(endpoints)
    first_send, retries, throttled, tried, last_error, rank = None, 0, 0, set(), None, -1

    def failed(error: str, rejected: bool = False, timed_out: bool = False, status: int | None = None) -> RequestResult:
        sent = (first_send if first_send is not None else time.perf_counter()) - level_start
        return RequestResult(request.index, label, rank, False, error, rejected, retries, sent,
                             None, (), None, 0, 0, "", scheduled_s=scheduled_s, timed_out=timed_out,
                             throttled=throttled, status=status, session=request.session, turn=request.turn)

    while True:
        try:
            rank = endpoints.acquire(avoid=frozenset(tried))
        except NoEndpoint as e:
            return failed(f"{e} (last attempt: {last_error})" if last_error else str(e))
        if first_send is None:
            first_send = time.perf_counter()
        attempt = asyncio.ensure_future(_stream(session, f"{endpoints.urls[rank]}/v1/chat/completions", body,
                                                first_send, headers))
        endpoints.attempts.setdefault(rank, set()).add(attempt)
        try:
            try:
                out = await attempt
            except asyncio.CancelledError:
                # the watchdog ended it because its server stopped answering /health; any other
                # cancel (the level's) is ours to pass on
                if rank not in endpoints.dead or asyncio.current_task().cancelling():
                    raise
                raise _AttemptFailed(f"its server stopped answering: {endpoints.dead[rank]}") from None
        except _AttemptFailed as e:
            if e.rejected:
                return failed(str(e), rejected=True, status=e.status)
            if e.throttled:
                throttled += 1
                if throttled > THROTTLE_LIMIT:
                    return failed(f"still throttled after {THROTTLE_LIMIT} back-offs: {e}", status=e.status)
                await asyncio.sleep(backoff_s(throttled, e.retry_after_s))
                continue
            last_error = f"rank {rank}: {e}"
            problem = endpoints.dead.get(rank) or await _health_problem(session, endpoints.urls[rank])
            if problem is None and e.timed_out:
                # a live server that did not answer in time: saturated, not dead
                return failed(f"timed out on rank {rank} (the server is healthy): {e}", timed_out=True)
            if problem is not None:
                endpoints.mark_dead(rank, f"{e}; {problem}")
            tried.add(rank)
            if retries >= max_retries:
                return failed(f"gave up after {retries} retries; last: {last_error}", status=e.status)
            retries += 1
            continue
        finally:
            endpoints.release(rank)
            endpoints.attempts.get(rank, set()).discard(attempt)
        usage = out["usage"]
        # usage is the server's count; chunks are not tokens (a chunk may carry several, or none)
        error = None if usage else "no usage in stream"
        return RequestResult(
            request.index, label, rank, usage is not None, error, False, retries, first_send - level_start,
            out["ttft_s"], out["itl_s"], out["e2e_s"],
            int(usage["prompt_tokens"]) if usage else 0, int(usage["completion_tokens"]) if usage else 0,
            out["text"], scheduled_s=scheduled_s, first_answer_s=out["first_answer_s"], throttled=throttled,
            session=request.session, turn=request.turn, reasoning=out["reasoning"])


async def _watchdog(session: aiohttp.ClientSession, endpoints: Endpoints, interval_s: float,
                    stop: asyncio.Event, misses_allowed: int = 1) -> None:
    """Every interval_s, ask /health of each live endpoint that has requests in flight. One that
    fails twice running (a hung server: SIGSTOPped, its port still open, its streams silent) is
    marked dead and its attempts are ended, so their requests go to the others at once instead of
    waiting out the request timeout."""
    misses: dict[int, int] = {}
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
            return
        except asyncio.TimeoutError:
            pass
        busy = [r for r in endpoints.alive() if endpoints.attempts.get(r)]
        problems = await asyncio.gather(*(_health_problem(session, endpoints.urls[r]) for r in busy))
        for rank, problem in zip(busy, problems):
            misses[rank] = misses.get(rank, 0) + 1 if problem else 0
            if problem and misses[rank] > misses_allowed:
                endpoints.mark_dead(rank, f"stopped answering /health while requests were in flight ({problem})")
                for attempt in list(endpoints.attempts.get(rank, ())):
                    attempt.cancel()


def _check(requests: list[ChatRequest], sampling: SamplingConfig) -> None:
    if sampling.n != 1:
        raise ValueError(f"the load client sends one completion per request; sampling.n={sampling.n}")
    indices = [r.index for r in requests]
    if len(set(indices)) != len(indices):
        raise ValueError("request indices must be unique")
    turns: dict[str, list[int]] = {}
    for r in requests:
        if r.session is not None:
            turns.setdefault(r.session, []).append(r.turn)
    for session, ts in turns.items():
        if ts != list(range(len(ts))):
            raise ValueError(f"session {session!r}: turns must be 0, 1, 2, ... in order (got {ts})")


class PriorityGate:
    """A cap on requests in flight whose free slots go first to a session's next turn (priority 0)
    and only then to new first turns (priority 1), each class first come, first served: a
    conversation whose answer is back goes on, as its user would, instead of queueing behind every
    waiting newcomer."""

    def __init__(self, slots: int):
        self.free = slots
        self.waiting: tuple[list, list] = ([], [])

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not any(self.waiting):
            self.free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        self.waiting[priority].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future in self.waiting[priority]:
                self.waiting[priority].remove(future)
            elif future.done() and not future.cancelled():
                self.release()            # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        for queue in self.waiting:
            while queue:
                future = queue.pop(0)
                if not future.done():
                    future.set_result(None)
                    return
        self.free += 1


class LevelSupply:
    """The requests of one level: the planned ones, and more on demand while the level has not yet
    lasted its minimum (min_s); `more()` gives one more first request (a standalone one, or a
    session's turns) or [] when the traffic has no fresh one left. `fits(messages, max_tokens)`
    says None when a conversation fits the context, else its token count (a later turn's prompt
    carries the answers before it, known only now)."""

    def __init__(self, requests: list[ChatRequest], more=None, min_s: float = 0.0, fits=None):
        self.requests, self._more, self.min_s, self.fits = list(requests), more, min_s, fits

    def more(self) -> list[ChatRequest]:
        return list(self._more()) if self._more is not None else []


def _skipped(request: ChatRequest, label: str, level_start: float, why: str) -> RequestResult:
    now = time.perf_counter() - level_start
    return RequestResult(request.index, label, -1, False, why, False, 0, now, None, (), None, 0, 0, "",
                         session=request.session, turn=request.turn, ended_s=now, reused=request.reused,
                         skipped=True)


async def run_level(endpoints: Endpoints, requests: list[ChatRequest] | LevelSupply, level: Level,
                    sampling: SamplingConfig, model: str, on_result: Callable[[RequestResult], None] | None = None,
                    seed: int = 0, request_timeout_s: float = 600, max_concurrency: int | None = None,
                    headers: dict[str, str] | None = None, stall_timeout_s: float | None = None,
                    trust_env: bool = False, monitor: Any = None,
                    health_interval_s: float | None = 5.0) -> tuple[list[RequestResult], float]:
    """Send every request at `level`; returns the results in index order (exactly one per
    request sent or skipped) and the level's duration_s (level start, i.e. the first send, to the
    last result).

    requests: a list, or a LevelSupply that can give more while the level is shorter than its
    minimum (a concurrency level then keeps every slot busy with fresh requests, a rate level keeps
    its Poisson schedule). max_concurrency caps the requests in flight of a rate or replay level (a
    concurrency level is its own cap). A session's turn k+1 goes out once turn k's answer is back
    (replay: not before its recorded gap after turn k went out), ahead of queued first turns; a
    turn that failed, or whose conversation no longer fits the context, ends its session and its
    later turns are recorded as skipped. headers go with every request (Authorization for an API
    key); stall_timeout_s bounds the silence between two bytes of one answer; trust_env=True
    makes aiohttp read proxy and netrc settings as `vllm bench serve`'s client does. monitor: an
    object with async run(session, stop) that samples the servers while the level runs
    (evaluator.serving.scrape.Scraper). health_interval_s: how often the watchdog asks busy
    servers' /health (None: never)."""
    supply = requests if isinstance(requests, LevelSupply) else LevelSupply(requests)
    planned = supply.requests
    _check(planned, sampling)
    headers = dict(headers or {})
    first_turns = [r for r in planned if r.turn == 0]
    later: dict[tuple[str, int], ChatRequest] = {(r.session, r.turn): r for r in planned if r.turn > 0}
    if level.kind == "concurrency":
        offsets, cap = [0.0] * len(first_turns), level.value
    elif level.kind == "rate":
        offsets, cap = arrival_offsets_s(len(first_turns), level.value, seed), max_concurrency
    else:
        offsets, cap = replay_offsets_s(first_turns, level.value), max_concurrency
        replay_offsets_s(list(later.values()), level.value)          # every later turn has its timestamp too
    gate = PriorityGate(int(cap)) if cap is not None and cap != float("inf") else None
    last_result = [0.0]
    results: list[RequestResult] = []
    seen = {r.index for r in planned}
    tasks: set[asyncio.Task] = set()
    extending = [supply._more is not None and supply.min_s > 0]

    def record(result: RequestResult) -> None:
        last_result[0] = time.perf_counter()
        results.append(result)
        if on_result is not None:
            on_result(result)

    def fresh() -> list[ChatRequest]:
        """One more first request (with its session's later turns) while the level is short of its
        minimum, or []."""
        if not extending[0] or time.perf_counter() - level_start >= supply.min_s:
            return []
        unit = [r for r in supply.more() if r.index not in seen]
        if not unit:
            extending[0] = False
            return []
        seen.update(r.index for r in unit)
        for r in unit:
            if r.turn > 0:
                later[(r.session, r.turn)] = r
        return [r for r in unit if r.turn == 0]

    async def one(session, request: ChatRequest, due_s: float, history: list[dict], holding: bool = False):
        """Send one request (a session's turns one after another); holding: the slot of the
        turn before is handed on, so no queued first turn takes it in between."""
        body = request_body(model, request, sampling, history)
        if gate is not None and not holding:
            await gate.acquire(0 if request.turn > 0 else 1)
        keep = False
        try:
            scheduled = due_s if level.kind != "concurrency" else time.perf_counter() - level_start
            result = await _send(session, endpoints, request, level.label, body, level_start, scheduled, headers)
            result = dataclasses.replace(result, ended_s=time.perf_counter() - level_start, reused=request.reused)
            record(result)
            nxt = later.get((request.session, request.turn + 1)) if request.session is not None else None
            keep = nxt is not None and result.ok and level.kind != "replay"
        finally:
            if gate is not None and not keep:
                gate.release()
        if level.kind == "concurrency" and request.turn == 0:
            for nxt_first in fresh():          # keep the slot busy while the level is short of its minimum
                spawn(one(session, nxt_first, time.perf_counter() - level_start, []))
        if nxt is None:
            return
        if not result.ok:
            for k in range(nxt.turn, 1 + max(t for s, t in later if s == request.session)):
                record(_skipped(later[(request.session, k)], level.label, level_start,
                                f"not sent: turn {request.turn} of its session failed ({result.error})"))
            return
        convo = [*history, *request.messages, {"role": "assistant", "content": result.text}]
        wanted = nxt.max_tokens if nxt.max_tokens is not None else sampling.max_tokens
        too_long = supply.fits([*convo, *nxt.messages], wanted) if supply.fits is not None else None
        if too_long is not None:
            if keep and gate is not None:
                gate.release()
            for k in range(nxt.turn, 1 + max(t for s, t in later if s == request.session)):
                record(_skipped(later[(request.session, k)], level.label, level_start,
                                f"not sent: the conversation would need {too_long} prompt tokens + {wanted} new "
                                f"tokens, beyond the context"))
            return
        due = time.perf_counter() - level_start
        if level.kind == "replay" and nxt.at_s is not None and request.at_s is not None:
            # the recorded gap between the two turns, from when this turn actually went out
            went_out = result.sent_s
            due = max(due, went_out + (nxt.at_s - request.at_s) / level.value)
            await asyncio.sleep(max(0.0, level_start + due - time.perf_counter()))
        await one(session, nxt, due, convo, holding=keep)

    def spawn(coro) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)

    connector = aiohttp.TCPConnector(limit=0)   # no connection cap: the level alone decides what is in flight
    timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_read=stall_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=trust_env) as session:
        stop = asyncio.Event()
        watch = [asyncio.create_task(monitor.run(session, stop))] if monitor is not None else []
        if health_interval_s:
            watch.append(asyncio.create_task(_watchdog(session, endpoints, health_interval_s, stop)))
        level_start = time.perf_counter()
        try:
            for request, offset in zip(first_turns, offsets):
                delay = level_start + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                spawn(one(session, request, offset, []))
            if level.kind == "rate":
                # a Poisson schedule goes on past the planned requests while the level is short of its minimum
                rng = random.Random(seed + 1)
                offset = offsets[-1] if offsets else 0.0
                while extending[0]:
                    offset += rng.expovariate(level.value) if math.isfinite(level.value) else 0.0
                    if offset >= supply.min_s:
                        break
                    await asyncio.sleep(max(0.0, level_start + offset - time.perf_counter()))
                    unit = fresh()
                    if not unit:
                        break
                    for request in unit:
                        spawn(one(session, request, offset, []))
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                tasks.difference_update(done)
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()
        except BaseException:
            for t in tasks:               # an on_result error or a cancel: stop the rest too
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            stop.set()
            await asyncio.gather(*watch, return_exceptions=True)
    duration_s = last_result[0] - level_start if results else 0.0
    return sorted(results, key=lambda r: r.index), duration_s


def run_level_sync(*args: Any, **kwargs: Any) -> tuple[list[RequestResult], float]:
    """run_level(...) from synchronous code: asyncio.run(run_level(...))."""
    return asyncio.run(run_level(*args, **kwargs))
