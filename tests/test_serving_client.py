"""Unit tests of the serving load client (evaluator.serving) against FAKE OpenAI-compatible servers:
aiohttp.web apps on 127.0.0.1 (random free ports) that stream SSE on a known timetable, so the
client's timing arithmetic, usage accounting, routing, retries and failure handling can be checked.
The fakes run in their own thread and event loop, as a real server would, while the client runs
through run_level_sync. Timing bounds: lower bounds near-exact (the fake sleeps at least that long),
upper bounds generous (a shared 2-core machine). Never used for end-to-end tests.

    .venv/bin/python -m pytest tests/test_serving_client.py -q
"""
from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
from pathlib import Path
from collections import Counter

import pytest
from aiohttp import web

from evaluator.records import SamplingConfig
from evaluator.serving.client import Endpoints, NoEndpoint, arrival_offsets_s, request_body, run_level_sync
from evaluator.serving.metrics import LevelStats, level_stats, percentile
from evaluator.serving.records import ChatRequest, Level, RequestResult

SAMPLING = SamplingConfig(max_tokens=16)


class Fake:
    """Behaviour and counters of one fake server. Streams a role chunk, then `tokens` content
    chunks ("t0 ", "t1 ", ...) the first after `ttft_s` and the rest `gap_s` apart, then a usage
    chunk that reports `usage_completion` tokens (deliberately not the chunk count), then [DONE].
    fail_first: how the first request fails ("drop": connection closed after 2 content chunks,
    "http500", "no_done": clean end of stream without [DONE]). status: answer every request with it."""

    def __init__(self, ttft_s=0.05, gap_s=0.02, tokens=5, usage_completion=7, usage_prompt=11,
                 usage=True, fail_first=None, status=None, throttle_first=0, throttle_status=429,
                 retry_after=None, reasoning=0, big_chunk=0, hang_after=None, health_hangs=False):
        self.ttft_s, self.gap_s, self.tokens = ttft_s, gap_s, tokens
        self.usage_completion, self.usage_prompt, self.usage = usage_completion, usage_prompt, usage
        self.fail_first, self.status = fail_first, status
        # the first `throttle_first` requests get HTTP throttle_status (429/408), with Retry-After if given
        self.throttle_first, self.throttle_status, self.retry_after = throttle_first, throttle_status, retry_after
        self.reasoning, self.big_chunk = reasoning, big_chunk   # reasoning chunks first; one content chunk of N chars
        self.hang_after, self.health_hangs = hang_after, health_hangs   # stop sending after N chunks (a hung server)
        self.requests = self.in_flight = self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.arrivals: list[float] = []

    async def health(self, request: web.Request) -> web.Response:
        if self.health_hangs:
            await asyncio.sleep(30)
        return web.Response(text="")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        import time
        self.arrivals.append(time.perf_counter())
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        self.requests += 1
        first = self.requests == 1
        if self.requests <= self.throttle_first:
            extra = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
            return web.json_response({"error": {"message": "slow down", "code": self.throttle_status}},
                                     status=self.throttle_status, headers=extra)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.status is not None:
                return web.json_response({"object": "error", "message": "prompt is too long " + "x" * 400,
                                          "type": "BadRequestError", "code": self.status}, status=self.status)
            if first and self.fail_first == "http500":
                return web.json_response({"message": "engine crashed"}, status=500)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)

            async def send(d: dict) -> None:
                await resp.write(f"data: {json.dumps(d)}\n\n".encode())

            await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None})
            await asyncio.sleep(self.ttft_s)
            for i in range(self.reasoning):
                await send({"choices": [{"index": 0, "delta": {"reasoning_content": f"r{i} "}}], "usage": None})
                await asyncio.sleep(self.gap_s)
            if self.big_chunk:
                await send({"choices": [{"index": 0, "delta": {"content": "x" * self.big_chunk}}], "usage": None})
            for i in range(self.tokens):
                if self.hang_after is not None and i == self.hang_after:
                    await asyncio.sleep(3600)
                if i:
                    await asyncio.sleep(self.gap_s)
                await send({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}], "usage": None})
                if first and self.fail_first == "drop" and i == 1:
                    request.transport.close()
                    return resp
            if first and self.fail_first == "no_done":
                await resp.write_eof()
                return resp
            if self.usage:
                await send({"choices": [], "usage": {"prompt_tokens": self.usage_prompt,
                                                     "completion_tokens": self.usage_completion,
                                                     "total_tokens": self.usage_prompt + self.usage_completion}})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
def server_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def serve(server_loop):
    """serve(fake) -> base URL of a fake listening on a free port; all stopped after the test."""
    runners = []

    async def start(fake: Fake):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake.chat)
        app.router.add_get("/health", fake.health)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        return runner, f"http://127.0.0.1:{sock.getsockname()[1]}"

    def serve_(fake: Fake) -> str:
        runner, url = asyncio.run_coroutine_threadsafe(start(fake), server_loop).result(10)
        runners.append(runner)
        return url

    yield serve_
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), server_loop).result(10)


@pytest.fixture
def dead_url():
    """A port that is bound but not listening (connection refused), held for the whole test so
    no other process can start listening on it meanwhile."""
    socks = []

    def make() -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield make
    for sock in socks:
        sock.close()


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest(i, ({"role": "user", "content": f"question {i}"},)) for i in range(n)]


def _run(urls, n, level=Level("concurrency", 1), **kw):
    return run_level_sync(urls if isinstance(urls, Endpoints) else Endpoints(urls), _requests(n), level,
                          SAMPLING, "fake-model", **kw)


def test_timing_arithmetic_and_usage_from_server(serve):
    """50 ms to the first token, 4 gaps of 20 ms: TTFT, ITL, E2E and TPOT follow; token counts
    are the server's usage (7 completion, 11 prompt), not the 5 content chunks."""
    fake = Fake(ttft_s=0.05, gap_s=0.02, tokens=5, usage_completion=7, usage_prompt=11)
    seen = []
    results, duration_s = _run([serve(fake)], 2, on_result=seen.append)
    assert [r.index for r in results] == [0, 1] and sorted(r.index for r in seen) == [0, 1]
    for r in results:
        assert r.ok and r.error is None and r.retries == 0 and r.replica == 0 and r.level == "c=1"
        assert r.text == "t0 t1 t2 t3 t4 "
        assert (r.prompt_tokens, r.completion_tokens) == (11, 7)
        assert 0.049 <= r.ttft_s < 0.5
        assert len(r.itl_s) == 4 and all(0.015 <= g < 0.3 for g in r.itl_s)
        assert 0.049 + 4 * 0.02 <= r.e2e_s < 1.5
        assert r.e2e_s >= r.ttft_s + sum(r.itl_s) - 1e-9
        assert r.tpot_s == pytest.approx((r.e2e_s - r.ttft_s) / 6)
    # concurrency 1: the second is sent after the first finished, and the level covers both
    assert results[1].sent_s >= results[0].sent_s + results[0].e2e_s - 1e-3
    assert results[1].sent_s + results[1].e2e_s <= duration_s + 1e-3 < 3


def test_request_body_sends_every_sampling_value(serve):
    """top_k and repetition_penalty go out even at their 'off' values: a field left out takes the
    model's generation_config default on vLLM and SGLang servers (Qwen2.5: 1.05 and 20)."""
    plain = request_body("m", ChatRequest(0, ({"role": "user", "content": "hi"},)), SAMPLING)
    assert plain["stream"] is True and plain["stream_options"] == {"include_usage": True}
    assert plain["messages"] == [{"role": "user", "content": "hi"}] and plain["max_tokens"] == 16
    assert (plain["top_k"], plain["repetition_penalty"]) == (-1, 1.0)
    assert not {"ignore_eos", "seed"} & set(plain)
    fake = Fake(tokens=1, ttft_s=0)
    tuned = SamplingConfig(max_tokens=8, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1, ignore_eos=True)
    run_level_sync(Endpoints([serve(fake)]), [ChatRequest(0, ({"role": "user", "content": "hi"},), seed=5)],
                   Level("concurrency", 1), tuned, "fake-model")
    body = fake.bodies[0]
    assert body["model"] == "fake-model" and (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 8)
    assert (body["top_k"], body["repetition_penalty"], body["ignore_eos"], body["seed"]) == (20, 1.1, True, 5)


def test_concurrency_cap_is_respected_and_filled(serve):
    fake = Fake(ttft_s=0.03, gap_s=0.005, tokens=2)
    results, _ = _run([serve(fake)], 12, Level("concurrency", 3))
    assert all(r.ok for r in results) and fake.requests == 12
    assert fake.max_in_flight == 3


def test_least_in_flight_routing_favours_the_fast_endpoint(serve):
    fast, slow = Fake(ttft_s=0.01, gap_s=0.005, tokens=2), Fake(ttft_s=0.25, gap_s=0.005, tokens=2)
    results, _ = _run([serve(slow), serve(fast)], 16, Level("concurrency", 4))
    assert all(r.ok for r in results)
    counts = Counter(r.replica for r in results)
    assert counts == {0: slow.requests, 1: fast.requests}
    assert slow.requests >= 1 and slow.requests * 2 < fast.requests


def test_endpoints_router_picks_fewest_in_flight_then_lowest_rank():
    eps = Endpoints(["http://a/", "http://b", "http://c"])
    assert eps.urls == ("http://a", "http://b", "http://c")
    assert [eps.acquire() for _ in range(4)] == [0, 1, 2, 0]
    eps.release(1)
    assert eps.acquire() == 1
    assert eps.acquire(avoid=frozenset({2})) == 1       # 1 and 2 both have one in flight; 2 is avoided
    eps.mark_dead(0, "gone")
    eps.mark_dead(1, "gone")
    assert eps.acquire(avoid=frozenset({2})) == 2       # the only live one, even though avoided
    eps.mark_dead(2, "gone too")
    with pytest.raises(NoEndpoint, match="no live endpoint left.*gone too"):
        eps.acquire()


def test_poisson_arrivals_are_seeded_and_have_the_right_mean(serve):
    a = arrival_offsets_s(4000, 20.0, seed=1)
    assert a == arrival_offsets_s(4000, 20.0, seed=1) and a != arrival_offsets_s(4000, 20.0, seed=2)
    assert a[0] == 0 and all(y >= x for x, y in zip(a, a[1:]))
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert statistics.mean(gaps) == pytest.approx(1 / 20, rel=0.1)
    assert statistics.stdev(gaps) == pytest.approx(1 / 20, rel=0.15)   # exponential: sd == mean
    assert arrival_offsets_s(5, float("inf"), seed=1) == [0.0] * 5
    # the client sends on that timetable
    fake = Fake(ttft_s=0.01, gap_s=0.001, tokens=2)
    results, _ = _run([serve(fake)], 8, Level("rate", 20.0), seed=3)
    plan = arrival_offsets_s(8, 20.0, seed=3)
    assert all(p - 1e-3 <= r.sent_s < p + 0.15 for p, r in zip(plan, results)) and results[0].level == "rate=20/s"
    results, _ = _run([serve(Fake(ttft_s=0.1, tokens=1))], 6, Level("rate", float("inf")))
    assert all(r.sent_s < 0.1 for r in results)            # all sent before any first answer came


@pytest.mark.parametrize("mode", ["drop", "http500", "no_done"])
def test_failed_attempt_is_retried_on_the_other_endpoint(serve, mode):
    """The first attempt fails on rank 0 (whose /health still answers, so it stays alive); the
    retry on rank 1 succeeds. TTFT/E2E count from the FIRST send; ITL only from the final attempt."""
    flaky, good = Fake(fail_first=mode), Fake()
    eps = Endpoints([serve(flaky), serve(good)])
    (r,), _ = _run(eps, 1)
    assert r.ok and r.retries == 1 and r.replica == 1 and r.text == "t0 t1 t2 t3 t4 "
    assert (flaky.requests, good.requests) == (1, 1) and eps.dead == {}
    assert len(r.itl_s) == 4 and r.completion_tokens == 7
    first_attempt_s = {"drop": 0.05 + 0.02, "http500": 0.0, "no_done": 0.05 + 4 * 0.02}[mode]
    assert r.ttft_s >= first_attempt_s + 0.049


def test_dead_endpoint_is_marked_and_the_other_serves_everything(serve, dead_url):
    fake = Fake(ttft_s=0.01, gap_s=0.005, tokens=2)
    eps = Endpoints([dead_url(), serve(fake)])
    results, _ = _run(eps, 6, Level("concurrency", 2))
    assert all(r.ok for r in results) and {r.replica for r in results} == {1} and fake.requests == 6
    assert list(eps.dead) == [0] and "/health failed" in eps.dead[0]
    assert sum(r.retries for r in results) >= 1


def test_http_400_is_rejected_and_not_retried(serve):
    bad, other = Fake(status=400), Fake()
    results, _ = _run([serve(bad), serve(other)], 1)
    (r,) = results
    assert not r.ok and r.rejected and r.retries == 0 and r.replica == 0
    assert r.error.startswith("HTTP 400: prompt is too long") and len(r.error) <= len("HTTP 400: ") + 300
    assert (bad.requests, other.requests) == (1, 0)


def test_stream_without_usage_is_an_error_with_zero_tokens(serve):
    fake = Fake(usage=False)
    (r,), _ = _run([serve(fake)], 1)
    assert not r.ok and not r.rejected and r.error == "no usage in stream"
    assert (r.prompt_tokens, r.completion_tokens) == (0, 0) and r.text == "t0 t1 t2 t3 t4 "


def test_all_endpoints_dead_every_request_still_has_a_result(dead_url):
    seen = []
    eps = Endpoints([dead_url(), dead_url()])
    results, _ = _run(eps, 5, Level("concurrency", 2), on_result=seen.append)
    assert [r.index for r in results] == list(range(5)) and len(seen) == 5
    assert all(not r.ok and not r.rejected and "no live endpoint left" in r.error for r in results)
    assert set(eps.dead) == {0, 1}


def test_percentile_is_the_nearest_rank_with_failures_as_infinitely_late():
    """One definition (numpy's inverted_cdf, the nearest rank) for tables and the capacity judge:
    p90 <= x means at least 90% of the requests were within x; a failure (inf) takes part."""
    assert percentile([], 50) is None
    assert percentile([10.0], 99) == 10.0
    assert percentile([4, 1, 3, 2], 50) == 2            # not 2.5: no interpolation
    assert percentile([1, 2, 3, 4], 0) == 1 and percentile([1, 2, 3, 4], 100) == 4
    assert percentile([1, 2, 3, 4], 90) == 4
    assert percentile([15, 20, 35, 40, 50], 40) == 20
    inf = float("inf")
    assert percentile([*range(1, 10), inf], 90) == 9 and percentile([*range(1, 10), inf], 91) == inf
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _result(index, ok=True, ttft=0.1, e2e=1.1, completion=11, itl=(0.1,), rejected=False, retries=0):
    return RequestResult(index, "c=4", 0, ok, None if ok else "boom", rejected, retries, 0.0,
                         ttft if ok else None, tuple(itl) if ok else (), e2e if ok else None,
                         5 if ok else 0, completion if ok else 0, "x")


def test_level_stats_goodput_with_slos_on_hand_made_results():
    results = [
        _result(0, ttft=0.1, e2e=1.1, completion=11, itl=(0.1, 0.1)),   # tpot 100 ms: meets both
        _result(1, ttft=0.5, e2e=1.5, completion=11, itl=(0.3,)),       # ttft 500 ms: misses TTFT
        _result(2, ttft=0.1, e2e=3.1, completion=11, itl=(0.5,)),       # tpot 300 ms: misses TPOT
        _result(3, ok=False, retries=2),
        _result(4, ok=False, rejected=True),
    ]
    s = level_stats(results, duration_s=2.0, gpus=2, slo_ttft_ms=200, slo_tpot_ms=150)
    assert (s.level, s.level_kind, s.level_value) == ("c=4", "concurrency", 4)
    assert (s.level, s.requests, s.ok, s.errors, s.rejected, s.retries) == ("c=4", 5, 3, 1, 1, 2)
    assert s.request_per_s == 1.5 and s.goodput_rps == 0.5 and s.slo_met == pytest.approx(1 / 5)
    assert s.output_tokens_per_s == 33 / 2 and s.output_tokens_per_s_per_gpu == 33 / 4
    assert s.tokens_per_s_per_user == pytest.approx((10 + 10 + 1 / 0.3) / 3)
    # percentiles over all five requests, the two failed ones infinitely late; means over the answered
    assert s.ttft_ms_p50 == pytest.approx(500) and s.ttft_ms_mean == pytest.approx(700 / 3)   # 100 100 500 inf inf
    assert s.itl_ms_p50 == pytest.approx(100) and s.itl_ms_p90 == pytest.approx(500)   # 0.1 0.1 0.3 0.5
    assert s.e2e_ms_p50 == pytest.approx(3100) and s.tpot_ms_p50 == pytest.approx(300)
    assert s.tpot_ms_p99 == float("inf") and s.e2e_ms_p99 == float("inf")
    # an E2E SLO alone; and no SLO at all: every ok request is good
    assert level_stats(results, 2.0, 2, None, None, slo_e2e_ms=1200).goodput_rps == 0.5
    assert level_stats(results, 2.0, 2, None, None).goodput_rps == s.request_per_s
    assert LevelStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError):
        level_stats(results, 0.0, 2, None, None)


def test_records_round_trip_and_labels():
    r = _result(0, itl=(0.1, 0.2))
    assert RequestResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.tpot_s == pytest.approx(0.1) and _result(1, completion=1).tpot_s is None
    assert [Level("concurrency", 16).label, Level("rate", 8).label, Level("rate", 0.5).label,
            Level("rate", float("inf")).label] == ["c=16", "rate=8/s", "rate=0.5/s", "rate=inf"]
    for level in [Level("concurrency", 16), Level("rate", 8), Level("rate", 0.123456789), Level("rate", float("inf"))]:
        assert Level.from_label(level.label) == level                  # the label loses nothing
    for kind, value in [("burst", 1), ("concurrency", 0), ("concurrency", 2.5), ("rate", 0)]:
        with pytest.raises(ValueError):
            Level(kind, value)
    with pytest.raises(ValueError):
        Level.from_label("16")


# --- failure handling that must not end a run (issue: 429, 408, timeouts, long lines, reasoning) ---
@pytest.mark.parametrize("status", [429, 408])
def test_throttled_requests_back_off_and_are_answered(serve, status):
    """429 (rate limited) and 408 (request timeout) mean "not now", not bad input: the client backs
    off within the level and the request is answered, its back-offs counted. Retry-After is honoured."""
    fake = Fake(throttle_first=2, throttle_status=status, retry_after=0.3, tokens=2)
    (r,), _ = _run([serve(fake)], 1)
    assert r.ok and not r.rejected and r.throttled == 2 and r.retries == 0 and fake.requests == 3
    assert r.e2e_s >= 0.6, "two back-offs of the server's Retry-After (0.3 s)"
    s = level_stats([r], 1.0, 1, None, None)
    assert s.throttled == 2 and s.errors == 0


def test_backoff_without_retry_after_doubles_and_is_capped():
    from evaluator.serving.client import backoff_s
    assert [backoff_s(k, None) for k in (1, 2, 3, 4, 10)] == [0.25, 0.5, 1.0, 2.0, 8.0]
    assert backoff_s(1, 3.0) == 3.0


def test_http_404_is_rejected_with_its_status(serve):
    """A 404 (no such model on this server) is a configuration error: rejected, status kept."""
    fake = Fake(status=404)
    (r,), _ = _run([serve(fake)], 1)
    assert not r.ok and r.rejected and r.status == 404 and r.retries == 0


def test_timeout_on_a_healthy_server_is_recorded_not_resent(serve):
    """A request that outlasts the timeout on a server whose /health still answers is a timeout
    at this level: not re-sent to the other replica (that would add load to a saturated level)."""
    slow, other = Fake(ttft_s=2.0, tokens=1), Fake(tokens=1)
    eps = Endpoints([serve(slow), serve(other)])
    (r,), _ = _run(eps, 1, request_timeout_s=0.5)
    assert not r.ok and r.timed_out and r.retries == 0 and "healthy" in r.error
    assert (slow.requests, other.requests) == (1, 0) and eps.dead == {}
    assert level_stats([r], 1.0, 1, None, None).timeouts == 1


def test_a_hung_server_is_found_by_the_stall_timeout_and_its_request_rerouted(serve):
    """A server that stops sending mid-answer with its port still open (SIGSTOP) and whose /health
    hangs too: the stall timeout ends the attempt, the failed health check marks it dead, and the
    request is answered by the other replica."""
    hung, good = Fake(hang_after=1, health_hangs=True), Fake()
    eps = Endpoints([serve(hung), serve(good)])
    (r,), _ = _run(eps, 1, stall_timeout_s=0.5)
    assert r.ok and r.retries == 1 and r.replica == 1 and list(eps.dead) == [0]


def test_an_over_long_sse_line_is_read_whole(serve):
    """One streamed chunk of 2,000,000 characters (aiohttp's own line reader gives up at 512 KiB, LineTooLong, and
    would cancel the whole level)."""
    fake = Fake(big_chunk=2_000_000, tokens=1)
    (r,), _ = _run([serve(fake)], 1)
    assert r.ok and len(r.text) == 2_000_000 + len("t0 ")


def test_reasoning_tokens_start_the_ttft_clock_and_the_answer_is_timed_apart(serve):
    """A reasoning model streams reasoning_content first: TTFT is the first token of any kind,
    first_answer_s the first answer token; the answer text holds content only."""
    fake = Fake(ttft_s=0.05, gap_s=0.05, reasoning=4, tokens=2)
    (r,), _ = _run([serve(fake)], 1)
    assert r.ok and r.text == "t0 t1 " and r.reasoning == "r0 r1 r2 r3 "
    assert 0.049 <= r.ttft_s < 0.2 and r.first_answer_s >= r.ttft_s + 4 * 0.05 - 0.01
    assert len(r.itl_s) == 5


def test_each_request_carries_its_own_output_length_and_the_headers(serve):
    fake = Fake(tokens=1)
    reqs = [ChatRequest(0, ({"role": "user", "content": "a"},), max_tokens=3, ignore_eos=True),
            ChatRequest(1, ({"role": "user", "content": "b"},))]
    run_level_sync(Endpoints([serve(fake)]), reqs, Level("concurrency", 1), SAMPLING, "m",
                   headers={"Authorization": "Bearer s3cret"})
    by = {b["messages"][0]["content"]: b for b in fake.bodies}
    assert (by["a"]["max_tokens"], by["a"]["ignore_eos"]) == (3, True)
    assert by["b"]["max_tokens"] == 16 and "ignore_eos" not in by["b"]
    assert all(h.get("Authorization") == "Bearer s3cret" for h in fake.headers)


def test_a_sessions_second_turn_follows_its_answer_and_contains_it(serve):
    fake = Fake(ttft_s=0.05, tokens=2)
    reqs = [ChatRequest(0, ({"role": "user", "content": "first"},), session="s", turn=0),
            ChatRequest(1, ({"role": "user", "content": "second"},), session="s", turn=1),
            ChatRequest(2, ({"role": "user", "content": "alone"},))]
    results, _ = run_level_sync(Endpoints([serve(fake)]), reqs, Level("rate", float("inf")), SAMPLING, "m")
    assert all(r.ok for r in results)
    second = next(b for b in fake.bodies if b["messages"][-1]["content"] == "second")
    assert [m["content"] for m in second["messages"]] == ["first", "t0 t1 ", "second"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    r0, r1 = results[0], results[1]
    assert r1.sent_s >= r0.sent_s + r0.e2e_s - 1e-3 and (r1.session, r1.turn) == ("s", 1)


def test_replay_sends_at_the_recorded_times_scaled(serve):
    fake = Fake(ttft_s=0.01, tokens=1)
    at = [10.0, 10.2, 10.5, 11.0]
    reqs = [ChatRequest(i, ({"role": "user", "content": str(i)},), at_s=t) for i, t in enumerate(at)]
    results, _ = run_level_sync(Endpoints([serve(fake)]), reqs, Level("replay", 2.0), SAMPLING, "m")
    for r, t in zip(results, at):
        due = (t - 10.0) / 2
        assert r.scheduled_s == pytest.approx(due) and due - 1e-3 <= r.sent_s < due + 0.1
        assert 0 <= r.send_lag_s < 0.1
    assert Level.from_label(Level("replay", 2.0).label) == Level("replay", 2.0)


def test_send_lag_is_recorded_for_rate_levels(serve):
    fake = Fake(ttft_s=0.01, tokens=1)
    results, _ = _run([serve(fake)], 20, Level("rate", 50.0), seed=1)
    plan = arrival_offsets_s(20, 50.0, seed=1)
    assert [r.scheduled_s for r in results] == pytest.approx(plan)
    s = level_stats(results, 1.0, 1, None, None)
    assert s.send_lag_ms_p50 is not None and 0 <= s.send_lag_ms_p50 <= s.send_lag_ms_p99 < 100


def test_the_watchdog_finds_a_hung_server_without_any_timeout(serve):
    """No stall timeout, a long request timeout: the watchdog's /health probes find the hung
    server (health hangs too), mark it dead and end its attempts; the requests go to the other."""
    hung, good = Fake(hang_after=1, health_hangs=True, tokens=3), Fake(tokens=3)
    eps = Endpoints([serve(hung), serve(good)])
    results, duration_s = _run(eps, 4, Level("concurrency", 4), health_interval_s=0.3, request_timeout_s=60)
    assert all(r.ok for r in results) and list(eps.dead) == [0] and "stopped answering /health" in eps.dead[0]
    assert sum(r.retries for r in results) == hung.requests >= 1 and duration_s < 10


def test_a_soak_of_2000_requests_over_10_levels_leaks_nothing(tmp_path):
    """python -m evaluator.bench.client soak against two fake servers in processes of their own:
    no file descriptor, thread or child process is left after 2,000 requests, and resident memory
    grows by less than 5 MB per 1,000 requests once the first level warmed the pools."""
    from tests.conftest import last_json, run_cli
    r = run_cli(["-m", "evaluator.bench.client", "soak", "--requests", "2000", "--levels", "10", "--out", str(tmp_path)],
                lock=False, timeout=600)
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    report = json.loads(Path(out["report"]).read_text())
    assert report["requests"] == 2000 and report["levels"] == 10
    assert report["left_after"]["fds"] <= 0 and report["left_after"]["threads"] <= 0
    assert report["left_after"]["children"] == 0
    assert report["growth_per_1000"]["fds"] <= 0.5 and report["growth_per_1000"]["rss_mb"] < 5


def test_send_lag_stays_small_at_a_few_hundred_requests_per_second(tmp_path):
    from tests.conftest import last_json, run_cli
    r = run_cli(["-m", "evaluator.bench.client", "lag", "--rates", "50,200", "--requests", "400", "--out",
                 str(tmp_path)], lock=False, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(Path(last_json(r.stdout)["report"]).read_text())
    assert [l["rate"] for l in report["levels"]] == [50, 200] and all(l["ok"] == 400 for l in report["levels"])
    assert all(l["send_lag_ms_p50"] >= 0 for l in report["levels"])


def test_soak_growth_is_read_at_the_ends_of_levels():
    """Mid-level, open connections (and their fds) rise with each level's concurrency by design:
    only what stays once a level is over is growth. Level ends flat -> 0; one fd kept per level of
    200 requests -> 5 per 1,000."""
    from evaluator.bench.client import growth_per_1000
    flat, leaking = [], []
    for k in range(1, 6):
        flat += [{"requests": 200 * k - 100, "fds": 6 + 2 * k}, {"requests": 200 * k, "fds": 6, "level_end": True}]
        leaking += [{"requests": 200 * k - 100, "fds": 6 + 2 * k}, {"requests": 200 * k, "fds": 6 + k, "level_end": True}]
    assert growth_per_1000(flat, "fds", 200) == 0
    assert growth_per_1000(leaking, "fds", 200) == pytest.approx(5)
