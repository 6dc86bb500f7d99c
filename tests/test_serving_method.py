"""How a serving level is measured (issue 27): fresh requests at every level and probe, a warm-up
in no statistic, steady-state windows, one percentile rule with failures as infinitely late, an
interval on every capacity, accuracy from levels that were not overloaded, sessions as recorded,
and bad plans refused before anything is built.

The driver tests run the real serving driver on real Ray against a real HTTP server with a fake
engine behind it (evaluator.bench.fakeserver, which logs every prompt it receives); the engines'
own servers are tested in test_serving.py and test_traffic_serving.py.

    .venv/bin/python -m pytest tests/test_serving_method.py -q
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import tracemalloc

import pytest

from evaluator.hosts import HostFacts
from evaluator.layout import Layout
from evaluator.records import Prompt, RunConfig, SamplingConfig, ServeConfig
from evaluator.serving.metrics import level_figures, percentile, steady_window, window_results
from evaluator.serving.records import RequestResult
from evaluator.store import RunDir
from tests.conftest import ROOT, run_cli
from tests.fake_engine import FakeServerReplica

HOST = HostFacts("cpu (test)", {})


@pytest.fixture(scope="module")
def shared_ray():
    import ray
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def prompts(n: int) -> list[Prompt]:
    return [Prompt(index=i, text=f"q{i}", gold=str(i), prompt_tokens=12,
                   messages=({"role": "user", "content": f"Question number {i}: what is {i} + 0?"},)) for i in range(n)]


def serve_cfg(tiny_model, tmp_path, log, gpus=1, fake: dict | None = None, **serve) -> RunConfig:
    """A serving run of the fake server; fake: the server's behaviour (tokens, ttft_s, ...)."""
    sv = dict(level_kind="concurrency", levels=(1, 4), level_prompts="4x", warmup_requests=3, level_min_s=0.0)
    sv.update(serve)
    return RunConfig(engine="vllm", layout=Layout(dp=gpus),
                     model=str(tiny_model), data=str(tmp_path / "d.parquet"), device="cpu",
                     sampling=SamplingConfig(max_tokens=4), workload="serve", serve=ServeConfig(**sv),
                     engine_kwargs={"tokens": 4, "gap_s": 0.002, "ttft_s": 0.005, "log": str(log), **(fake or {})})


def execute(cfg: RunConfig, tmp_path, n: int, name: str = "r", **kw):
    from evaluator import serve
    rd = RunDir(tmp_path / name)
    rd.write_config(cfg)
    return serve.execute(cfg, name, rd, prompts(n), HOST, actor_cls=FakeServerReplica, **kw), rd


def received(log) -> list[str]:
    return [json.dumps(json.loads(line)["messages"]) for line in log.read_text().splitlines()]


def test_no_prompt_is_sent_twice_across_levels_and_the_warm_up_is_apart(shared_ray, tiny_model, tmp_path):
    """Two levels of 4x (4 and 16 requests) take the next unused GSM8K prompts; the warm-up's 3
    requests per server are prompts made for it: the server receives 3 + 4 + 16 distinct prompts,
    and the warm-up is in no level's statistics."""
    log = tmp_path / "received.jsonl"
    summary, rd = execute(serve_cfg(tiny_model, tmp_path, log), tmp_path, n=30)
    got = received(log)
    assert len(got) == 3 + 4 + 16 and len(set(got)) == len(got), "a prompt was sent twice"
    levels = {l["level"]: l for l in summary.levels}
    assert [levels["c=1"]["whole"]["requests"], levels["c=4"]["whole"]["requests"]] == [4, 16]
    sent = [r["index"] for r in rd.read_requests()]
    assert sorted(sent) == list(range(20)), "each level took the next unused prompts"
    warm = [m for m in got if "Question number" not in m]
    assert len(warm) == 3 and all(m not in got[3:] for m in warm), "warm-up prompts are its own"
    note = rd.read_attempts()[1]["warmup"]
    assert note["requests"] == 3 and note["errors"] == 0
    assert summary.scored_from["levels"] == ["c=1", "c=4"] and summary.prompts == 20


def test_a_capacity_search_never_re_sends_a_probes_requests(shared_ray, tiny_model, tmp_path):
    """Every probe of a capacity search (repeats at the boundary included) takes fresh prompts of
    the pool; the search stops, saying why, when none are left."""
    log = tmp_path / "received.jsonl"
    cfg = serve_cfg(tiny_model, tmp_path, log, fake={"ttft_per_inflight_s": 0.01}, level_kind="rate", levels=(),
                    capacity=True, capacity_start=20, capacity_levels=6, slo_ttft_ms=30, level_prompts="1x",
                    capacity_repeats=1)
    summary, rd = execute(cfg, tmp_path, n=150)
    got = received(log)
    assert len(got) == len(set(got)), "a probe re-sent a prompt"
    sent = [r["index"] for r in rd.read_requests()]
    assert len(sent) == len(set(sent))
    cap = summary.capacity
    assert cap["runs"] == len(summary.levels) >= 2 and cap["confidence"] == 0.9
    assert cap["stopped"] is None or "no fresh request left" in cap["stopped"]
    if cap["rate"] is not None:   # the held rate's output: 4 tokens a request (the fake's), none failed there
        held = next(p for p in cap["probes"] if p["rate"] == cap["rate"])
        assert cap["output_tokens_per_s"] == pytest.approx(cap["rate"] * 4 * (1 - held["failed"] / held["requests"]))
        assert cap["output_tokens_per_s_streamed"] == held["output_tokens_per_s"]
    assert all("settled" in p for p in cap["probes"])


def test_fixed_levels_that_need_more_than_the_pool_are_refused_before_anything_starts(gsm8k_parquet, tiny_model,
                                                                                      tmp_path):
    r = run_cli(["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--model", str(tiny_model),
                 "--data", str(gsm8k_parquet), "--output-dir", str(tmp_path), "--run-id", "x", "--limit", "10",
                 "--workload", "serve", "--concurrency", "1,4", "--level-prompts", "4x"], lock=False, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "the load levels need 20 fresh requests (c=1: 4, c=4: 16)" in r.stderr and "--reuse-requests" in r.stderr
    assert not (tmp_path / "x").exists()


def _r(i, sent, end, ttft=0.01, ok=True, level="c=2", itl=(0.01,)):
    return RequestResult(i, level, 0, ok, None if ok else "timed out", False, 0, sent, ttft if ok else None,
                         itl if ok else (), (end - sent) if ok else None, 5 if ok else 0, 2 if ok else 0, "x",
                         ended_s=end, timed_out=not ok)


def test_steady_state_window_on_known_timings():
    """A rate level: arrivals at 0, 1, 2, ... 9 s, each lasting 3 s: in flight 1 at [0, 1), 2 at
    [1, 2), then 3 from 2 s until the last arrival (9 s; an end and an arrival at the same instant
    keep it at 3). The plateau (time-weighted median over the arrival phase) is 3, first reached at
    2 s; the window is [2, 9] and holds the 8 requests sent at 2..9 s; the drain after 9 s is left
    out. With 2.5 s each the count alternates 2 and 3 and the plateau is 2, from 1 s."""
    results = [_r(i, float(i), i + 3.0) for i in range(10)]
    w = steady_window(results, duration_s=12.0)
    assert (w.start_s, w.end_s, w.plateau, w.note) == (2.0, 9.0, 3.0, "")
    assert [r.index for r in window_results(results, 12.0)] == list(range(2, 10))
    rec = level_figures(results, 12.0, 1, None, None)
    assert rec["requests"] == 8 and rec["whole"]["requests"] == 10 and rec["window"]["steady"]
    # requests finished inside [2, 9]: those sent at 0..6 s (ending 3..9 s)
    assert rec["request_per_s"] == pytest.approx(7 / 7) and rec["whole"]["request_per_s"] == pytest.approx(10 / 12)
    shorter = steady_window([_r(i, float(i), i + 2.5) for i in range(10)], 11.5)
    assert (shorter.start_s, shorter.plateau) == (1.0, 2.0)
    # all at once (rate=inf): no arrival phase, the whole level is reported and says so
    burst = [_r(i, 0.0, 1.0 + i) for i in range(6)]
    assert steady_window(burst, 6.0).note


def test_a_level_with_timeouts_has_an_infinite_p99_in_the_table_and_the_judge_agrees():
    from evaluator.report.serving import LEVEL_COLUMNS
    from evaluator.serving.capacity import judge
    results = [_r(i, i * 0.1, i * 0.1 + 0.5, ttft=0.01 * (i + 1), level="rate=10/s") for i in range(30)]
    results += [_r(30 + k, 3.0 + k * 0.1, 4.0, ok=False, level="rate=10/s") for k in range(2)]
    rec = level_figures(results, 4.0, 1, 100, None)
    cells = {name: cell(rec) for name, cell in LEVEL_COLUMNS}
    assert rec["ttft_ms_p99"] == math.inf and cells["TTFT p50/p99 ms"].endswith("/∞")
    assert cells["failed"].startswith("2") and "t/o" in cells["failed"]
    # one percentile definition: the judge's p90 over the window is the table's
    probe = judge([window_results(results, 4.0)], 10.0, 4.0, 90, 100, None)
    assert probe.ttft_ms == rec["ttft_ms_p90"]
    assert percentile([1, 2, 3, math.inf], 90) == math.inf


def test_a_held_rates_output_is_the_rate_times_the_tokens_not_what_streamed_in_a_short_window():
    """Seen on an H200 (SGLang, 7B, 2,000 in / 200 out): at 19 req/s, held, requests live about
    10 s, so a 15 s level never reaches its plateau and the window [7.4, 15] s streamed 964 tok/s,
    a quarter of the 3,800 the server sustains at that rate (19 x 200); the capacity's cost per
    million tokens came from that figure. Here: 10 req/s for 10 s, 20 tokens each, decoded over 12 s
    after a first token at 0.1 s (longer than the arrivals: the in-flight count rises throughout). A held rate's output is rate x tokens per sent request (a failed
    one giving none); the window's streamed figure is kept beside it."""
    from evaluator.serving.capacity import judge
    gaps = (12.0 / 19,) * 19
    results = [_r(i, i * 0.1, i * 0.1 + 12.1, ttft=0.1, level="rate=10/s", itl=gaps) for i in range(100)]
    results = [dataclasses.replace(r, completion_tokens=20) for r in results]
    results[-1] = _r(99, 9.9, 10.5, ok=False, level="rate=10/s")
    window = window_results(results, 22.0)
    rec = level_figures(results, 22.0, 1, None, None)
    probe = judge([window], 10.0, 22.0, 90, 1000, None, output_tokens_per_s=rec["output_tokens_per_s"])
    ok = sum(r.ok for r in window)
    assert probe.sustained_tokens_per_s == pytest.approx(10.0 * 20 * ok / len(window))
    assert probe.output_tokens_per_s == rec["output_tokens_per_s"] < 0.8 * probe.sustained_tokens_per_s


def test_a_level_whose_requests_outlive_it_is_marked_unsettled_and_the_capacity_sentence_says_so():
    """Arrivals at 10/s for 10 s of requests that each last 12 s: the in-flight count rises until
    the arrivals end, so hardly any request finishes inside the window (flow balance well under
    0.8): the level had not settled, and its record says so. The known-timings level (3 s requests,
    one a second) is settled. A held probe that had not settled is named in the capacity sentence."""
    from evaluator.report.serving import probes_text
    rising = [_r(i, i * 0.1, i * 0.1 + 12.1, level="rate=10/s") for i in range(100)]
    w = level_figures(rising, 20.0, 1, None, None)["window"]
    assert w["steady"] and w["settled"] is False and w["balance"] < 0.2
    settled = level_figures([_r(i, float(i), i + 3.0) for i in range(10)], 12.0, 1, None, None)["window"]
    assert settled["settled"] is True and settled["balance"] == pytest.approx(7 / 8)   # ends at 3..9 s, sends at 2..9 s
    c = {"runs": 3, "probes": [{"rate": 8.0, "passed": True, "settled": True},
                               {"rate": 16.0, "passed": True, "settled": False},
                               {"rate": 32.0, "passed": False, "settled": False}]}
    assert "held at 16 req/s before in flight settled" in probes_text(c)
    assert "settled" not in probes_text({"runs": 1, "probes": [{"rate": 8.0, "passed": True}]})   # older records


def test_a_probe_holds_at_confidence_and_an_unsure_one_is_repeated():
    """TTFT p90 well under the SLO: held; well over: missed; at the SLO: unsure (repeated by the
    search); the capacity's interval brackets where the fitted ratio crosses 1."""
    from evaluator.serving.capacity import capacity, judge
    import random
    rng = random.Random(0)

    def probe_results(rate, scale, n=60):
        return [_r(i, i / rate, i / rate + 0.3, ttft=scale * rng.uniform(0.5, 1.5), level=f"rate={rate:g}/s")
                for i in range(n)]
    slo = 100
    fast, slow, edge = probe_results(4, 0.03), probe_results(16, 0.3), probe_results(8, 0.075)
    assert judge([fast], 4, 15, 90, slo, None).verdict == "held"
    assert judge([slow], 16, 4, 90, slo, None).verdict == "missed"
    assert judge([edge], 8, 8, 90, slo, None).verdict == "unsure"
    probes = [judge([x], r, 1, 90, slo, None) for x, r in ((fast, 4), (edge, 8), (slow, 16))]
    cap = capacity(probes, 0.1, {4: fast, 8: edge, 16: slow}, 90, slo, None, 0.9)
    low, high = cap.ci
    assert 4 <= low <= cap.estimate <= high <= 16 and cap.confidence == 0.9
    # a search that stopped with held 4 and missed 16 (bracket 4x, not within its tolerance): the
    # interpolated crossing alone would claim a narrow interval; it claims no more than the bracket
    far = capacity(probes[::2], 0.1, {4: fast, 16: slow}, 90, slo, None, 0.9)
    assert not far.converged and far.ci == (4, 16) and 4 < far.estimate < 16


def test_a_sessions_second_turn_goes_before_queued_first_turns():
    """--max-concurrency 1 with every first turn due at once: the session's second turn is sent
    as soon as its first answer is back, ahead of the three standalone requests waiting."""
    import asyncio
    import threading
    from aiohttp import web
    from evaluator.bench.fakeserver import app, free_port
    from evaluator.serving.client import Endpoints, run_level_sync
    from evaluator.serving.records import ChatRequest, Level
    port, log = free_port(), ROOT / ".pytest_session_order.jsonl"
    log.unlink(missing_ok=True)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app(2, 0.02, 0.0, str(log)))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        reqs = [ChatRequest(0, ({"role": "user", "content": "s turn 0"},), session="s", turn=0),
                *[ChatRequest(k, ({"role": "user", "content": f"alone {k}"},)) for k in (1, 2, 3)],
                ChatRequest(4, ({"role": "user", "content": "s turn 1"},), session="s", turn=1)]
        results, _ = run_level_sync(Endpoints([f"http://127.0.0.1:{port}"]), reqs, Level("rate", float("inf")),
                                    SamplingConfig(max_tokens=2), "fake", max_concurrency=1, health_interval_s=None)
        order = [json.loads(line)["messages"][-1]["content"] for line in log.read_text().splitlines()]
        assert order[:2] == ["s turn 0", "s turn 1"], order
        assert all(r.ok for r in results)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        log.unlink(missing_ok=True)


def test_a_failed_turn_ends_its_session():
    """The first turn is refused by a dead endpoint: the second is never sent, recorded as skipped."""
    from evaluator.serving.client import Endpoints, run_level_sync
    from evaluator.serving.records import ChatRequest, Level
    from evaluator.bench.fakeserver import free_port
    reqs = [ChatRequest(0, ({"role": "user", "content": "a"},), session="s", turn=0),
            ChatRequest(1, ({"role": "user", "content": "b"},), session="s", turn=1)]
    results, _ = run_level_sync(Endpoints([f"http://127.0.0.1:{free_port()}"]), reqs, Level("concurrency", 1),
                                SamplingConfig(max_tokens=2), "fake", health_interval_s=None)
    first, second = results
    assert not first.ok and not first.skipped
    assert second.skipped and second.replica == -1 and "turn 0 of its session failed" in second.error


def test_a_synthetic_shape_with_a_huge_spread_is_refused_in_under_a_second_with_flat_memory(tiny_model):
    from evaluator.data import load_tokenizer
    from evaluator.traffic import TrafficError, load_traffic
    tok = load_tokenizer(str(tiny_model))
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(TrafficError, match=r"in=lognormal\(1000,5\)\[100:\] \([\d,]+ tokens\).*exceed max_model_len "
                                           r"4096; bound it, e.g. in=lognormal\(1000,5\)\[100:4086\]"):
        load_traffic("synthetic:n=100000,in=lognormal(1000,5)[100:],out=10", tok, max_model_len=4096,
                     default_max_tokens=10)
    with pytest.raises(TrafficError, match=r"in=9000 \(9,000 tokens\) \+ out=10"):
        load_traffic("synthetic:n=1000000,in=9000,out=10", tok, max_model_len=4096, default_max_tokens=10)
    elapsed, (_, peak) = time.perf_counter() - t0, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 20 * 2**20


def test_a_comparison_with_bad_traffic_after_the_dashes_is_refused_at_plan_time(tiny_model, gsm8k_parquet, tmp_path):
    out = tmp_path / "cmp"
    r = run_cli(["-m", "evaluator.compare", "--engines", "vllm", "--gpus", "2", "--model", str(tiny_model),
                 "--data", str(gsm8k_parquet), "--out", str(out), "--workload", "both", "--",
                 "--device", "cpu", "--traffic", "synthetic:in=lognormal(1000,5)[100:],out=10", "--max-model-len", "1024",
                 "--concurrency", "1"], lock=False, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "exceed max_model_len 1024" in r.stderr
    assert not out.exists()
